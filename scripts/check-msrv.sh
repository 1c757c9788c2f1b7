#!/usr/bin/env bash
# Checks the declared minimum Rust version (the workspace's `rust-version`)
# against the lock file: every package the workspace builds on this host
# (dependencies of every kind, resolved as Cargo.lock pins them) must
# declare a rust-version at most ours, and every workspace crate must
# inherit ours. Only one toolchain is installed here, so this checks the
# claim rather than building with the old compiler; cargo itself refuses to
# build with a toolchain older than what a crate declares.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
cargo metadata --format-version 1 --locked --filter-platform "$host" | python3 -c '
import json, sys
m = json.load(sys.stdin)
ver = lambda v: tuple((list(map(int, v.split("."))) + [0, 0])[:3])
members = set(m["workspace_members"])
ours = {p["rust_version"] for p in m["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"every workspace crate must inherit rust-version (found {sorted(map(str, ours))})")
declared = ours.pop()
used = {n["id"] for n in m["resolve"]["nodes"]}
need = [(p["rust_version"], p["name"], p["version"]) for p in m["packages"]
        if p["id"] in used and p.get("rust_version") and ver(p["rust_version"]) > ver(declared)]
if need:
    for v, n, pv in sorted(need):
        print(f"{n} {pv} needs Rust {v}, the workspace declares {declared}")
    sys.exit(1)
top = max((ver(p["rust_version"]), p["name"]) for p in m["packages"] if p["id"] in used - members and p.get("rust_version"))
print("rust-version %s: the lock file needs at most %s (%s)" % (declared, ".".join(map(str, top[0])), top[1]))
'
