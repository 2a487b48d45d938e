#!/usr/bin/env bash
# Lay out the LLVM bundle that `cubecl-cuda` / `cubecl-cpu` (through `cubecl-llvm` →
# `tracel-llvm-bundler` 23.1.0-4) would download at build time, from PyPI wheels instead, so
# that `cargo build --features cuda` works on a machine that reaches only package registries.
#
#   tools/setup_llvm.sh            # then: cargo build --release -p experiments --features cuda
#
# The bundler's build script returns early, without network, when
# $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed exists (XDG_DATA_HOME
# defaults to ~/.local/share). The wheels mlc-llvm-static and mlc-llvm-static-extra-targets
# 23.1.1.post0 hold that layout (static LLVM libraries with the NVPTX target, headers, a Python
# `llvm-config`) under mlc_llvm_static/static/. Linking needs libzstd (Debian: libzstd-dev).
# Idempotent: a complete bundle is left alone. About 400 MB.
set -euo pipefail

VERSION=23.1.1.post0
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
DEST="$DATA_HOME/tracel/tracel-llvm-23.1.0-4"
MARKER="$DEST/.tracel-llvm-installed"

if [[ -f "$MARKER" && -x "$DEST/bin/llvm-config" ]]; then
    echo "setup_llvm: the bundle is already in $DEST (delete it to lay it out again)"
    exit 0
fi

if ! { dpkg -s libzstd-dev >/dev/null 2>&1 || [[ -e /usr/include/zstd.h ]]; }; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup_llvm: installing libzstd-dev (LLVM links against it)"
        apt-get install -y -q libzstd-dev >/dev/null
    else
        echo "setup_llvm: libzstd-dev is missing; install it (LLVM links against it)" >&2
        exit 1
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup_llvm: downloading mlc-llvm-static{,-extra-targets}==$VERSION from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" \
    "mlc-llvm-static==$VERSION" "mlc-llvm-static-extra-targets==$VERSION"
for wheel in "$work"/*.whl; do
    python3 -m zipfile -e "$wheel" "$work/unpacked"
done
src="$work/unpacked/mlc_llvm_static/static"
if [[ ! -d "$src/lib" || ! -d "$src/include" ]]; then
    echo "setup_llvm: the wheels do not hold mlc_llvm_static/static/{lib,include}" >&2
    exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
cp -a "$src/." "$DEST/"
chmod +x "$DEST"/bin/* 2>/dev/null || true
if ! ls "$DEST"/lib/libLLVMNVPTX*.a >/dev/null 2>&1; then
    echo "setup_llvm: the bundle has no NVPTX target library (lib/libLLVMNVPTX*.a)" >&2
    exit 1
fi
touch "$MARKER"
echo "setup_llvm: laid out LLVM $VERSION in $DEST ($(du -sh "$DEST" | cut -f1)); cargo build --features cuda now builds offline"
