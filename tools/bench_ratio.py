#!/usr/bin/env python3
"""Read the vlalign-K.json and torch-K.json files of a tools/bench_compare.sh run and print the
comparison as a Markdown table: each side's median over the runs of its per-row median time, and
vlalign / PyTorch (time: below 1 means vlalign is faster; for generation the throughput ratio is
given too)."""

import glob
import json
import os
import statistics
import sys


def load(pattern):
    runs = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def medians(runs, backend):
    """{preset: {"rows": {name: median_ms}, "params": ..., "cal_over_mle": ...}} over the runs."""
    acc = {}
    for run in runs:
        for res in run["results"]:
            if res["backend"] != backend:
                continue
            for p in res["presets"]:
                e = acc.setdefault(p["preset"]["name"], {"rows": {}, "params": p["params"],
                                                         "cal": [], "units": {}})
                e["cal"].append(p["cal_over_mle"])
                for r in p["rows"]:
                    e["rows"].setdefault(r["name"], []).append(r["median_ms"])
                    e["units"][r["name"]] = r
    for e in acc.values():
        e["rows"] = {k: statistics.median(v) for k, v in e["rows"].items()}
        e["cal"] = statistics.median(e["cal"])
    return acc


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench-out"
    ours_runs = load(os.path.join(out, "vlalign-*.json"))
    theirs_runs = load(os.path.join(out, "torch-*.json"))
    if not ours_runs or not theirs_runs:
        raise SystemExit(f"no vlalign-*.json / torch-*.json in {out}")
    ours = medians(ours_runs, "flex")
    theirs = medians(theirs_runs, "torch-cpu")
    t0 = theirs_runs[0]
    print(f"vlalign (burn {ours_runs[0]['burn']}, flex, {ours_runs[0]['threads']} threads) vs "
          f"PyTorch {t0['torch']} + transformers {t0['transformers']} ({t0['threads']} threads); "
          f"CPU: {ours_runs[0].get('cpu') or '?'}; median of {len(ours_runs)} + {len(theirs_runs)} "
          f"runs\n")
    for name in ours:
        if name not in theirs:
            continue
        a, b = ours[name], theirs[name]
        pa, pb = a["params"], b["params"]
        same = all(pa[k] == pb[k] for k in ("vision", "projector", "language"))
        print(f"### {name}: parameters vlalign {pa['total']:,} / PyTorch {pb['total']:,}"
              f" ({'equal' if same else 'DIFFERENT: ' + json.dumps(pa) + ' vs ' + json.dumps(pb)})\n")
        print("| measurement | vlalign ms | PyTorch ms | vlalign / PyTorch |")
        print("|---|---:|---:|---:|")
        for row, ms in a["rows"].items():
            if row not in b["rows"]:
                continue
            print(f"| {row} | {ms:.1f} | {b['rows'][row]:.1f} | {ms / b['rows'][row]:.2f} |")
        print(f"| CAL / MLE step | {a['cal']:.3f} | {b['cal']:.3f} | |\n")


if __name__ == "__main__":
    main()
