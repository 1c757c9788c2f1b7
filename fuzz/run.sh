#!/usr/bin/env bash
# Fuzzing for ringcast's protocol core.
#
# usage: fuzz/run.sh [SECONDS_PER_TARGET]
#
#   1. Replays the committed seed corpus (fuzz/seeds/<target>/) through every
#      target function with plain `cargo test` (stable, no libFuzzer).
#   2. If SECONDS_PER_TARGET > 0: installs cargo-fuzz if missing, builds the
#      libFuzzer targets once (stable toolchain + RUSTC_BOOTSTRAP=1), and runs
#      each target for that many seconds starting from the seeds, FUZZ_JOBS
#      targets at a time (default: number of CPUs).
#
# Environment:
#   FUZZ_JOBS       targets fuzzed in parallel (default: nproc)
#   FUZZ_TARGETS    space-separated subset of targets (default: all)
#   FUZZ_SANITIZER  cargo fuzz --sanitizer: address (default) or none (faster build)
#
# New inputs go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/
# (both git-ignored). Exit status is non-zero if the replay fails or any
# target finds a crash.
set -euo pipefail

secs=${1:-0}
if ! [[ $secs =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$fuzz_dir/.."

all_targets="http_head client_handshake frame_header websocket_server websocket_client utf8 command mask engine chunked pattern token cluster_message"
targets=${FUZZ_TARGETS:-$all_targets}

echo "== replaying fuzz/seeds (cargo test --manifest-path fuzz/Cargo.toml)"
cargo test --manifest-path fuzz/Cargo.toml

if [[ $secs -eq 0 ]]; then
    exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo fuzz passes nightly-only flags (-Zsanitizer, ...); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
fuzz_flags=(--features libfuzzer --sanitizer "${FUZZ_SANITIZER:-address}")

echo "== building fuzz targets"
cargo fuzz build "${fuzz_flags[@]}"

jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
logs=fuzz/target/fuzz-logs
mkdir -p "$logs"

run_target() {
    local t=$1
    local extra=()
    case $t in
    http_head | client_handshake) extra=(-dict=fuzz/dict/http.dict) ;;
    pattern) extra=(-dict=fuzz/dict/pattern.dict) ;;
    token) extra=(-dict=fuzz/dict/token.dict) ;;
    esac
    mkdir -p "fuzz/corpus/$t"
    # -max_total_time bounds the run; -timeout catches hangs (slow units).
    cargo fuzz run "${fuzz_flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" >"$logs/$t.log" 2>&1
}

echo "== fuzzing ${secs}s per target, $jobs at a time: $targets"
failed=()
for t in $targets; do
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do
        wait -n || true
    done
    rm -f "$logs/$t.rc"
    (if run_target "$t"; then echo 0; else echo $?; fi >"$logs/$t.rc") &
done
wait

for t in $targets; do
    rc=$(cat "$logs/$t.rc" 2>/dev/null || echo missing)
    if [[ $rc == 0 ]]; then
        status=ok
    else
        status="FAILED($rc)"
        failed+=("$t")
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
    printf '%-18s %-10s %s execs\n' "$t" "$status" "${execs:-?}"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    for t in "${failed[@]}"; do
        echo
        echo "== $t failed; log: $logs/$t.log"
        grep -E -A 30 'panicked|ERROR: |SUMMARY' "$logs/$t.log" | head -n 60 || tail -n 40 "$logs/$t.log"
        for a in fuzz/artifacts/"$t"/*; do
            [[ -f $a ]] || continue
            echo "-- $a"
            od -An -tx1 -v "$a" | tr -d ' \n' | head -c 4096
            echo
        done
    done
    echo
    echo "Reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --features libfuzzer <target> fuzz/artifacts/<target>/<file>"
    echo "Then copy the file into fuzz/seeds/<target>/ (see fuzz/README.md)."
    exit 1
fi
