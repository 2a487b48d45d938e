#!/usr/bin/env python3
"""Caption-metric fixtures from pycocoevalcap, for vlalign-eval's parity tests.

    pip install pycocoevalcap        # Java must be installed (the PTB tokenizer is a jar)
    python tools/make_caption_fixtures.py     # writes tests/fixtures/captions.json

Builds 60 deterministic candidate/reference sets (1–5 references each) of plain English with
punctuation, contractions, hyphens and quotes; tokenizes them with pycocoevalcap's PTBTokenizer
and scores them with its Bleu(4), Rouge (ROUGE-L) and Cider (CIDEr-D). Stores the raw captions,
the tokenized ones, and corpus and per-sample scores.
"""

import json
import os
import random
import sys

from importlib.metadata import version

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "captions.json")

SUBJECTS = ["a man", "a woman", "two dogs", "the red car", "a small cat", "an old bus",
            "three children", "a large blue square", "the yellow star", "a group of people"]
VERBS = ["is sitting on", "stands next to", "runs across", "is parked near", "looks at",
         "is lying under", "plays with", "walks along"]
OBJECTS = ["a wooden bench", "the street", "a green field", "the kitchen table", "a black-and-white fence",
           "the beach", "a busy road", "the circle at the top left"]
EXTRAS = ["", "", " in the afternoon", ", and it's raining", " while people watch", " (near a tree)",
          "; the sky is clear", " -- quite funny", ", isn't it?", " \"today\"", "..."]


def sentence(rng):
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(EXTRAS)}"
    if rng.random() < 0.7:
        s += rng.choice([".", "!", "."])
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:]
    return s


def main():
    rng = random.Random(0)
    gts, res = {}, {}
    for i in range(60):
        key = f"img{i:03d}"
        refs = [sentence(rng) for _ in range(rng.randint(1, 5))]
        cand = rng.choice(refs) if rng.random() < 0.15 else sentence(rng)
        gts[key] = [{"caption": r} for r in refs]
        res[key] = [{"caption": cand}]
    tok = PTBTokenizer()
    gts_tok = tok.tokenize(gts)
    res_tok = tok.tokenize(res)
    keys = sorted(gts)
    bleu, bleu_per = Bleu(4).compute_score(gts_tok, res_tok, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts_tok, res_tok)
    cider, cider_per = Cider().compute_score(gts_tok, res_tok)
    order = list(gts_tok.keys())  # the scorers iterate in this order
    per = {k: {"bleu": [bleu_per[n][order.index(k)] for n in range(4)],
               "rouge_l": float(rouge_per[order.index(k)]),
               "cider": float(cider_per[order.index(k)])} for k in keys}
    out = {
        "versions": {"pycocoevalcap": version("pycocoevalcap"), "python": sys.version.split()[0]},
        "references": {k: [c["caption"] for c in gts[k]] for k in keys},
        "candidates": {k: res[k][0]["caption"] for k in keys},
        "references_tokenized": {k: gts_tok[k] for k in keys},
        "candidates_tokenized": {k: res_tok[k][0] for k in keys},
        "corpus": {"bleu": bleu, "rouge_l": float(rouge), "cider": float(cider)},
        "per_sample": per,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", os.path.abspath(OUT), out["corpus"])


if __name__ == "__main__":
    main()
