#!/usr/bin/env bash
# The GPU backends on a machine with a GPU, in one markdown report:
#   tools/gpu_check.sh [REPORT.md]        (default gpu-check.md; BACKENDS="cuda wgpu" to choose)
# For each backend: build the experiments with that feature (cuda after tools/setup_llvm.sh,
# offline), `device_check`, the backend parity tests (tests/backends.rs: the transformers
# fixtures' logits, 5 training steps against flex, CAL's contrast pass and generation),
# `cal_llava --quick` and `bench` (tiny and small presets) on the device, and with two or more
# NVIDIA GPUs a data-parallel `cal_llava --quick --devices cuda:0,cuda:1`. A step that fails is
# reported as failed and the script goes on; it exits non-zero if any failed.
# VLALIGN_REQUIRE_DEVICE=1 for every step: a backend test whose device is missing, broken or
# unknown fails instead of skipping; a step that still printed a SKIPPED line is reported as
# "skipped", never "ok".
set -uo pipefail
export VLALIGN_REQUIRE_DEVICE=1
cd "$(dirname "$0")/.."
report=$(realpath -m "${1:-gpu-check.md}")
backends=${BACKENDS:-"cuda wgpu"}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vlalign-target}"
work=$(mktemp -d)
failed=0

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- host: $(uname -srm), $(nproc) CPUs"
    command -v nvidia-smi >/dev/null &&
        echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    echo
} >"$report"

# run NAME CMD...: run a step, append its output (last 60 lines) to the report.
run() {
    local name=$1
    shift
    local log="$work/$(echo "$name" | tr ' /' '__').log"
    local start=$(date +%s)
    echo "== $name"
    if "$@" >"$log" 2>&1; then
        if grep -q "SKIPPED" "$log"; then
            status=skipped
            failed=1
        else
            status=ok
        fi
    else
        status=FAILED
        failed=1
    fi
    {
        echo "### $name: $status ($(($(date +%s) - start)) s)"
        echo
        echo '```'
        echo "\$ $*"
        tail -n 60 "$log"
        echo '```'
        echo
    } >>"$report"
}

for backend in $backends; do
    dev=$backend
    [ "$backend" = cuda ] && dev=cuda:0
    echo "## $backend" >>"$report"
    echo >>"$report"
    if [ "$backend" = cuda ]; then
        run "cuda: LLVM bundle" tools/setup_llvm.sh
    fi
    features="flex,$backend"
    run "$backend: build" cargo build --release -p experiments --features "$features" --bins
    bin="$CARGO_TARGET_DIR/release"
    run "$backend: device_check" "$bin/device_check" --device "$dev"
    run "$backend: parity tests" env VLALIGN_TEST_DEVICE="$backend" \
        cargo test --release -p vlalign --features "$features" --test backends -- --nocapture --test-threads=1
    run "$backend: cal_llava --quick" "$bin/cal_llava" --quick --quiet --device "$dev" \
        --world "$work/world-quick" --out "$work/cal-$backend"
    run "$backend: bench tiny,small" "$bin/bench" --preset tiny,small --device "$dev" \
        --out "$work/bench-$backend.json"
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    if [ "$backend" = cuda ] && [ "$gpus" -ge 2 ]; then
        run "cuda: data-parallel cal_llava --quick on 2 GPUs" "$bin/cal_llava" --quick --quiet \
            --devices cuda:0,cuda:1 --world "$work/world-quick" --out "$work/cal-dp"
    fi
done

echo "report: $report"
exit $failed
