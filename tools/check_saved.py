#!/usr/bin/env python3
"""Check that a LLaVA directory saved by vlalign opens in `transformers` and computes the
fixture's logits.

    cargo run --release -p experiments --bin hf_check -- --model tests/fixtures/llava \\
        --input-ids 1,2 --save-hf /tmp/llava_saved
    python tools/check_saved.py /tmp/llava_saved            # compares with tests/fixtures/llava
"""

import os
import sys

import safetensors.torch
import torch
from transformers import LlavaForConditionalGeneration

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "llava")


@torch.no_grad()
def main(saved):
    model = LlavaForConditionalGeneration.from_pretrained(saved, dtype=torch.float32).eval()
    io = safetensors.torch.load_file(os.path.join(FIXTURE, "io.safetensors"))
    logits = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
    diff = (logits - io["logits"]).abs().max().item()
    print(f"{saved}: loaded in transformers; max abs diff of logits vs the fixture {diff:.3e}")
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llava_saved")
