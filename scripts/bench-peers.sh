#!/usr/bin/env bash
# ringcast side by side with its peers (issue 12): the same loadgen runs
# against ringcast (--shards 1), a uWebSockets server and a tokio-tungstenite
# server (bench/peers/), one server at a time, each a fresh process pinned
# to SERVER_CORE, the load generator pinned to LOADGEN_CORE.
#
#   UWS_PEER=/path/uws-peer TUNGSTENITE_PEER=/path/tungstenite-peer \
#     scripts/bench-peers.sh [RINGCAST [LOADGEN]]
#
# RINGCAST defaults to target/release/ringcast, LOADGEN to the
# ringcast-loadgen beside it. Copy them somewhere first if others rebuild
# target/release meanwhile. Nothing is built unless BUILD=1 (below); the
# uWebSockets peer is never built here (bench/peers/README.md).
#
# Scenarios (SCENARIOS, default "conns browser a200 b2000"), 64-byte data:
#   conns  CONNS idle connections, each subscribed to one of 100 topics:
#          server RSS per connection, handshakes/s and the p99 handshake
#          (TCP connect + upgrade) time
#   browser  BROWSER_CONNS [5000] idle subscribed connections whose
#          upgrade requests carry 1,700 bytes of browser headers (User-Agent,
#          Cookie, ...: loadgen --upgrade-header-bytes 1700)
#   a100   fanout, 1 topic x SUBS subscribers, 100 publishes/s
#   a200   fanout, 1 topic x SUBS subscribers, 200 publishes/s
#   b2000  fanout, 100 topics x SUBS/100 subscribers, 2,000 publishes/s
# Fixed publish rates, so that neither side is saturated; latency is
# scheduled send -> delivery, CPU per delivery the server's utime + stime
# (from /proc) over the publish and drain window / deliveries.
#
# Environment (defaults in brackets):
#   UWS_PEER, TUNGSTENITE_PEER  the peers' binaries (required for the
#                   servers that use them)
#   SERVERS ["ringcast uws tungstenite"]  SCENARIOS ["conns browser a200 b2000"]
#   CONNS [10000]   (a process may hold at most `ulimit -Hn` descriptors)
#   SUBS [1000]     fan-out subscribers     DURATION [15s]  publishing time
#   REPEATS [1]     rounds; the server order alternates between rounds
#   RINGCAST_ARGS   extra ringcast flags, word-split (e.g. "--runtime uring");
#                   other RINGCAST_* variables are unset for the server
#   TUNGSTENITE_ARGS  extra tungstenite-peer flags (e.g. "--read-buffer 131072")
#   PERF [0]        1: after the measured runs, one more a200 run per server
#                   with `perf record -g` on the server for PERF_SECONDS [5]
#                   from 3 s into it (not in the table: perf costs CPU);
#                   perf-*.data and top-symbol summaries in OUT
#   BUILD [0]       1: first build ringcast and ringcast-loadgen
#                   (cargo build --release) and the tungstenite peer (its own
#                   project, CARGO_TARGET_DIR=TT_TARGET
#                   [/tmp/bench-peers-tt-target]), and use those
#   SERVER_CORE [0] LOADGEN_CORE [1]
#   ISOLATE [0]     1: start each server and loadgen in a session of its
#                   own (setsid) at autogroup nice -15. The kernel shares
#                   CPU between sessions (autogroup) before it looks at
#                   nice values, so on a machine shared with other
#                   sessions' builds a plain `nice` does not keep them off
#                   the measured cores, and CPU per delivery reads low.
#   QUIET_WAIT [600] before each run wait up to this many seconds until
#                   other processes use < QUIET [0.15] cores (0: don't wait)
#   OUT [/tmp/bench-peers]  JSON reports, server logs, results.jsonl,
#                   results.csv, table.md, summary.md
# Exit status: 0 if every run completed (fan-outs: every message delivered
# once and in order), 1 otherwise, 2 for bad arguments.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
case ${1:-} in -h | --help) usage ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-0}
TT_TARGET=${TT_TARGET:-/tmp/bench-peers-tt-target}
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -p ringcast -p ringcast-loadgen)
  (cd "$ROOT/bench/peers/tungstenite" && CARGO_TARGET_DIR=$TT_TARGET cargo build --release)
  TUNGSTENITE_PEER=${TUNGSTENITE_PEER:-$TT_TARGET/release/tungstenite-peer}
fi
RINGCAST=${1:-${RINGCAST:-$ROOT/target/release/ringcast}}
LOADGEN=${2:-${LOADGEN:-$(dirname "$RINGCAST")/ringcast-loadgen}}
UWS_PEER=${UWS_PEER:-}
TUNGSTENITE_PEER=${TUNGSTENITE_PEER:-}
SERVERS=${SERVERS:-"ringcast uws tungstenite"}
SCENARIOS=${SCENARIOS:-"conns browser a200 b2000"}
CONNS=${CONNS:-10000}
BROWSER_CONNS=${BROWSER_CONNS:-5000}
SUBS=${SUBS:-1000}
DURATION=${DURATION:-15s}
REPEATS=${REPEATS:-1}
PERF=${PERF:-0}
PERF_SECONDS=${PERF_SECONDS:-5}
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
QUIET=${QUIET:-0.15}
QUIET_WAIT=${QUIET_WAIT:-600}
OUT=${OUT:-/tmp/bench-peers}
ringcast_args=${RINGCAST_ARGS:-}
tt_args=${TUNGSTENITE_ARGS:-}

binary_of() {
  case $1 in
  ringcast) echo "$RINGCAST" ;;
  uws) echo "$UWS_PEER" ;;
  tungstenite) echo "$TUNGSTENITE_PEER" ;;
  *) return 1 ;;
  esac
}
for s in $SERVERS; do
  b=$(binary_of "$s") || { echo "unknown server $s (known: ringcast uws tungstenite)" >&2; exit 2; }
  [ -n "$b" ] && [ -x "$b" ] || { echo "$s: not an executable file: '$b' (see the header: $0 --help)" >&2; exit 2; }
done
for sc in $SCENARIOS; do
  case $sc in conns | browser | a100 | a200 | b2000) ;; *) echo "unknown scenario $sc" >&2; exit 2 ;; esac
done
[ -x "$LOADGEN" ] || { echo "not an executable file: $LOADGEN" >&2; exit 2; }
for tool in taskset curl python3 timeout; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ "$PERF" != 1 ] || command -v perf >/dev/null || { echo "PERF=1 needs perf" >&2; exit 2; }
export OUT CONNS SUBS DURATION BROWSER_CONNS

. "$ROOT/scripts/lib/bench-out.sh"
bench_out_init servers
if [ "$(ulimit -n)" -lt $((CONNS + 64)) ]; then
  log "warning: ulimit -n is $(ulimit -n), below CONNS ($CONNS) + 64"
fi

dur_s=$(python3 -c 'import re, sys
m = re.fullmatch(r"([0-9.]+)(ms|s|m)?", sys.argv[1])
print(int(float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)] + 0.999) if m else sys.exit(1))' "$DURATION") ||
  { echo "DURATION must be like 15s, 500ms or 2m" >&2; exit 2; }

server=
stop_server() {
  [ -n "$server" ] || return 0
  kill -TERM "$server" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# start_server NAME LOG: a fresh server on a free loopback port, pinned.
# Up when ringcast's /healthz says ok, or a peer's port accepts. Sets
# server (pid) and port; returns 1 with start_error set otherwise.
# pin CORE CMD... &: runs CMD on CORE (in a session of its own with
# ISOLATE=1). Started in the background only: the function then runs in a
# subshell that execs CMD, so $! is CMD's pid (setsid too execs in place,
# the subshell not being a process-group leader).
pin() {
  local core=$1
  shift
  if [ "${ISOLATE:-0}" = 1 ]; then
    exec setsid sh -c 'echo -15 >/proc/self/autogroup 2>/dev/null; exec "$@"' sh taskset -c "$core" "$@"
  else
    exec taskset -c "$core" "$@"
  fi
}

start_server() {
  local name=$1 slog=$2 i
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  case $name in
  # shellcheck disable=SC2086 # extra flags are a list
  ringcast) pin "$SERVER_CORE" "$RINGCAST" --listen "127.0.0.1:$port" --shards 1 \
    $ringcast_args >"$slog" 2>&1 & ;;
  uws) pin "$SERVER_CORE" "$UWS_PEER" "$port" >"$slog" 2>&1 & ;;
  # shellcheck disable=SC2086
  tungstenite) pin "$SERVER_CORE" "$TUNGSTENITE_PEER" "$port" $tt_args >"$slog" 2>&1 & ;;
  esac
  server=$!
  for ((i = 0; i < 200; i++)); do
    kill -0 "$server" 2>/dev/null || break
    if [ "$name" = ringcast ]; then
      [ "$(curl -fs -m 1 "http://127.0.0.1:$port/healthz" 2>/dev/null)" != ok ] || return 0
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  start_error="$name not up on 127.0.0.1:$port within 10 s: $(tail -n 1 "$slog")"
  return 1
}

# The loadgen's flags for a scenario.
scenario_args() {
  local fan=(--transport ws --publish-via ws fanout --duration "$DURATION" --payload 64 --drain 5s)
  case $1 in
  conns) sc_args=(--transport ws conns --conns "$CONNS" --topics 100 --settle 2s) ;;
  browser) sc_args=(--transport ws --upgrade-header-bytes 1700 conns --conns "$BROWSER_CONNS" --topics 100 --settle 2s) ;;
  a100) sc_args=("${fan[@]}" --subs "$SUBS" --topics 1 --rate 100) ;;
  a200) sc_args=("${fan[@]}" --subs "$SUBS" --topics 1 --rate 200) ;;
  b2000) sc_args=("${fan[@]}" --subs "$SUBS" --topics 100 --rate 2000) ;;
  esac
}

quiet_log=log
. "$ROOT/scripts/lib/quiet.sh"

# run_one SERVER SCENARIO ROUND [perf]: one fresh server, one loadgen run.
run_one() {
  local srv=$1 sc=$2 round=$3 profile=${4:-} name rc= perf_pid=
  name=$srv-$sc-$round${profile:+-perf}
  scenario_args "$sc"
  wait_quiet
  start_error=
  if start_server "$srv" "$OUT/server-$name.log"; then
    rc=0
    pin "$LOADGEN_CORE" timeout -k 5 $((dur_s + 180)) "$LOADGEN" \
      --broker "http://127.0.0.1:$port" --broker-pid "$server" --json "${sc_args[@]}" \
      >"$OUT/$name.json" 2>"$OUT/$name.err" &
    local lg=$!
    if [ -n "$profile" ]; then
      sleep 3
      perf record -g -o "$OUT/perf-$srv.data" -p "$server" -- sleep "$PERF_SECONDS" \
        >"$OUT/perf-$srv.log" 2>&1 &
      perf_pid=$!
    fi
    wait "$lg" || rc=$?
    [ -z "$perf_pid" ] || wait "$perf_pid" || true
  else
    : >"$OUT/$name.json"
    echo "$start_error" >"$OUT/$name.err"
  fi
  local alive=0
  [ -n "$server" ] && kill -0 "$server" 2>/dev/null && alive=1
  stop_server
  if [ -n "$profile" ]; then
    perf report -i "$OUT/perf-$srv.data" --no-children --sort dso --stdio 2>/dev/null |
      grep -E '^ +[0-9.]+%' >"$OUT/perf-$srv-dso.txt" || true
    perf report -i "$OUT/perf-$srv.data" --no-children --sort dso,sym --percent-limit 0.5 \
      --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' >"$OUT/perf-$srv-sym.txt" || true
    log "   $name: perf by DSO: $(head -n 3 "$OUT/perf-$srv-dso.txt" | awk '{ printf "%s %s; ", $1, $2 }')"
    return 0
  fi
  python3 - "$name" "$srv" "$sc" "$round" "${rc:-}" "$alive" "${quiet_before:-}" \
    "$(printf '%q ' "${sc_args[@]}")" <<'EOF' | tee -a "$OUT/progress.log" >&2
import json, os, sys, time
name, srv, sc, rnd, rc, alive, quiet, args = sys.argv[1:]
out = os.environ["OUT"]
rec = {"name": name, "server": srv, "scenario": sc, "round": int(rnd), "loadgen_exit": rc,
       "server_alive_at_end": alive == "1", "quiet_before": quiet, "loadgen_args": args.strip(),
       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
try:
    r = json.load(open(os.path.join(out, name + ".json")))
    r = r["transports"][0] if "transports" in r else r
except (OSError, ValueError, KeyError, IndexError):
    r = None
rec["report"] = r
err = open(os.path.join(out, name + ".err")).read().strip().splitlines()
if rc != "0" or r is None:
    msg = [l for l in err if "error" in l] or err[-1:] or ["no report"]
    rec["error"] = (f"exit {rc}: " if rc else "") + msg[0]
elif alive != "1":
    rec["error"] = "the server died during the run (see its log)"
elif sc not in ("conns", "browser"):
    t = r["totals"]
    if t["lost"] or t["duplicated"] or t["out_of_order"] or t["unexpected"] or t["delivered"] != t["expected"]:
        rec["error"] = (f"not perfect: {t['delivered']}/{t['expected']} delivered, "
                        f"lost/dup/ooo {t['lost']}/{t['duplicated']}/{t['out_of_order']}")
with open(os.path.join(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
line = f"   {name}: "
if "error" in rec:
    line += "FAILED " + rec["error"][:200]
elif sc in ("conns", "browser"):
    line += (f"{r['broker_rss_delta_per_conn_kib']:.2f} KiB RSS/conn, {r['handshakes_per_s']:,.0f} handshakes/s, "
             f"p99 {r['handshake']['p99_us'] / 1000:.1f} ms; loadgen {r['loadgen']['cpu_utilization']:.2f} cores, "
             f"other {r['host']['other_cores']:.2f}")
else:
    t = r["totals"]
    line += (f"{t['delivered']}/{t['expected']} delivered, p50 {r['latency']['p50_us'] / 1000:.2f} ms, "
             f"p99 {r['latency']['p99_us'] / 1000:.2f} ms, {r['broker_cpu_us_per_delivery']:.3f} µs/delivery, "
             f"core {r['cluster']['busy_percent']:.0f} % busy; loadgen {r['loadgen']['cpu_utilization']:.2f} cores, "
             f"other {r['host']['other_cores']:.2f}")
print(line)
EOF
  sleep 1
}

cmdline=$(printf '%q ' "$0" "$@")
sha() { sha256sum "$1" | cut -c1-12; }
{
  echo "# ringcast beside uWebSockets and tokio-tungstenite"
  echo
  echo "- **Date:** $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- **Command:** \`${cmdline% }\`"
  for s in $SERVERS; do
    echo "- **$s:** \`$(binary_of "$s")\` (sha256 $(sha "$(binary_of "$s")"))"
  done
  echo "- **Loadgen:** \`$LOADGEN\` (sha256 $(sha "$LOADGEN"))"
  echo "- **Machine:** $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(uname -sr); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- **Settings:** SCENARIOS='$SCENARIOS' CONNS=$CONNS SUBS=$SUBS DURATION=$DURATION REPEATS=$REPEATS RINGCAST_ARGS='$ringcast_args' TUNGSTENITE_ARGS='$tt_args' QUIET=$QUIET QUIET_WAIT=$QUIET_WAIT"
  echo "- **Pinning:** each server \`taskset -c $SERVER_CORE\` (ringcast \`--shards 1\`), loadgen \`taskset -c $LOADGEN_CORE\`"
  echo "- **Raw results:** \`$OUT/results.jsonl\`, \`$OUT/results.csv\` (per-run \`*.json\`, \`*.err\`, server logs beside them)"
} >"$OUT/header.md"
cat "$OUT/header.md" >&2
echo >&2

for ((r = 1; r <= REPEATS; r++)); do
  order=$SERVERS
  ((r % 2)) || order=$(echo "$SERVERS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
  for sc in $SCENARIOS; do
    for s in $order; do
      log "== $sc round $r: $s"
      run_one "$s" "$sc" "$r"
    done
  done
done
if [ "$PERF" = 1 ]; then
  [ "$dur_s" -ge $((PERF_SECONDS + 4)) ] || log "warning: DURATION is short for PERF_SECONDS=$PERF_SECONDS from 3 s in"
  for s in $SERVERS; do
    log "== a200 under perf: $s"
    run_one "$s" a200 1 perf
  done
fi

python3 - <<'EOF' >"$OUT/table.md"
import csv, json, os, statistics as st
out = os.environ["OUT"]
runs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
servers = list(dict.fromkeys(r["server"] for r in runs))
label = {"ringcast": "ringcast", "uws": "uWebSockets", "tungstenite": "tokio-tungstenite"}
subs, conns = int(os.environ["SUBS"]), int(os.environ["CONNS"])
browser = int(os.environ["BROWSER_CONNS"])

def values(srv, sc, f):
    vs = []
    for r in runs:
        if r["server"] == srv and r["scenario"] == sc and "error" not in r:
            try:
                vs.append(f(r["report"]))
            except (KeyError, TypeError):
                pass
    return vs

def med(vs):
    return st.median(vs) if vs else None

def cell(srv, sc, parts):
    failed = sum(1 for r in runs if r["server"] == srv and r["scenario"] == sc and "error" in r)
    total = sum(1 for r in runs if r["server"] == srv and r["scenario"] == sc)
    if total == 0:
        return "–"
    if failed == total:
        return "failed"
    vals = [med(values(srv, sc, f)) for f, _ in parts]
    text = " / ".join("–" if v is None else fmt.format(v) for v, (_, fmt) in zip(vals, parts))
    return text + (f" ({failed} of {total} failed)" if failed else "")

rows = [
    (f"RSS per idle subscribed connection ({conns:,})", "conns",
     [(lambda r: r["broker_rss_delta_per_conn_kib"], "{:.2f} KiB")]),
    ("kernel: socket buffers held per connection / machine slab growth per connection", "conns",
     [(lambda r: r["broker_sockets"]["held_bytes"] / r["broker_sockets"]["sockets"], "{:.0f} B"),
      (lambda r: r["host_slab_delta_per_conn_kib"], "{:.2f} KiB")]),
    (f"RSS per idle subscribed connection, 1.7 KiB browser headers ({browser:,})", "browser",
     [(lambda r: r["broker_rss_delta_per_conn_kib"], "{:.2f} KiB")]),
    ("handshakes/s / p99 handshake", "conns",
     [(lambda r: r["handshakes_per_s"] / 1000, "{:.1f}k"), (lambda r: r["handshake"]["p99_us"] / 1000, "{:.1f} ms")]),
    ("server CPU per connection opened", "conns", [(lambda r: r["broker_cpu_us_per_conn"], "{:.1f} µs")]),
    (f"1 topic x {subs:,} subs, 100 publishes/s: p50 / p99 latency", "a100",
     [(lambda r: r["latency"]["p50_us"] / 1000, "{:.2f} ms"), (lambda r: r["latency"]["p99_us"] / 1000, "{:.2f} ms")]),
    ("same: server CPU per delivery / core busy", "a100",
     [(lambda r: r["broker_cpu_us_per_delivery"], "{:.2f} µs"), (lambda r: r["cluster"]["busy_percent"], "{:.0f} %")]),
    (f"1 topic x {subs:,} subs, 200 publishes/s: p50 / p99 latency", "a200",
     [(lambda r: r["latency"]["p50_us"] / 1000, "{:.2f} ms"), (lambda r: r["latency"]["p99_us"] / 1000, "{:.2f} ms")]),
    ("same: server CPU per delivery / core busy", "a200",
     [(lambda r: r["broker_cpu_us_per_delivery"], "{:.2f} µs"), (lambda r: r["cluster"]["busy_percent"], "{:.0f} %")]),
    (f"100 topics x {subs // 100:,} subs, 2,000 publishes/s: p50 / p99 latency", "b2000",
     [(lambda r: r["latency"]["p50_us"] / 1000, "{:.2f} ms"), (lambda r: r["latency"]["p99_us"] / 1000, "{:.2f} ms")]),
    ("same: server CPU per delivery / core busy", "b2000",
     [(lambda r: r["broker_cpu_us_per_delivery"], "{:.2f} µs"), (lambda r: r["cluster"]["busy_percent"], "{:.0f} %")]),
]
scenarios = {r["scenario"] for r in runs}
print("Medians over the completed rounds:")
print()
print("| | " + " | ".join(label.get(s, s) for s in servers) + " |")
print("|---|" + "--:|" * len(servers))
for title, sc, parts in rows:
    if sc in scenarios:
        print(f"| {title} | " + " | ".join(cell(s, sc, parts) for s in servers) + " |")
print()
print("Per run (loadgen cores near 1.00: the load generator was the limit; other: CPU of other processes):")
print()
print("| run | result | loadgen cores | other cores |")
print("|---|---|--:|--:|")
for r in runs:
    rep = r.get("report") or {}
    if "error" in r:
        res = "FAILED: " + r["error"][:150].replace("|", "/")
    elif r["scenario"] in ("conns", "browser"):
        res = f"{rep['conns']:,} connections opened in {rep['open_s']:.2f} s"
    else:
        t = rep["totals"]
        res = f"{t['delivered']:,}/{t['expected']:,} delivered, lost/dup/ooo {t['lost']}/{t['duplicated']}/{t['out_of_order']}"
    lg = rep.get("loadgen", {}).get("cpu_utilization")
    other = (rep.get("host") or {}).get("other_cores")
    print(f"| {r['name']} | {res} | {'–' if lg is None else f'{lg:.2f}'} | {'–' if other is None else f'{other:.2f}'} |")

cols = ["name", "server", "scenario", "round", "ok", "rss_kib_per_conn", "handshakes_per_s", "handshake_p99_ms",
        "cpu_us_per_conn", "delivered", "expected", "lost", "duplicated", "out_of_order", "p50_ms", "p99_ms",
        "p999_ms", "cpu_us_per_delivery", "core_busy_percent", "loadgen_cores", "other_cores", "error"]
with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in runs:
        rep = r.get("report") or {}
        t, lat = rep.get("totals") or {}, rep.get("latency") or {}
        ms = lambda k: lat[k] / 1000 if k in lat else None
        row = {"name": r["name"], "server": r["server"], "scenario": r["scenario"], "round": r["round"],
               "ok": "error" not in r, "rss_kib_per_conn": rep.get("broker_rss_delta_per_conn_kib"),
               "handshakes_per_s": rep.get("handshakes_per_s"),
               "handshake_p99_ms": rep["handshake"]["p99_us"] / 1000 if "handshake" in rep else None,
               "cpu_us_per_conn": rep.get("broker_cpu_us_per_conn"), "p50_ms": ms("p50_us"),
               "p99_ms": ms("p99_us"), "p999_ms": ms("p999_us"),
               "cpu_us_per_delivery": rep.get("broker_cpu_us_per_delivery"),
               "core_busy_percent": (rep.get("cluster") or {}).get("busy_percent"),
               "loadgen_cores": (rep.get("loadgen") or {}).get("cpu_utilization"),
               "other_cores": (rep.get("host") or {}).get("other_cores"), "error": r.get("error", "")}
        for k in ("delivered", "expected", "lost", "duplicated", "out_of_order"):
            row[k] = t.get(k)
        w.writerow([row[c] for c in cols])
EOF
{
  cat "$OUT/header.md"
  echo
  cat "$OUT/table.md"
} >"$OUT/summary.md"
echo >&2
cat "$OUT/summary.md"
bad=$(python3 -c 'import json, sys
print(sum(1 for l in open(sys.argv[1]) if l.strip() and "error" in json.loads(l)))' "$OUT/results.jsonl")
if [ "$bad" -gt 0 ]; then
  log "$bad run(s) failed or were not perfect; see the table and $OUT/*.err"
  exit 1
fi
