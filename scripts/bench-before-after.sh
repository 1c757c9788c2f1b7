#!/usr/bin/env bash
# Before/after benchmark of two ringcast broker binaries, driven by one
# ringcast-loadgen binary, in one run on the same machine. For every
# scenario the two brokers alternate (before, after, then after, before, ...
# for REPEATS rounds), each run on a fresh broker, so slow drift in the
# machine's other load hits both sides alike.
#
#   scripts/bench-before-after.sh BEFORE_BROKER AFTER_BROKER [LOADGEN]
#   BEFORE=... AFTER=... LOADGEN=... scripts/bench-before-after.sh
#
# e.g. (the pre-refactor tree in a worktree, the refactor in this one):
#   git worktree add --detach ../baseline 3c4056f
#   (cd ../baseline && cargo build --release -p ringcast -p ringcast-loadgen)
#   cargo build --release -p ringcast -p ringcast-loadgen
#   BEFORE_TREE=3c4056f AFTER_TREE="$(git rev-parse --short HEAD)+dirty" \
#     scripts/bench-before-after.sh ../baseline/target/release/ringcast \
#     target/release/ringcast ../baseline/target/release/ringcast-loadgen
#
# Scenarios (SCENARIOS, default "a1 b1 a2 b2 c"), all over WebSocket:
#   a1  fan-out 1 topic x 1,000 subscribers at RATE_A msg/s, --shards 1
#   b1  fan-out 100 topics x 10 subscribers at RATE_B msg/s, --shards 1
#       (one-shard broker: taskset -c BROKER_CORE; loadgen: taskset -c LOADGEN_CORE)
#   a2, b2  the same with --shards 2 (the cross-shard path); the broker is
#       pinned to SHARDS2_CPUS (default 0,1: both cores, so it shares core 1
#       with the loadgen), the loadgen still to LOADGEN_CORE
#   c   CONNS idle WebSocket connections, each subscribed to one of 100
#       topics (--shards 1, pinned as a1): broker RSS per connection
#
# Environment (defaults in brackets):
#   OUT [/tmp/bench-before-after]  JSON reports, broker logs, /metrics at
#                                  the end of each run, results.jsonl (one
#                                  line per run) and summary.md
#   DURATION [5s]     publishing time per fan-out run (loadgen syntax: 5s, 30s, 2m)
#   REPEATS [2]       rounds per scenario; odd rounds run before first, even after first
#   RATE_A [1000]     msg/s for 1 x 1,000       RATE_B [10000]  msg/s for 100 x 10
#   PAYLOAD [64]      bytes of data per message
#   CONNS [5000]      idle connections in c     SETTLE [2s]  wait before sampling RSS
#   BROKER_CORE [0]   LOADGEN_CORE [1]          SHARDS2_CPUS [0,1]
#   BROKER_FLAGS []   extra broker flags, both sides (word-split)
#   BEFORE_FLAGS [], AFTER_FLAGS []  extra broker flags for one side only
#                     (word-split; e.g. the same binary with two configurations)
#   BEFORE_LOADGEN_FLAGS [], AFTER_LOADGEN_FLAGS []  extra global loadgen
#                     flags for one side's runs (word-split; e.g. --token T)
#   BEFORE_NAME [before], AFTER_NAME [after]  the sides' names in the report
#   QUIET_WAIT [0]    if > 0: before each run wait up to this many seconds
#                     until other processes use < QUIET [0.15] cores
#   BEFORE_TREE, AFTER_TREE  git trees the binaries were built from (header only)
# Exit status: 0 if every run completed, 1 if any failed (the table says
# which), 2 for bad arguments. Default settings take about 2.5 minutes.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
case ${1:-} in -h | --help) usage ;; esac

BEFORE=${1:-${BEFORE:-}}
AFTER=${2:-${AFTER:-}}
LOADGEN=${3:-${LOADGEN:-}}
[ -n "$BEFORE" ] && [ -n "$AFTER" ] || usage
if [ -z "$LOADGEN" ]; then
  LOADGEN=$(dirname "$BEFORE")/ringcast-loadgen
  echo "LOADGEN not given; using $LOADGEN" >&2
fi
for b in "$BEFORE" "$AFTER" "$LOADGEN"; do
  [ -x "$b" ] || { echo "not an executable file: $b" >&2; exit 2; }
done
for tool in taskset curl python3 timeout; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
# Absolute paths: the header names them and the runs do not depend on cwd.
BEFORE=$(realpath "$BEFORE")
AFTER=$(realpath "$AFTER")
LOADGEN=$(realpath "$LOADGEN")

OUT=${OUT:-/tmp/bench-before-after}
DURATION=${DURATION:-5s}
REPEATS=${REPEATS:-2}
RATE_A=${RATE_A:-1000}
RATE_B=${RATE_B:-10000}
PAYLOAD=${PAYLOAD:-64}
CONNS=${CONNS:-5000}
SETTLE=${SETTLE:-2s}
BROKER_CORE=${BROKER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
SHARDS2_CPUS=${SHARDS2_CPUS:-0,1}
BROKER_FLAGS=${BROKER_FLAGS:-}
BEFORE_FLAGS=${BEFORE_FLAGS:-}
AFTER_FLAGS=${AFTER_FLAGS:-}
BEFORE_LOADGEN_FLAGS=${BEFORE_LOADGEN_FLAGS:-}
AFTER_LOADGEN_FLAGS=${AFTER_LOADGEN_FLAGS:-}
BEFORE_NAME=${BEFORE_NAME:-before}
AFTER_NAME=${AFTER_NAME:-after}
export BEFORE_NAME AFTER_NAME
SCENARIOS=${SCENARIOS:-"a1 b1 a2 b2 c"}
QUIET=${QUIET:-0.15}
QUIET_WAIT=${QUIET_WAIT:-0}

cmdline=$(printf '%q ' "$0" "$@")
cmdline=${cmdline% }
# A wrapper (scripts/bench-auth.sh) names itself as the command.
cmdline=${BENCH_COMMAND:-$cmdline}
started_at=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
t0=$SECONDS

. "$(dirname "$0")/lib/bench-out.sh"
# Both processes need a descriptor per connection (+ a few): the loadgen
# raises its own soft limit to the hard one; the broker inherits ours.
bench_out_init brokers
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNS + 100)) ]; then
  log "warning: ulimit -n is $(ulimit -n), below CONNS=$CONNS + 100"
fi

# Seconds in a loadgen duration (250ms, 5s, 2m, 1h, bare seconds); for the
# loadgen's watchdog only.
secs() {
  local d=$1
  case $d in
  *ms) echo $((${d%ms} / 1000 + 1)) ;;
  *s) echo "${d%s}" ;;
  *m) echo $((${d%m} * 60)) ;;
  *h) echo $((${d%h} * 3600)) ;;
  *) echo "$d" ;;
  esac
}
dur_s=$(secs "$DURATION")
dur_s=${dur_s%%.*}
# Setup (at most --setup-timeout, 120 s) + publishing + drain (at most 5 s)
# + slack; past it the run is killed and recorded as failed.
loadgen_limit=$((dur_s + 180))

broker=
port=
stop_broker() {
  local i
  [ -n "$broker" ] || return 0
  broker_alive=0
  if kill -0 "$broker" 2>/dev/null; then
    broker_alive=1
    kill -TERM "$broker" 2>/dev/null || true
    # --shutdown-grace is 5 s; give it 15 before SIGKILL.
    for ((i = 0; i < 150; i++)); do
      kill -0 "$broker" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$broker" 2>/dev/null; then
      log "   broker $broker still running 15 s after SIGTERM; SIGKILL"
      kill -KILL "$broker" 2>/dev/null || true
    fi
  fi
  broker_exit=0
  wait "$broker" 2>/dev/null || broker_exit=$?
  broker=
}
trap stop_broker EXIT
trap 'stop_broker; exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_broker BINARY SHARDS CPUS LOG SIDE_FLAGS: a fresh broker on a free
# loopback port, up when /healthz answers 200 (every shard accepting).
start_broker() {
  local bin=$1 shards=$2 cpus=$3 blog=$4 side_flags=$5 i
  port=$(free_port)
  # shellcheck disable=SC2086 # BROKER_FLAGS and side_flags are lists of flags
  taskset -c "$cpus" "$bin" --listen "127.0.0.1:$port" --shards "$shards" $BROKER_FLAGS \
    $side_flags >"$blog" 2>&1 &
  broker=$!
  for ((i = 0; i < 200; i++)); do
    if ! kill -0 "$broker" 2>/dev/null; then
      stop_broker
      start_error="broker exited at start-up (status $broker_exit): $(tail -n 1 "$blog")"
      return 1
    fi
    if curl -fs -m 1 -o /dev/null "http://127.0.0.1:$port/healthz"; then
      # Still ours (not something else that took the port first)?
      kill -0 "$broker" 2>/dev/null && return 0
    fi
    sleep 0.05
  done
  stop_broker
  start_error="broker not healthy on 127.0.0.1:$port within 10 s"
  return 1
}

quiet_log=log
. "$(dirname "$0")/lib/quiet.sh"

# run_one SCENARIO SIDE ROUND SHARDS CPUS LOADGEN-ARGS...: one fresh broker
# (SIDE's binary), one loadgen run; its JSON report (or error) becomes one
# line of results.jsonl.
run_one() {
  local scen=$1 side=$2 round=$3 shards=$4 cpus=$5 bin name rc side_flags lg_flags
  shift 5
  wait_quiet
  if [ "$side" = before ]; then
    bin=$BEFORE side_flags=$BEFORE_FLAGS lg_flags=$BEFORE_LOADGEN_FLAGS
  else
    bin=$AFTER side_flags=$AFTER_FLAGS lg_flags=$AFTER_LOADGEN_FLAGS
  fi
  name=$scen-$side-$round
  start_error=
  broker_alive=0
  broker_exit=
  rc=
  if start_broker "$bin" "$shards" "$cpus" "$OUT/broker-$name.log" "$side_flags"; then
    rc=0
    # shellcheck disable=SC2086 # lg_flags is a list of flags
    taskset -c "$LOADGEN_CORE" timeout -k 5 "$loadgen_limit" "$LOADGEN" \
      --broker "http://127.0.0.1:$port" --broker-pid "$broker" --json $lg_flags "$@" \
      >"$OUT/$name.json" 2>"$OUT/$name.err" || rc=$?
    # Per-shard counters (which shard took the publishes, which delivered).
    curl -fs -m 2 "http://127.0.0.1:$port/metrics" >"$OUT/metrics-$name.txt" 2>/dev/null || true
    stop_broker
  else
    : >"$OUT/$name.json"
    echo "$start_error" >"$OUT/$name.err"
  fi
  python3 - "$OUT" "$name" "$scen" "$side" "$round" "$bin" "$shards" "$cpus" \
    "${rc:-}" "$broker_alive" "${broker_exit:-}" "$(printf '%q ' "$@")" \
    "$BROKER_FLAGS $side_flags" <<'EOF' | tee -a "$OUT/progress.log" >&2
import json, os, re, sys, time
out, name, scen, side, rnd, binary, shards, cpus, rc, alive, bexit, args, bflags = sys.argv[1:]
rec = {"scenario": scen, "side": side, "side_name": os.environ.get(side.upper() + "_NAME"),
       "round": int(rnd), "broker_binary": binary,
       "tree": os.environ.get(side.upper() + "_TREE") or None, "shards": int(shards),
       "broker_cpus": cpus, "broker_flags": bflags.strip(), "loadgen_args": args.strip(),
       "loadgen_exit": int(rc) if rc else None,
       "broker_alive_at_end": alive == "1", "broker_exit": int(bexit) if bexit else None,
       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
text = open(os.path.join(out, name + ".json")).read()
err = open(os.path.join(out, name + ".err")).read().strip().splitlines()
try:
    rec["report"] = json.loads(text)
except ValueError:
    rec["report"] = None
if rc != "0" or rec["report"] is None:
    msg = [l for l in err if "error" in l] or err[-1:] or ["no report"]
    rec["error"] = (f"exit {rc}: " if rc else "") + msg[0]
    if rc == "124":
        rec["error"] = "loadgen killed by the script's watchdog (timeout); " + rec["error"]
def placement(path):
    """From the broker's /metrics at the end of a fan-out: the topics each
    shard owns, and the publisher's shard (the one that read the most bytes:
    the publishes outweigh the subscribers' upgrades and subscribes)."""
    try:
        text = open(path).read()
    except OSError:
        return None
    found = {"topics": {}, "bytes_in_total": {}}
    for m in re.finditer(r'^ringcast_(topics|bytes_in_total)\{shard="(\d+)"[^}]*\} (\S+)$', text, re.M):
        found[m.group(1)][int(m.group(2))] = float(m.group(3))
    bytes_in = found["bytes_in_total"]
    if len(bytes_in) < 2:
        return None
    pub = max(bytes_in, key=bytes_in.get)
    return {"topics_owned": [int(found["topics"].get(k, 0)) for k in sorted(bytes_in)],
            "publisher_shard": pub}
if int(shards) > 1 and scen != "c":
    rec["placement"] = placement(os.path.join(out, "metrics-" + name + ".txt"))
if rec["report"] is not None and not rec["broker_alive_at_end"]:
    rec["error"] = "broker died during the run (see broker log)"
with open(os.path.join(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
r = rec["report"]
if r and "transports" in r:
    r = r["transports"][0]
line = f"   {name} ({rec['side_name']}): "
try:
    if "error" in rec:
        line += "FAILED " + rec["error"][:200]
    elif "conns" in r:
        line += f"{r['conns']} conns, {r['broker_rss_delta_per_conn_kib']:.2f} KiB/conn, {r['handshakes_per_s']:.0f} handshakes/s"
    else:
        t = r["totals"]
        line += (f"{t['delivered']}/{t['expected']} delivered, lost {t['lost']}, "
                 f"p50 {r['latency']['p50_us']/1000:.2f} ms, p99 {r['latency']['p99_us']/1000:.2f} ms, "
                 f"broker {r['broker_cpu_us_per_delivery']:.3f} us/delivery")
except (KeyError, TypeError, ValueError) as e:
    line += f"report kept, but not summarised here ({e!r})"
print(line)
EOF
  sleep 1
}

# pair SCENARIO SHARDS CPUS LOADGEN-ARGS...: REPEATS rounds, alternating
# which side goes first.
pair() {
  local scen=$1 shards=$2 cpus=$3 r
  shift 3
  for ((r = 1; r <= REPEATS; r++)); do
    if ((r % 2)); then
      log "== $scen round $r: before ($BEFORE_NAME), after ($AFTER_NAME)"
      run_one "$scen" before "$r" "$shards" "$cpus" "$@"
      run_one "$scen" after "$r" "$shards" "$cpus" "$@"
    else
      log "== $scen round $r: after ($AFTER_NAME), before ($BEFORE_NAME)"
      run_one "$scen" after "$r" "$shards" "$cpus" "$@"
      run_one "$scen" before "$r" "$shards" "$cpus" "$@"
    fi
  done
}

sha() { sha256sum "$1" | cut -c1-12; }
# A --token's value is a credential: the report names it, never prints it.
redact() { sed -E 's/(--token[ =])[^ ]+/\1…/g' <<<"$1"; }
{
  echo "# ringcast broker: $BEFORE_NAME vs $AFTER_NAME"
  echo
  echo "- **Date:** $started_at"
  echo "- **Command:** \`$cmdline\`"
  echo "- **Before ($BEFORE_NAME):** \`$BEFORE\` (sha256 $(sha "$BEFORE")), tree ${BEFORE_TREE:-not given}${BEFORE_FLAGS:+; broker flags \`$BEFORE_FLAGS\`}${BEFORE_LOADGEN_FLAGS:+; loadgen flags \`$(redact "$BEFORE_LOADGEN_FLAGS")\`}"
  echo "- **After ($AFTER_NAME):** \`$AFTER\` (sha256 $(sha "$AFTER")), tree ${AFTER_TREE:-not given}${AFTER_FLAGS:+; broker flags \`$AFTER_FLAGS\`}${AFTER_LOADGEN_FLAGS:+; loadgen flags \`$(redact "$AFTER_LOADGEN_FLAGS")\`}"
  if cmp -s "$BEFORE" "$AFTER"; then echo "  (the two broker binaries are identical)"; fi
  echo "- **Loadgen:** \`$LOADGEN\` (sha256 $(sha "$LOADGEN")), the same for both"
  echo "- **Machine:** $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(uname -sr); load average at start $(cut -d' ' -f1-3 /proc/loadavg); ulimit -n $(ulimit -n)"
  echo "- **Settings:** DURATION=$DURATION REPEATS=$REPEATS RATE_A=$RATE_A RATE_B=$RATE_B PAYLOAD=$PAYLOAD CONNS=$CONNS SETTLE=$SETTLE BROKER_FLAGS='$BROKER_FLAGS' SCENARIOS='$SCENARIOS' QUIET_WAIT=$QUIET_WAIT"
  echo "- **Pinning:** loadgen \`taskset -c $LOADGEN_CORE\`; 1-shard broker \`taskset -c $BROKER_CORE\`; 2-shard broker \`taskset -c $SHARDS2_CPUS\`"
  echo "- **Raw results:** \`$OUT/results.jsonl\` (one JSON line per run; per-run \`*.json\`, \`*.err\`, \`broker-*.log\` beside it)"
} >"$OUT/header.md"
cat "$OUT/header.md" >&2
echo >&2

fan=(--transport ws --publish-via ws fanout --subs 1000 --duration "$DURATION" --payload "$PAYLOAD")
for s in $SCENARIOS; do
  case $s in
  a1) pair a1 1 "$BROKER_CORE" "${fan[@]}" --topics 1 --rate "$RATE_A" ;;
  b1) pair b1 1 "$BROKER_CORE" "${fan[@]}" --topics 100 --rate "$RATE_B" ;;
  a2) pair a2 2 "$SHARDS2_CPUS" "${fan[@]}" --topics 1 --rate "$RATE_A" ;;
  b2) pair b2 2 "$SHARDS2_CPUS" "${fan[@]}" --topics 100 --rate "$RATE_B" ;;
  c) pair c 1 "$BROKER_CORE" --transport ws conns --conns "$CONNS" --topics 100 --settle "$SETTLE" ;;
  *) log "unknown scenario $s (known: a1 b1 a2 b2 c)"; exit 2 ;;
  esac
done

elapsed=$((SECONDS - t0))
echo "- **Took:** $((elapsed / 60)) min $((elapsed % 60)) s" >>"$OUT/header.md"

python3 - "$OUT" "$RATE_A" "$RATE_B" "$DURATION" "$CONNS" "$SCENARIOS" <<'EOF' >"$OUT/table.md"
import json, os, statistics, sys
out, rate_a, rate_b, duration, conns, scenarios = sys.argv[1:]
runs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
label = {
    "a1": f"fan-out 1 topic × 1,000 subs, 1 shard, {float(rate_a):,.0f} msg/s, {duration}",
    "b1": f"fan-out 100 topics × 10 subs, 1 shard, {float(rate_b):,.0f} msg/s, {duration}",
    "a2": f"fan-out 1 topic × 1,000 subs, 2 shards, {float(rate_a):,.0f} msg/s, {duration}",
    "b2": f"fan-out 100 topics × 10 subs, 2 shards, {float(rate_b):,.0f} msg/s, {duration}",
    "c": f"idle ws connections × {int(conns):,}, 1 shard",
}
def rep(r):
    p, r = r.get("placement"), r.get("report")
    r = r["transports"][0] if r and "transports" in r else r
    return dict(r, placement=p) if r and p else r
def owned_by_publisher(r):
    p = r["placement"]
    return (p["topics_owned"][p["publisher_shard"]], sum(p["topics_owned"]))
fan = [  # (metric, value from a report, format, compare?)
    ("delivered / expected", lambda r: (r["totals"]["delivered"], r["totals"]["expected"]), None, False),
    ("lost / dup / out of order", lambda r: (r["totals"]["lost"], r["totals"]["duplicated"], r["totals"]["out_of_order"]), None, False),
    ("latency p50 ms", lambda r: r["latency"]["p50_us"] / 1000, "{:.2f}", True),
    ("latency p99 ms", lambda r: r["latency"]["p99_us"] / 1000, "{:.2f}", True),
    ("**broker CPU µs / delivery**", lambda r: r["broker_cpu_us_per_delivery"], "{:.3f}", True),
    ("broker CPU (cores)", lambda r: r["broker"]["cpu_utilization"], "{:.2f}", True),
    ("loadgen CPU (cores)", lambda r: r["loadgen"]["cpu_utilization"], "{:.2f}", False),
    ("other load (cores)", lambda r: (r.get("host") or {}).get("other_cores", float("nan")), "{:.2f}", False),
    ("topics owned by the publisher's shard", owned_by_publisher, None, False),
]
idle = [
    ("**broker RSS KiB / conn**", lambda r: r["broker_rss_delta_per_conn_kib"], "{:.2f}", True),
    ("broker RSS MiB before → after", lambda r: (r["broker"]["rss_before_kib"] / 1024, r["broker"]["rss_after_kib"] / 1024), None, False),
    ("handshakes / s", lambda r: r["handshakes_per_s"], "{:,.0f}", True),
    ("broker CPU µs / conn", lambda r: r["broker_cpu_us_per_conn"], "{:.1f}", True),
    ("other load (cores)", lambda r: (r.get("host") or {}).get("other_cores", float("nan")), "{:.2f}", False),
]
def fmt(v, f):
    if f:
        return f.format(v)
    if len(v) == 2 and isinstance(v[0], float):
        return f"{v[0]:.1f} → {v[1]:.1f}"
    return "/".join(f"{x:,}" for x in v)
bn, an = os.environ["BEFORE_NAME"], os.environ["AFTER_NAME"]
print(f"| scenario | metric | {bn} | {an} | {an} vs {bn} |")
print("|---|---|--:|--:|--:|")
for s in scenarios.split():
    rs = {side: sorted((r for r in runs if r["scenario"] == s and r["side"] == side), key=lambda r: r["round"])
          for side in ("before", "after")}
    ok = {side: [rep(r) for r in v if "error" not in r] for side, v in rs.items()}
    first = True
    for side in ("before", "after"):
        for r in rs[side]:
            if "error" in r:
                print(f"| {label[s] if first else ''} | {side} round {r['round']} failed | {r['error'][:150].replace('|', '/')} | | |")
                first = False
    for name, get, f, compare in (idle if s == "c" else fan):
        cells, means = [], []
        for side in ("before", "after"):
            vals = []
            for r in ok[side]:
                try:
                    v = get(r)
                    fmt(v, f)
                    vals.append(v)
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    pass
            cells.append(" · ".join(fmt(v, f) for v in vals) or "–")
            means.append(statistics.mean(vals) if f and vals else None)
        if cells == ["–", "–"]:
            continue
        d = ""
        if compare and means[0] and means[1] is not None:
            d = f"{(means[1] / means[0] - 1) * 100:+.1f} %"
        print(f"| {label[s] if first else ''} | {name} | {cells[0]} | {cells[1]} | {d} |")
        first = False
print()
print("Each cell lists the runs in round order (` · ` between rounds; rounds alternate which side runs first);")
print(f"\"{an} vs {bn}\" compares the means. Fan-out latency is from the scheduled send time (open loop);")
print("broker CPU µs / delivery is the broker's utime + stime over the publish and drain window divided by delivered messages.")
print("\"other load\" is CPU used by processes other than the broker and the loadgen during the run: where it is")
print("well above 0, that run was disturbed.")
if any(s in ("a2", "b2") for s in scenarios.split()):
    print("With 2 shards, where a run's topics and its publisher land is random (the topic's owner is a hash,")
    print("the publisher's shard SO_REUSEPORT's pick): \"topics owned by the publisher's shard\" says which placement")
    print("each run got (from the broker's /metrics), as it can change the cost of the cross-shard path.")
if "c" in scenarios.split():
    print(f"Broker RSS was seen to move in 2 MiB steps (identical binaries gave 4.92 or 5.33 KiB / conn at 5,000 conns),")
    print(f"so at CONNS={int(conns):,} a difference under {2048 / int(conns):.2f} KiB / conn can be one step of noise.")
EOF

{
  cat "$OUT/header.md"
  echo
  cat "$OUT/table.md"
} >"$OUT/summary.md"
echo >&2
cat "$OUT/summary.md"
failed=$(grep -c '"error": "' "$OUT/results.jsonl" || true)
if [ "$failed" -gt 0 ]; then
  log "$failed run(s) failed; see the table and $OUT/*.err"
  exit 1
fi
