#!/usr/bin/env bash
# Portability check that needs no other toolchain: for macOS (aarch64-apple-darwin) and Windows
# (x86_64-pc-windows-msvc), `cargo tree` must list every crate that the experiments' code uses
# (a dependency left under a Linux-only target section would be missing there, and nothing would
# compile). Exits non-zero naming the target and the missing crates.
set -euo pipefail
cd "$(dirname "$0")/.."
# Crates the code names (`name::…` at the start of a path), among the declared dependencies of
# any target; the Linux-only ones by design (used under a glibc cfg alone) are left out.
linux_only="libc"
declared=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys
m=json.load(sys.stdin)
p=[p for p in m["packages"] if p["name"]=="experiments"][0]
print("\n".join(sorted({d["name"].replace("-","_") for d in p["dependencies"] if d["kind"] is None})))' |
    grep -vxF "$linux_only")
used=$(grep -rhoE '(^|[^A-Za-z0-9_:])[a-z][a-z0-9_]*::' experiments/src | sed -E 's/^[^a-z]//; s/::$//' | sort -u)
needed=$(comm -12 <(echo "$declared" | sort -u) <(echo "$used"))
for target in aarch64-apple-darwin x86_64-pc-windows-msvc; do
    listed=$(cargo tree --target "$target" -e normal -p experiments --depth 1 --prefix none \
        --format '{lib}' | sort -u)
    missing=$(comm -23 <(echo "$needed") <(echo "$listed"))
    if [ -n "$missing" ]; then
        echo "$target: the experiments crate uses crates its dependency tree lacks there:" $missing
        exit 1
    fi
    echo "$target: all $(echo "$needed" | wc -l) crates the code uses are dependencies"
done
