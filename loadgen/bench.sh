#!/usr/bin/env bash
# Reproduces docs/benchmarks.md, "Pub/sub fan-out (loadgen)": a fresh
# one-shard broker pinned to one core for every run, the load generator
# pinned to another, loopback only.
#
#   loadgen/bench.sh                         # the documented sweep
#   RATES="100 1000" DURATION=5s loadgen/bench.sh
#   SCENARIOS="c" loadgen/bench.sh
#   SCENARIOS="d" loadgen/bench.sh           # compare: ws vs long-poll vs short-poll vs sse
#   BIN=/elsewhere/target/release NO_BUILD=1 loadgen/bench.sh   # given binaries
#
# Writes one JSON report per run and summary.md to ${OUT:-target/loadgen-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/loadgen-bench}
DURATION=${DURATION:-10s}
RATES=${RATES:-"100 500 1000 1500 2000 3000 5000"}
# (b) spreads each publish over 100 topics of 10 subscribers: 10 deliveries
# per publish, so it is swept to higher publish rates too.
RATES_B=${RATES_B:-"100 1000 5000 10000 20000 50000"}
CONNS=${CONNS:-10000}
SCENARIOS=${SCENARIOS:-"a b c"}
COMPARE_PAYLOADS=${COMPARE_PAYLOADS:-"64 4096"}
COMPARE_RATES=${COMPARE_RATES:-"100 1000"}
BROKER_CORE=${BROKER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
BROKER_FLAGS=${BROKER_FLAGS:-}
BIN=${BIN:-target/release}
mkdir -p "$OUT"

[ -n "${NO_BUILD:-}" ] || cargo build --release -p ringcast -p ringcast-loadgen
# Both processes need one descriptor per connection (+ a few): the loadgen
# raises its own soft limit to the hard one; the broker inherits this shell's.
ulimit -n "$(ulimit -Hn)"
echo "ulimit -n $(ulimit -n); $(lscpu | grep 'Model name' | sed 's/  */ /g')"

broker=
stop_broker() {
  if [ -n "$broker" ]; then
    kill -TERM "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
    broker=
  fi
}
trap stop_broker EXIT

start_broker() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # shellcheck disable=SC2086
  taskset -c "$BROKER_CORE" "$BIN/ringcast" --listen "127.0.0.1:$port" --shards 1 \
    $BROKER_FLAGS >"$OUT/broker-$1.log" 2>&1 &
  broker=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "broker did not come up" >&2
  exit 1
}

# The machine may be shared: wait (up to QUIET_WAIT seconds) until other
# processes use less than QUIET cores over 3 s, so runs are not measured
# against someone else's compile. Each report also records the other load
# seen during the run ("host.other_cores").
QUIET=${QUIET:-0.15}
QUIET_WAIT=${QUIET_WAIT:-900}
. "$(dirname "$0")/../scripts/lib/quiet.sh"

# run NAME LOADGEN-ARGS...: one fresh broker, one loadgen run, JSON kept.
run() {
  local name=$1
  shift
  wait_quiet
  start_broker "$name"
  echo "== $name: ringcast-loadgen --broker http://127.0.0.1:$port --broker-pid $broker $*"
  if taskset -c "$LOADGEN_CORE" "$BIN/ringcast-loadgen" \
    --broker "http://127.0.0.1:$port" --broker-pid "$broker" --json "$@" \
    >"$OUT/$name.json" 2>"$OUT/$name.err"; then
    :
  else
    echo "   failed: $(tail -n 1 "$OUT/$name.err" | cut -c1-200)"
    # A compare whose some transports failed still printed its report.
    if ! jq -e .transports "$OUT/$name.json" >/dev/null 2>&1; then
      jq -n --arg e "$(grep 'error:' "$OUT/$name.err" | head -n 1)" '{error: $e}' >"$OUT/$name.json"
    fi
  fi
  stop_broker
  sleep 1
}

for s in $SCENARIOS; do
  case $s in
  a) for r in $RATES; do
    run "a-1topic-1000subs-$r" fanout --subs 1000 --topics 1 --rate "$r" --duration "$DURATION" --payload 64
  done ;;
  b) for r in $RATES_B; do
    run "b-100topics-10subs-$r" fanout --subs 1000 --topics 100 --rate "$r" --duration "$DURATION" --payload 64
  done ;;
  c) run "c-conns-$CONNS" conns --conns "$CONNS" --topics 100 --settle 2s ;;
  # (d) The same stream over each transport: 1 topic x 1000 subscribers,
  # 100 and 1000 msg/s, 64 B and 4 KiB data. Plots beside the JSON.
  d) for p in $COMPARE_PAYLOADS; do for r in $COMPARE_RATES; do
    run "d-compare-${p}B-$r" --plot "$OUT/d-compare-${p}B-$r.svg" compare --subs 1000 --topics 1 \
      --rate "$r" --duration "$DURATION" --payload "$p" --drain 10s --pause 2s
  done; done ;;
  esac
done

python3 - "$OUT" >"$OUT/summary.md" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
def ms(us): return f"{us/1000:.2f}"
rows, conns, compare = [], [], []
for f in sorted(glob.glob(os.path.join(out, "*.json")), key=lambda p: (os.path.basename(p)[0], int(p.rsplit("-", 1)[1].split(".")[0]))):
    name = os.path.basename(f)[:-5]
    r = json.load(open(f))
    if r.get("scenario") == "compare":
        for t in r["transports"]:
            tot, l, w = t["totals"], t["latency"], t["wire"]
            pct = 100.0 * (tot["expected"] - tot["lost"]) / max(tot["expected"], 1)
            compare.append(f"| {t['payload_bytes']} | {t['rate']:.0f} | {t['transport']} | {pct:.3f} % | {ms(l['p50_us'])} | {ms(l['p99_us'])} | {ms(l['p999_us'])} "
                           f"| {w['down_bytes_per_delivery']:.0f} | {w['up_bytes_per_delivery']:.1f} | {w['requests_per_delivery']:.3f} "
                           f"| {t['broker_cpu_us_per_delivery']:.2f} | {t['broker']['cpu_utilization']*100:.0f} % | {t['loadgen_cpu_us_per_delivery']:.2f} | {(t.get('host') or {}).get('other_cores', 0):.2f} |")
        for x in r.get("failed", []):
            compare.append(f"| | | {x['transport']} | failed: {x['error'].splitlines()[0].replace('|', '/')[:160]} ||||||||||")
        continue
    if "transports" in r:  # fanout: one entry per transport
        r = r["transports"][0]
    if "error" in r:
        rows.append(f"| {name} | failed: {r['error'].replace('|', '/')[:160]} ||||||||||")
        continue
    if "conns" in r:
        b = r.get("broker") or {}
        conns.append(f"| {r['conns']} | {r['handshakes_per_s']:.0f} | {ms(r['handshake']['p50_us'])} / {ms(r['handshake']['p99_us'])} | "
                     f"{b.get('rss_before_kib',0)/1024:.1f} → {b.get('rss_after_kib',0)/1024:.1f} MiB | {r['broker_rss_delta_per_conn_kib']:.2f} | "
                     f"{r['broker_cpu_us_per_conn']:.0f} | {r['loadgen']['cpu_utilization']*100:.0f} % |")
        continue
    t, l, b = r["totals"], r["latency"], r["broker"]
    pct = 100.0 * (t["expected"] - t["lost"]) / max(t["expected"], 1)
    rows.append(f"| {r['topics']}×{r['subs'] // r['topics']} | {r['rate']:.0f} | {r['deliveries_per_s']:.0f} | {pct:.3f} % "
                f"| {ms(l['p50_us'])} | {ms(l['p90_us'])} | {ms(l['p99_us'])} | {ms(l['p999_us'])} | {ms(l['max_us'])} "
                f"| {r['broker_cpu_us_per_delivery']:.3f} | {b['cpu_utilization']*100:.0f} % | {r['loadgen']['cpu_utilization']*100:.0f} % "
                f"| {(r.get('host') or {}).get('other_cores', 0):.2f} |")
print("| topics×subs | rate msg/s | deliveries/s | delivered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | broker µs/delivery | broker CPU | loadgen CPU | other load (cores) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
if compare:
    print()
    print("| data B | rate msg/s | transport | delivered | p50 ms | p99 ms | p99.9 ms | B down / msg | B up / msg | requests / msg | broker µs / msg | broker CPU | loadgen µs / msg | other load (cores) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(compare))
if conns:
    print()
    print("| idle conns | handshakes/s | handshake p50 / p99 ms | broker RSS | KiB per conn | broker CPU µs per conn | loadgen CPU |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(conns))
EOF
cat "$OUT/summary.md"
