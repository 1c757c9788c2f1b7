#!/usr/bin/env bash
# Reproduces the two `perf` profiles quoted in docs/benchmarks.md:
#   1. where `WebSocket::poll` spends its time decoding a 16 B binary frame
#      (criterion bench `frame_decode/16B/binary`);
#   2. where a one-shard broker spends its time delivering 100 msg/s to
#      1,000 WebSocket subscribers (broker on core 0, loadgen on core 1).
# Needs `perf` (Debian: linux-perf) with permission to profile.
# Writes perf.data files and top-symbol summaries to ${OUT:-target/perf}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/perf}
mkdir -p "$OUT"
cargo build --release -p ringcast -p ringcast-loadgen
cargo bench -p ringcast-bench --bench frame --no-run

# 1. The decode bench, profiled for 10 s.
bench=$(ls -t target/release/deps/frame-* | grep -v '\.d$' | head -n 1)
perf record -o "$OUT/decode.data" -g -- "$bench" --bench 'frame_decode/16B/binary' \
  --profile-time 10 >/dev/null 2>&1
perf report -i "$OUT/decode.data" --no-children --percent-limit 2 --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' >"$OUT/decode.txt"

# 2. The broker under 1 x 1,000 at 100 msg/s, profiled for 5 s mid-run.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 target/release/ringcast --listen "127.0.0.1:$port" --shards 1 >/dev/null 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
sleep 0.5
taskset -c 1 target/release/ringcast-loadgen --broker "http://127.0.0.1:$port" \
  fanout --subs 1000 --rate 100 --duration 12s >/dev/null 2>&1 &
loadgen=$!
sleep 4
perf record -o "$OUT/broker.data" -g -p "$broker" -- sleep 5 >/dev/null 2>&1
wait $loadgen
perf report -i "$OUT/broker.data" --no-children --sort dso,sym --percent-limit 1 --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' >"$OUT/broker.txt"
perf report -i "$OUT/broker.data" --no-children --sort dso --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' >"$OUT/broker-dso.txt"
echo "== decode"; head -n 15 "$OUT/decode.txt"
echo "== broker by DSO"; cat "$OUT/broker-dso.txt"
echo "== broker by symbol"; head -n 20 "$OUT/broker.txt"
