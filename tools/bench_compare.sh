#!/usr/bin/env bash
# vlalign against PyTorch on the same architecture and work (tools/bench_presets.json).
#
#   tools/bench_compare.sh [--preset tiny,small] [--threads N] [--repeats R] [--out DIR]
#
# Runs the two sides alternately R times (default 2) with the same thread count (default: all
# cores), then prints each side's median over the runs and the ratio vlalign / PyTorch of time
# per row (below 1: vlalign is faster) and of the CAL/MLE step ratios. Needs the PyTorch side:
#   pip install torch transformers     (see tools/bench_torch.py for the CPU-only wheel)
# Everything lands in DIR (default bench-out/): vlalign-K.json, torch-K.json, compare.md.
set -euo pipefail
cd "$(dirname "$0")/.."

preset="tiny,small"
threads="$(nproc)"
repeats=2
out="bench-out"
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

python3 -c "import torch, transformers" 2>/dev/null || {
    echo "the PyTorch side needs torch and transformers:" >&2
    echo "  pip install torch transformers   (see tools/bench_torch.py for the CPU-only wheel)" >&2
    exit 1
}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vlalign-target}"
cargo build --release -p experiments --bin bench >&2
mkdir -p "$out"
for k in $(seq 1 "$repeats"); do
    echo "== run $k/$repeats: vlalign" >&2
    "$CARGO_TARGET_DIR/release/bench" --preset "$preset" --device flex --threads "$threads" \
        --out "$out/vlalign-$k.json" > "$out/vlalign-$k.txt"
    echo "== run $k/$repeats: PyTorch" >&2
    python3 tools/bench_torch.py --preset "$preset" --threads "$threads" \
        --out "$out/torch-$k.json" > "$out/torch-$k.txt"
done
python3 tools/bench_ratio.py "$out" | tee "$out/compare.md"
