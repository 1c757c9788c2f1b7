#!/usr/bin/env bash
# What a Redis cluster costs per delivery: the same fan-out workloads
# against (single) one ringcast node without Redis and (cluster) two nodes
# joined through one Redis (`--redis`), in one run on this machine. Every
# run gets fresh processes (a fresh, empty Redis too); the two setups
# alternate (single, cluster, then cluster, single, ...) for REPEATS rounds,
# so slow drift in the machine's other load hits both alike.
#
#   scripts/bench-cluster.sh [RINGCAST [LOADGEN]]
#
# RINGCAST defaults to target/release/ringcast, LOADGEN to the
# ringcast-loadgen beside it (it must know --pid, i.e. drive a cluster).
# Copy both somewhere first if others rebuild target/release meanwhile:
#   mkdir -p /tmp/rc-cluster-bench
#   cp target/release/ringcast target/release/ringcast-loadgen /tmp/rc-cluster-bench/
#   TREE=$(git rev-parse --short HEAD) OUT=/tmp/rc-cluster-bench/run1 \
#     scripts/bench-cluster.sh /tmp/rc-cluster-bench/ringcast
#
# Pinning (a 2-core machine): everything the cluster is made of (the one
# node in "single"; both nodes and Redis in "cluster") is pinned to
# NODE_CPUS, the load generator to LOADGEN_CORE. With both nodes and Redis
# on one core this measures CPU per delivery, not the scale-out two
# machines would give.
#
# Workloads (WORKLOADS, default "a100 a200 b1000 b1000http b1000span p
# pspan"; "none" for only the extra measurements below), subscribers over
# WebSocket, 64-byte data, PUBLISHERS publisher(s) (1):
#   a100, a200   1 topic x 1,000 subscribers at 100 / 200 publishes/s
#   b1000        100 topics x 10 subscribers at 1,000 publishes/s
#   b1000http    b1000 with publishes as pipelined POST /publish (HTTP)
#   b1000span    cluster only: b1000 with --broker listed as A B A, so
#                every topic has subscribers on both nodes (about 2/3 on A,
#                1/3 on B; publisher on B). In b1000 with two nodes each
#                topic's 10 subscribers land on one node (subscriber i on
#                topic i mod 100 and node i mod 2), so Redis sends each
#                message to one node; here it sends it to two.
#   p            1,000 topics x 1 subscriber at RATE_P publishes/s: many
#                publishes, few deliveries (Redis's cost per publish at a
#                higher rate, one node per topic)
#   pspan        cluster only: 999 topics x 2 subscribers (1,998) at RATE_P
#                publishes/s; with two nodes each topic's two subscribers
#                are on different nodes (i mod 999 against i mod 2), so
#                Redis sends each message to both
# Cluster runs use the loadgen's default split: subscriber i on node
# i mod N, publisher p on node (p+1) mod N (so with one publisher every
# publish enters on node B).
#
# Environment (defaults in brackets):
#   OUT [/tmp/bench-cluster]  JSON reports, logs, Redis INFO and node
#                   /metrics per run, results.jsonl, table.md, summary.md
#   DURATION [15s]  publishing time per run      REPEATS [2]  rounds
#   SETUPS ["single cluster"]  WORKLOADS [see above]
#   PAYLOAD [64]    PUBLISHERS [1]               SUBS [1000] (a*, b*)
#   RATE_P [5000]   publishes/s in p and pspan
#   NODE_CPUS [0]   LOADGEN_CORE [1]
#   REDIS_SERVER [/usr/bin/redis-server]  REDIS_CLI [redis-cli beside it]
#   REDIS_FLAGS []  extra redis-server flags (word-split), after
#                   `--save '' --appendonly no` (no persistence: AOF or
#                   RDB snapshots would add their own cost to every publish)
#   BROKER_FLAGS [] extra flags for every node (word-split)
#   IDLE_SECONDS [3] before each cluster run, Redis's CPU is read over this
#                   long with both nodes connected and idle (its fixed cost)
#   REDIS_MAX_NODES []  e.g. "1 2 4 8": also measure what one Redis core
#                   does alone, REPEATS times per value K: a fresh Redis
#                   (pinned to NODE_CPUS) and K subscriber connections
#                   (stand-ins for K nodes, each on the same REDIS_MAX_TOPICS
#                   [1000] channels, reading and discarding) on LOADGEN_CORE,
#                   where redis-benchmark runs ringcast's publish script
#                   (from SCRIPT_RS [broker/src/cluster/script.rs of this
#                   script's tree])
#                   as fast as it goes: REDIS_MAX_N [300000] EVALSHA calls,
#                   4 connections, pipelines of 32, random topics,
#                   PAYLOAD-byte data. Results in redis-max.jsonl and the
#                   summary.
#   KMEM_CONNS [0]  if > 0: also open this many idle subscribed WebSocket
#                   connections to one node, REPEATS times, and read the
#                   kernel's memory per socket (/proc/slabinfo, /proc/meminfo,
#                   /proc/net/sockstat) while they are held; results in
#                   kmem.jsonl and the summary (needs root for slabinfo)
#   QUIET_WAIT [600] before each run wait up to this many seconds until
#                   other processes use < QUIET [0.15] cores (0: don't wait)
#   TREE            the git tree the binaries were built from (header only)
# Exit status: 0 if every run completed with every message delivered once
# and in order, 1 otherwise (the table says which), 2 for bad arguments.
# Default settings take about 20 minutes on a quiet machine (REPEATS=3
# with REDIS_MAX_NODES="1 2 4 8" and KMEM_CONNS=10000: about 35).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
case ${1:-} in -h | --help) usage ;; esac

RINGCAST=${1:-${RINGCAST:-target/release/ringcast}}
LOADGEN=${2:-${LOADGEN:-$(dirname "$RINGCAST")/ringcast-loadgen}}
REDIS_SERVER=${REDIS_SERVER:-/usr/bin/redis-server}
REDIS_CLI=${REDIS_CLI:-$(dirname "$REDIS_SERVER")/redis-cli}
for b in "$RINGCAST" "$LOADGEN" "$REDIS_SERVER" "$REDIS_CLI"; do
  [ -x "$b" ] || { echo "not an executable file: $b" >&2; exit 2; }
done
for tool in taskset curl python3 timeout; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
if ! "$LOADGEN" help fanout 2>&1 | grep -q -- '--pid'; then
  echo "$LOADGEN has no --pid option (build this tree's loadgen)" >&2
  exit 2
fi
REDIS_BENCHMARK=${REDIS_BENCHMARK:-$(dirname "$REDIS_SERVER")/redis-benchmark}
publish_lua=
if [ -n "${REDIS_MAX_NODES:-}" ]; then
  [ -x "$REDIS_BENCHMARK" ] || { echo "not an executable file: $REDIS_BENCHMARK" >&2; exit 2; }
  script_rs=${SCRIPT_RS:-$(cd "$(dirname "$0")/.." && pwd)/broker/src/cluster/script.rs}
  publish_lua=$(sed -n '/^pub const PUBLISH: &str = r"$/,/^";$/p' "$script_rs" | sed '1d;$d')
  [ -n "$publish_lua" ] || { echo "no PUBLISH script found in $script_rs" >&2; exit 2; }
fi
RINGCAST=$(realpath "$RINGCAST")
LOADGEN=$(realpath "$LOADGEN")

OUT=${OUT:-/tmp/bench-cluster}
DURATION=${DURATION:-15s}
REPEATS=${REPEATS:-2}
SETUPS=${SETUPS:-"single cluster"}
WORKLOADS=${WORKLOADS:-"a100 a200 b1000 b1000http b1000span p pspan"}
[ "$WORKLOADS" != none ] || WORKLOADS=
PAYLOAD=${PAYLOAD:-64}
PUBLISHERS=${PUBLISHERS:-1}
SUBS=${SUBS:-1000}
RATE_P=${RATE_P:-5000}
NODE_CPUS=${NODE_CPUS:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
REDIS_FLAGS=${REDIS_FLAGS:-}
BROKER_FLAGS=${BROKER_FLAGS:-}
IDLE_SECONDS=${IDLE_SECONDS:-3}
REDIS_MAX_NODES=${REDIS_MAX_NODES:-}
KMEM_CONNS=${KMEM_CONNS:-0}
REDIS_MAX_TOPICS=${REDIS_MAX_TOPICS:-1000}
REDIS_MAX_N=${REDIS_MAX_N:-300000}
QUIET=${QUIET:-0.15}
QUIET_WAIT=${QUIET_WAIT:-600}
TREE=${TREE:-}
export OUT DURATION REPEATS PAYLOAD SUBS PUBLISHERS IDLE_SECONDS RATE_P KMEM_CONNS

cmdline=$(printf '%q ' "$0" "$@")
cmdline=${cmdline% }
started_at=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
t0=$SECONDS

. "$(dirname "$0")/lib/bench-out.sh"
bench_out_init nodes

secs() {
  local d=$1
  case $d in
  *ms) echo $((${d%ms} / 1000 + 1)) ;;
  *s) echo "${d%s}" ;;
  *m) echo $((${d%m} * 60)) ;;
  *) echo "$d" ;;
  esac
}
dur_s=$(secs "$DURATION")
loadgen_limit=$((${dur_s%%.*} + 180))

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Every process this script started and has not stopped yet.
pids=()
stop_pid() {
  local p=$1 i
  kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$p" 2>/dev/null; then
    log "   pid $p still running 15 s after SIGTERM; SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
}
# Last started first: the nodes stop before the Redis they use.
stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  pids=()
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

start_error=
# start_redis LOG: sets redis (pid) and redis_port.
start_redis() {
  local i
  redis_port=$(free_port)
  # shellcheck disable=SC2086 # REDIS_FLAGS is a list of flags
  taskset -c "$NODE_CPUS" "$REDIS_SERVER" --port "$redis_port" --bind 127.0.0.1 \
    --save '' --appendonly no $REDIS_FLAGS --logfile "$1" --daemonize no &
  redis=$!
  pids+=("$redis")
  for ((i = 0; i < 100; i++)); do
    if [ "$("$REDIS_CLI" -p "$redis_port" ping 2>/dev/null)" = PONG ]; then return 0; fi
    kill -0 "$redis" 2>/dev/null || break
    sleep 0.05
  done
  start_error="redis-server not answering on port $redis_port"
  return 1
}

# start_node LOG [FLAGS...]: a node on a free loopback port, up when
# /healthz says "ok" (every shard serving; in a cluster, Redis connected).
# Sets node (pid) and node_port.
start_node() {
  local nlog=$1 i
  shift
  node_port=$(free_port)
  # shellcheck disable=SC2086 # BROKER_FLAGS is a list of flags
  taskset -c "$NODE_CPUS" "$RINGCAST" --listen "127.0.0.1:$node_port" --shards 1 \
    $BROKER_FLAGS "$@" >"$nlog" 2>&1 &
  node=$!
  pids+=("$node")
  for ((i = 0; i < 200; i++)); do
    kill -0 "$node" 2>/dev/null || break
    if [ "$(curl -fs -m 1 "http://127.0.0.1:$node_port/healthz" 2>/dev/null)" = ok ]; then
      return 0
    fi
    sleep 0.05
  done
  start_error="node not healthy on 127.0.0.1:$node_port within 10 s: $(tail -n 1 "$nlog")"
  return 1
}

# warm_node PORT: one publish through a cluster node (to a topic of its
# own), so that its Redis command connection exists before the run. A
# fresh node makes that connection on its first command; subscribes to
# several new topics arriving together before then are refused with
# `unavailable` (all but the first: "redis: connecting" in the node's log).
warm_node() {
  local i
  for ((i = 0; i < 50; i++)); do
    if curl -fs -m 2 -o /dev/null -d '{"warm":1}' "http://127.0.0.1:$1/publish/bench-warmup.$1"; then
      return 0
    fi
    sleep 0.1
  done
  start_error="node on 127.0.0.1:$1: no publish succeeded within about 5 s (warm-up)"
  return 1
}

quiet_log=log
. "$(dirname "$0")/lib/quiet.sh"

# The loadgen's fan-out flags for a workload, and its broker list shape.
workload_args() {
  local fan=(--transport ws fanout --publishers "$PUBLISHERS" --duration "$DURATION"
    --payload "$PAYLOAD")
  case $1 in
  a100) wl_args=(--publish-via ws "${fan[@]}" --subs "$SUBS" --topics 1 --rate 100) ;;
  a200) wl_args=(--publish-via ws "${fan[@]}" --subs "$SUBS" --topics 1 --rate 200) ;;
  b1000) wl_args=(--publish-via ws "${fan[@]}" --subs "$SUBS" --topics 100 --rate 1000) ;;
  b1000http) wl_args=(--publish-via http "${fan[@]}" --subs "$SUBS" --topics 100 --rate 1000) ;;
  b1000span) wl_args=(--publish-via ws "${fan[@]}" --subs "$SUBS" --topics 100 --rate 1000) ;;
  p) wl_args=(--publish-via ws "${fan[@]}" --subs 1000 --topics 1000 --rate "$RATE_P") ;;
  pspan) wl_args=(--publish-via ws "${fan[@]}" --subs 1998 --topics 999 --rate "$RATE_P") ;;
  *) return 1 ;;
  esac
}

# run_one WORKLOAD SETUP ROUND
run_one() {
  local wl=$1 setup=$2 round=$3 name rc= brokers=() watch=() n0= n1= p0 p1
  name=$wl-$setup-$round
  workload_args "$wl"
  wait_quiet
  local load_at_start
  load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
  start_error=
  redis= redis_port=
  if [ "$setup" = single ]; then
    if start_node "$OUT/node0-$name.log"; then
      n0=$node p0=$node_port
      brokers=(--broker "http://127.0.0.1:$p0")
      watch=(--broker-pid "$n0")
    fi
  else
    if start_redis "$OUT/redis-$name.log" &&
      start_node "$OUT/node0-$name.log" --redis "redis://127.0.0.1:$redis_port" && {
      n0=$node p0=$node_port
      start_node "$OUT/node1-$name.log" --redis "redis://127.0.0.1:$redis_port"
    } && warm_node "$p0" && warm_node "$node_port"; then
      n1=$node p1=$node_port
      brokers=(--broker "http://127.0.0.1:$p0" --broker "http://127.0.0.1:$p1")
      [ "$wl" = b1000span ] && brokers+=(--broker "http://127.0.0.1:$p0")
      watch=(--broker-pid "$n0" --broker-pid "$n1" --pid "redis=$redis")
    fi
  fi
  if [ -z "$start_error" ]; then
    if [ -n "$redis" ]; then
      # Redis's CPU with both nodes connected and nothing to do, over
      # IDLE_SECONDS: the fixed part of its cost per publish below.
      "$REDIS_CLI" -p "$redis_port" info cpu >"$OUT/redis-info-idle-$name.txt"
      sleep "$IDLE_SECONDS"
      "$REDIS_CLI" -p "$redis_port" config resetstat >/dev/null
      "$REDIS_CLI" -p "$redis_port" info cpu >"$OUT/redis-info-before-$name.txt"
    fi
    rc=0
    taskset -c "$LOADGEN_CORE" timeout -k 5 "$loadgen_limit" "$LOADGEN" \
      "${brokers[@]}" "${watch[@]}" --json "${wl_args[@]}" \
      >"$OUT/$name.json" 2>"$OUT/$name.err" || rc=$?
    curl -fs -m 2 "http://127.0.0.1:$p0/metrics" >"$OUT/metrics-node0-$name.txt" 2>/dev/null || true
    [ -z "$n1" ] || curl -fs -m 2 "http://127.0.0.1:$p1/metrics" >"$OUT/metrics-node1-$name.txt" 2>/dev/null || true
    [ -z "$redis" ] || "$REDIS_CLI" -p "$redis_port" info all >"$OUT/redis-info-after-$name.txt" 2>/dev/null || true
  else
    : >"$OUT/$name.json"
    echo "$start_error" >"$OUT/$name.err"
  fi
  local alive=1 p
  for p in $n0 $n1 $redis; do kill -0 "$p" 2>/dev/null || alive=0; done
  stop_all
  python3 - "$name" "$wl" "$setup" "$round" "${rc:-}" "$alive" "$load_at_start" \
    "${quiet_before:-}" "$(printf '%q ' "${brokers[@]}" "${watch[@]}" --json "${wl_args[@]}")" \
    <<'EOF' | tee -a "$OUT/progress.log" >&2
import json, os, re, sys, time
name, wl, setup, rnd, rc, alive, load, quiet, args = sys.argv[1:]
out = os.environ["OUT"]
rec = {"name": name, "workload": wl, "setup": setup, "round": int(rnd),
       "loadgen_exit": int(rc) if rc else None, "all_alive_at_end": alive == "1",
       "loadavg_at_start": load, "other_cores_before": float(quiet) if quiet else None,
       "loadgen_args": args.strip(),
       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
def read(p):
    try:
        return open(os.path.join(out, p)).read()
    except OSError:
        return ""
try:
    r = json.loads(read(name + ".json"))
    r = r["transports"][0] if "transports" in r else r
except ValueError:
    r = None
rec["report"] = r
err = read(name + ".err").strip().splitlines()
if rc != "0" or r is None:
    msg = [l for l in err if "error" in l] or err[-1:] or ["no report"]
    rec["error"] = (f"exit {rc}: " if rc else "") + msg[0]
elif not rec["all_alive_at_end"]:
    rec["error"] = "a node or Redis died during the run (see its log)"
def info(text):
    d = {}
    for l in text.splitlines():
        if ":" in l and not l.startswith("#"):
            k, v = l.strip().split(":", 1)
            d[k] = v
    return d
def metrics(text):
    m = {}
    for g in re.finditer(r'^(ringcast_redis_\w+)(?:\{[^}]*\})? (\S+)$', text, re.M):
        m[g.group(1)] = m.get(g.group(1), 0) + float(g.group(2))
    return m
if setup == "cluster":
    i, a, b = (info(read(f"redis-info-{w}-{name}.txt")) for w in ("idle", "before", "after"))
    rc_ = {}
    cpu = lambda d: sum(float(d[k]) for k in ("used_cpu_sys", "used_cpu_user"))
    try:
        rc_["used_cpu_s"] = cpu(b) - cpu(a)
        rc_["idle_cpu_per_s"] = (cpu(a) - cpu(i)) / float(os.environ["IDLE_SECONDS"])
    except (KeyError, ValueError, ZeroDivisionError):
        pass
    for k, v in b.items():
        if k.startswith("cmdstat_"):
            f = dict(x.split("=") for x in v.split(","))
            rc_[k[8:]] = {"calls": int(f["calls"]), "usec": int(f["usec"])}
    for k in ("total_net_input_bytes", "total_net_output_bytes", "instantaneous_ops_per_sec"):
        if k in b:
            rc_[k] = int(b[k])
    rec["redis_info"] = rc_
    rec["node_metrics"] = [metrics(read(f"metrics-node{i}-{name}.txt")) for i in (0, 1)]
with open(os.path.join(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
line = f"   {name}: "
try:
    if "error" in rec:
        line += "FAILED " + rec["error"][:200]
    else:
        t = r["totals"]
        procs = ", ".join(f"{p['name']} {p['cpu_us_per_delivery']:.3f}" for p in r["processes"])
        line += (f"{t['delivered']}/{t['expected']} delivered, lost/dup/ooo {t['lost']}/{t['duplicated']}/{t['out_of_order']}, "
                 f"p50 {r['latency']['p50_us']/1000:.2f} ms, p99 {r['latency']['p99_us']/1000:.2f} ms, "
                 f"µs/delivery: {procs}; cluster {r['cluster']['cpu_us_per_delivery']:.3f}; "
                 f"loadgen {r['loadgen']['cpu_utilization']:.2f} cores, other {r['host']['other_cores']:.2f}")
except (KeyError, TypeError, ValueError) as e:
    line += f"report kept, but not summarised here ({e!r})"
print(line)
EOF
  sleep 1
}

# redis_max K ROUND: one Redis alone under redis-benchmark running the
# publish script, K subscriber connections on every topic's channel.
redis_max() {
  local k=$1 round=$2 name sha1 data i subs=() t_start t_end rc=0
  name=rmax-$k-$round
  wait_quiet
  start_error=
  if ! start_redis "$OUT/redis-$name.log"; then
    log "   $name: FAILED $start_error"
    stop_all
    return 0
  fi
  sha1=$("$REDIS_CLI" -p "$redis_port" script load "$publish_lua")
  for ((i = 0; i < k; i++)); do
    taskset -c "$LOADGEN_CORE" python3 - "$redis_port" "$REDIS_MAX_TOPICS" "$OUT/sub-$name-$i.txt" <<'PY' &
import signal, socket, sys
port, topics, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
chans = [f"ringcast:{{lg.{t:012d}}}".encode() for t in range(topics)]
cmd = b"*%d\r\n$9\r\nSUBSCRIBE\r\n" % (len(chans) + 1) + b"".join(
    b"$%d\r\n%s\r\n" % (len(c), c) for c in chans)
s = socket.create_connection(("127.0.0.1", port))
s.sendall(cmd)
n = 0
def done(*_):
    open(out, "w").write(f"{n}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    b = s.recv(262144)
    if not b:
        done()
    n += len(b)
PY
    subs+=($!)
    pids+=($!)
  done
  # Wait until every subscriber is on every channel.
  for ((i = 0; i < 100; i++)); do
    [ "$("$REDIS_CLI" -p "$redis_port" pubsub numsub "ringcast:{lg.$(printf %012d $((REDIS_MAX_TOPICS - 1)))}" | tail -n 1)" = "$k" ] && break
    sleep 0.1
  done
  data=$(python3 -c 'import sys; n = int(sys.argv[1]); h = "{\"t\":1,\"p\":\""; print(h + "x" * max(0, n - len(h) - 2) + "\"}")' "$PAYLOAD")
  "$REDIS_CLI" -p "$redis_port" config resetstat >/dev/null
  "$REDIS_CLI" -p "$redis_port" info cpu >"$OUT/redis-info-before-$name.txt"
  t_start=$(date +%s.%N)
  head -n 1 <(grep "^cpu$NODE_CPUS " /proc/stat) >"$OUT/stat-before-$name.txt"
  taskset -c "$LOADGEN_CORE" "$REDIS_BENCHMARK" -p "$redis_port" -n "$REDIS_MAX_N" -c 4 -P 32 \
    -r "$REDIS_MAX_TOPICS" --csv EVALSHA "$sha1" 2 'ringcast:{lg.__rand_int__}:s' \
    'ringcast:{lg.__rand_int__}:m' "$data" 100 3600 86400 'ringcast:{lg.__rand_int__}' \
    >"$OUT/$name.csv" 2>"$OUT/$name.err" || rc=$?
  t_end=$(date +%s.%N)
  head -n 1 <(grep "^cpu$NODE_CPUS " /proc/stat) >"$OUT/stat-after-$name.txt"
  "$REDIS_CLI" -p "$redis_port" info all >"$OUT/redis-info-after-$name.txt"
  for i in "${subs[@]}"; do stop_pid "$i"; done
  stop_all
  python3 - "$name" "$k" "$round" "$rc" "$t_start" "$t_end" <<'PY' | tee -a "$OUT/progress.log" >&2
import json, os, sys
name, k, rnd, rc, t0, t1 = sys.argv[1:]
out = os.environ["OUT"]
def info(p):
    d = {}
    for l in open(os.path.join(out, p)):
        if ":" in l and not l.startswith("#"):
            a, b = l.strip().split(":", 1)
            d[a] = b
    return d
def stat(d, cmd):
    f = dict(x.split("=") for x in d.get("cmdstat_" + cmd, "calls=0,usec=0").split(","))
    return int(f["calls"]), int(f["usec"])
a, b = info(f"redis-info-before-{name}.txt"), info(f"redis-info-after-{name}.txt")
cpu = sum(float(b[x]) - float(a[x]) for x in ("used_cpu_sys", "used_cpu_user"))
calls, usec = stat(b, "evalsha")
# The CSV's first field is the command line, JSON quotes unescaped: read
# the numbers from the right ("rps" is the first of 7).
try:
    line = open(os.path.join(out, name + ".csv")).read().strip().splitlines()[1]
    rps = float(line.rsplit('","', 7)[1])
except (OSError, IndexError, ValueError):
    rps = None
wall = float(t1) - float(t0)
# Redis's core: busy share over the run, from /proc/stat (when NODE_CPUS is
# one core); what Redis did not use of it was other processes' work.
core_busy = None
try:
    x = open(os.path.join(out, f"stat-before-{name}.txt")).read().split()
    y = open(os.path.join(out, f"stat-after-{name}.txt")).read().split()
    d = [int(b) - int(a) for a, b in zip(x[1:9], y[1:9])]
    core_busy = (d[0] + d[1] + d[2] + d[5] + d[6]) / sum(d)
except (OSError, ValueError, ZeroDivisionError):
    pass
subs = []
for i in range(int(k)):
    try:
        subs.append(int(open(os.path.join(out, f"sub-{name}-{i}.txt")).read()))
    except (OSError, ValueError):
        subs.append(None)
rec = {"name": name, "nodes": int(k), "round": int(rnd), "exit": int(rc), "publishes": calls,
       "wall_s": wall, "publishes_per_s": rps, "redis_cpu_s": cpu, "redis_busy": cpu / wall,
       "core_busy": core_busy,
       "other_on_core": max(0.0, core_busy - cpu / wall) if core_busy is not None else None,
       "redis_us_per_publish": cpu / calls * 1e6 if calls else None,
       "evalsha_us_per_call": usec / calls if calls else None,
       "publish_calls": stat(b, "publish")[0], "subscriber_bytes": subs}
with open(os.path.join(out, "redis-max.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
print(f"   {name}: {rps or 0:,.0f} publishes/s, Redis {rec['redis_busy']:.2f} cores "
      f"(its core busy {core_busy if core_busy is not None else float('nan'):.2f}), "
      f"{rec['redis_us_per_publish'] or 0:.1f} µs/publish (EVALSHA {rec['evalsha_us_per_call'] or 0:.1f} µs), "
      f"subscribers read {subs} bytes, exit {rc}")
PY
  sleep 1
}

# kmem ROUND: KMEM_CONNS idle subscribed WebSocket connections to one
# node (--shards 1, as in "single"): the node's RSS per connection (the
# loadgen's figure) and the kernel's memory per socket, from /proc/slabinfo
# and /proc/meminfo sampled while the connections are held. Both ends of
# every connection are sockets on this host (the node's and the
# loadgen's), so a connection costs the kernel two sockets.
kmem_snapshot() {
  {
    echo "# slabinfo"
    grep -E '^(TCP|sock_inode_cache|filp|dentry|eventpoll_epi|eventpoll_pwq|skbuff_head_cache|kmalloc-[0-9k]+) ' /proc/slabinfo
    echo "# meminfo"
    grep -E '^(Slab|SReclaimable|SUnreclaim|MemAvailable):' /proc/meminfo
    echo "# sockstat"
    cat /proc/net/sockstat
  } >"$1"
}
kmem() {
  local round=$1 name i lg rc=0 base_inuse target
  name=kmem-$round
  wait_quiet
  start_error=
  if ! start_node "$OUT/node0-$name.log"; then
    log "   $name: FAILED $start_error"
    stop_all
    return 0
  fi
  sync
  kmem_snapshot "$OUT/$name-before.txt"
  base_inuse=$(awk '/^TCP:/ { print $3 }' /proc/net/sockstat)
  target=$((base_inuse + 2 * KMEM_CONNS))
  taskset -c "$LOADGEN_CORE" timeout -k 5 300 "$LOADGEN" --broker "http://127.0.0.1:$node_port" \
    --broker-pid "$node" --json --transport ws conns --conns "$KMEM_CONNS" --topics 100 \
    --settle 10s >"$OUT/$name.json" 2>"$OUT/$name.err" &
  lg=$!
  for ((i = 0; i < 1200; i++)); do
    [ "$(awk '/^TCP:/ { print $3 }' /proc/net/sockstat)" -ge "$target" ] && break
    kill -0 "$lg" 2>/dev/null || break
    sleep 0.1
  done
  sleep 5 # inside the loadgen's 10 s settle: every connection subscribed and idle
  kmem_snapshot "$OUT/$name-held.txt"
  wait "$lg" || rc=$?
  stop_all
  python3 - "$name" "$rc" <<'PY' | tee -a "$OUT/progress.log" >&2
import json, os, re, sys
name, rc = sys.argv[1:]
out, n = os.environ["OUT"], int(os.environ["KMEM_CONNS"])
def snap(p):
    t = open(os.path.join(out, p)).read()
    slab = {m.group(1): (int(m.group(2)), int(m.group(3)))  # active objects, object size
            for m in re.finditer(r"^(\S+)\s+(\d+)\s+\d+\s+(\d+)", t.split("# meminfo")[0], re.M)}
    mem = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", t, re.M)}
    tcp = re.search(r"^TCP: inuse (\d+) .* mem (\d+)", t, re.M)
    return slab, mem, (int(tcp.group(1)), int(tcp.group(2)))
(s0, m0, t0), (s1, m1, t1) = snap(name + "-before.txt"), snap(name + "-held.txt")
sockets = t1[0] - t0[0]
caches = {k: (s1[k][0] - s0[k][0]) * s1[k][1] for k in s1 if k in s0}
try:
    r = json.loads(open(os.path.join(out, name + ".json")).read())
    r = r["transports"][0] if "transports" in r else r
    rss = r.get("broker_rss_delta_per_conn_kib")
except (OSError, ValueError, KeyError):
    r, rss = None, None
rec = {"name": name, "loadgen_exit": int(rc), "conns": n, "tcp_sockets_added": sockets,
       "slab_kib_added": m1["Slab"] - m0["Slab"], "sunreclaim_kib_added": m1["SUnreclaim"] - m0["SUnreclaim"],
       "tcp_mem_pages_added": t1[1] - t0[1],
       "cache_bytes_added": caches, "node_rss_kib_per_conn": rss,
       "slab_kib_per_socket": (m1["Slab"] - m0["Slab"]) / sockets if sockets else None,
       "named_caches_kib_per_socket": {k: v / 1024 / sockets for k, v in caches.items()} if sockets else None}
with open(os.path.join(out, "kmem.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
top = sorted(rec["named_caches_kib_per_socket"].items(), key=lambda kv: -kv[1])[:6] if sockets else []
print(f"   {name}: {sockets} TCP sockets added for {n} connections; Slab +{rec['slab_kib_added']} KiB = "
      f"{rec['slab_kib_per_socket'] or 0:.2f} KiB per socket ({', '.join(f'{k} {v:.2f}' for k, v in top)}); "
      f"TCP buffer pages +{rec['tcp_mem_pages_added']}; node RSS {rss if rss is None else f'{rss:.2f}'} KiB per connection; loadgen exit {rc}")
PY
  sleep 1
}

sha() { sha256sum "$1" | cut -c1-12; }
{
  echo "# ringcast: one node against two nodes on one Redis"
  echo
  echo "- **Date:** $started_at"
  echo "- **Command:** \`$cmdline\`"
  echo "- **Node binary:** \`$RINGCAST\` (sha256 $(sha "$RINGCAST")), tree ${TREE:-not given}"
  echo "- **Loadgen:** \`$LOADGEN\` (sha256 $(sha "$LOADGEN"))"
  echo "- **Redis:** \`$REDIS_SERVER\` ($("$REDIS_SERVER" --version | sed 's/ sha=.*//')), flags \`--save '' --appendonly no${REDIS_FLAGS:+ $REDIS_FLAGS}\`, a fresh empty one per run"
  echo "- **Machine:** $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(uname -sr); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- **Settings:** DURATION=$DURATION REPEATS=$REPEATS SUBS=$SUBS RATE_P=$RATE_P PAYLOAD=$PAYLOAD PUBLISHERS=$PUBLISHERS WORKLOADS='$WORKLOADS' SETUPS='$SETUPS' BROKER_FLAGS='$BROKER_FLAGS' QUIET=$QUIET QUIET_WAIT=$QUIET_WAIT"
  echo "- **Pinning:** node(s) and Redis \`taskset -c $NODE_CPUS\` (each node \`--shards 1\`; a cluster node also has its Redis thread), loadgen \`taskset -c $LOADGEN_CORE\`"
  echo "- **Raw results:** \`$OUT/results.jsonl\` (one JSON line per run; per-run \`*.json\`, \`*.err\`, node logs, node \`/metrics\`, Redis \`INFO\` beside it)"
} >"$OUT/header.md"
cat "$OUT/header.md" >&2
echo >&2

for wl in $WORKLOADS; do
  workload_args "$wl" || { log "unknown workload $wl (known: a100 a200 b1000 b1000http b1000span p pspan)"; exit 2; }
  for ((r = 1; r <= REPEATS; r++)); do
    order=$SETUPS
    # Alternate which setup goes first.
    ((r % 2)) || order=$(echo "$SETUPS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
    for setup in $order; do
      case $setup in single | cluster) ;; *) log "unknown setup $setup"; exit 2 ;; esac
      # The span workloads only differ from theirs with two nodes.
      case $wl/$setup in *span/single) continue ;; esac
      log "== $wl round $r: $setup"
      run_one "$wl" "$setup" "$r"
    done
  done
done

if [ -n "$REDIS_MAX_NODES" ]; then
  : >"$OUT/redis-max.jsonl"
  # Rounds outside, K inside: drift in the machine hits every K alike.
  for ((r = 1; r <= REPEATS; r++)); do
    for k in $REDIS_MAX_NODES; do
      log "== Redis alone, $k subscribed connection(s) per topic, round $r"
      redis_max "$k" "$r"
    done
  done
fi

if [ "$KMEM_CONNS" -gt 0 ]; then
  : >"$OUT/kmem.jsonl"
  for ((r = 1; r <= REPEATS; r++)); do
    log "== $KMEM_CONNS idle connections: kernel memory per socket, round $r"
    kmem "$r"
  done
fi

elapsed=$((SECONDS - t0))
echo "- **Took:** $((elapsed / 60)) min $((elapsed % 60)) s" >>"$OUT/header.md"

python3 - <<'EOF' >"$OUT/table.md"
import json, os, statistics as st
out = os.environ["OUT"]
runs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
label = {"a100": "1 topic × 1,000 subs, 100 publishes/s",
         "a200": "1 topic × 1,000 subs, 200 publishes/s",
         "b1000": "100 topics × 10 subs, 1,000 publishes/s",
         "b1000http": "100 topics × 10 subs, 1,000 publishes/s, HTTP publishes",
         "b1000span": "100 topics × 10 subs, 1,000 publishes/s, every topic on both nodes",
         "p": f"1,000 topics × 1 sub, {int(os.environ['RATE_P']):,} publishes/s",
         "pspan": f"999 topics × 2 subs, {int(os.environ['RATE_P']):,} publishes/s, every topic on both nodes"}
def proc(r, name):
    return next((p for p in r["processes"] if p["name"] == name), None)
def metrics(rec):
    r = rec["report"]
    t = r["totals"]
    m = {"deliveries/s": r["deliveries_per_s"],
         "delivered %": 100 * t["delivered"] / t["expected"] if t["expected"] else float("nan"),
         "lost/dup/ooo": (t["lost"], t["duplicated"], t["out_of_order"]),
         "p50 ms": r["latency"]["p50_us"] / 1000, "p99 ms": r["latency"]["p99_us"] / 1000}
    nodes = [p for p in r["processes"] if p["broker"]]
    for i, p in enumerate(nodes):
        m[f"node{i} µs/del" if len(nodes) > 1 else "node µs/del"] = p["cpu_us_per_delivery"]
    red = proc(r, "redis")
    if red:
        m["redis µs/del"] = red["cpu_us_per_delivery"]
    m["cluster µs/del"] = r["cluster"]["cpu_us_per_delivery"]
    if red and r["published"]:
        m["redis µs/publish"] = red["cpu_seconds"] / r["published"] * 1e6
        ri = rec.get("redis_info") or {}
        if "used_cpu_s" in ri:
            m["redis µs/publish (INFO)"] = ri["used_cpu_s"] / r["published"] * 1e6
        if "idle_cpu_per_s" in ri:
            m["redis idle ms/s"] = ri["idle_cpu_per_s"] * 1000
            m["redis µs/publish, idle subtracted"] = (
                (red["cpu_seconds"] - ri["idle_cpu_per_s"] * r["window_s"]) / r["published"] * 1e6)
        ev = ri.get("evalsha")
        if ev and ev["calls"]:
            m["EVALSHA µs/call"] = ev["usec"] / ev["calls"]
        nm = rec.get("node_metrics") or []
        recv = sum(x.get("ringcast_redis_messages_received_total", 0) for x in nm)
        m["node copies/publish"] = recv / r["published"]
        m["drops/repairs"] = (int(sum(x.get("ringcast_redis_messages_dropped_total", 0) for x in nm)),
                              int(sum(x.get("ringcast_redis_repairs_total", 0) for x in nm)))
    m["core-0 cores"] = r["cluster"]["busy_percent"] / 100
    m["loadgen cores"] = r["loadgen"]["cpu_utilization"]
    m["other load"] = r["host"]["other_cores"]
    return m
fmt = {"deliveries/s": "{:,.0f}", "delivered %": "{:.2f}", "p50 ms": "{:.1f}", "p99 ms": "{:.1f}",
       "redis µs/publish": "{:.1f}", "redis µs/publish (INFO)": "{:.1f}", "redis idle ms/s": "{:.2f}",
       "redis µs/publish, idle subtracted": "{:.1f}", "EVALSHA µs/call": "{:.1f}",
       "node copies/publish": "{:.2f}", "core-0 cores": "{:.2f}", "loadgen cores": "{:.2f}",
       "other load": "{:.2f}"}
def f(k, v):
    if isinstance(v, tuple):
        return "/".join(str(x) for x in v)
    return fmt.get(k, "{:.3f}").format(v)
order = []
for r in runs:
    if (r["workload"], r["setup"]) not in order:
        order.append((r["workload"], r["setup"]))
# Summary: the mean over the completed rounds.
cols = ["deliveries/s", "delivered %", "lost/dup/ooo", "p50 ms", "p99 ms", "node µs/del",
        "node0 µs/del", "node1 µs/del", "redis µs/del", "cluster µs/del", "redis µs/publish",
        "core-0 cores", "loadgen cores", "other load"]
print("Means over the completed rounds (lost/dup/ooo: summed):")
print()
print("| workload | setup | rounds | " + " | ".join(cols) + " |")
print("|---|---|--:|" + "--:|" * len(cols))
detail = []
for wl, setup in order:
    rs = sorted((r for r in runs if r["workload"] == wl and r["setup"] == setup), key=lambda r: r["round"])
    ok = [r for r in rs if "error" not in r]
    ms = [metrics(r) for r in ok]
    cells = []
    for c in cols:
        vals = [m[c] for m in ms if c in m]
        if not vals:
            cells.append("–")
        elif isinstance(vals[0], tuple):
            cells.append("/".join(str(sum(v[i] for v in vals)) for i in range(len(vals[0]))))
        else:
            cells.append(f(c, st.mean(vals)))
    print(f"| {label.get(wl, wl)} | {setup} | {len(ok)}/{len(rs)} | " + " | ".join(cells) + " |")
    detail.append((wl, setup, rs, ms))
print()
print("Per round (` · ` between rounds, in round order):")
print()
print("| workload | setup | metric | rounds |")
print("|---|---|---|---|")
for wl, setup, rs, ms in detail:
    first = True
    for r in rs:
        if "error" in r:
            print(f"| {label.get(wl, wl)} | {setup} | round {r['round']} failed | {r['error'][:150].replace('|', '/')} |")
            first = False
    keys = []
    for m in ms:
        keys += [k for k in m if k not in keys]
    for k in keys:
        vals = " · ".join(f(k, m[k]) if k in m else "–" for m in ms)
        print(f"| {label.get(wl, wl) if first else ''} | {setup if first else ''} | {k} | {vals} |")
        first = False
print()
print("µs/del: a process's utime + stime (from /proc, 10 ms ticks) over the publish and drain window, divided by")
print("delivered messages; cluster = the sum of the watched processes (nodes, and Redis). redis µs/publish: Redis's")
print("CPU seconds over the same window / publishes; (INFO): Redis's own used_cpu_sys + used_cpu_user over the whole")
print("loadgen run (setup included); idle ms/s: Redis's CPU per second with both nodes connected and idle, before")
print("the run (subtracted over the window in \"idle subtracted\"). EVALSHA µs/call: Redis's commandstats (script time, without socket I/O).")
print("node copies/publish: messages the nodes received from Redis's channels per publish (the nodes a topic's")
print("subscribers are on). core-0 cores: the watched processes' CPU, all pinned to one core; near 1.00 that core")
print("was the limit. loadgen cores near 1.00: the load generator was. other load: CPU of other processes during the run.")
EOF

if [ -s "$OUT/redis-max.jsonl" ]; then
  python3 - <<'EOF' >>"$OUT/table.md"
import json, os
out = os.environ["OUT"]
rs = [json.loads(l) for l in open(os.path.join(out, "redis-max.jsonl")) if l.strip()]
print()
print("Redis alone: redis-benchmark runs the publish script as fast as it can; K subscriber connections")
print("(stand-ins for K nodes) on every channel. Redis cores near 1.00: Redis's core was the limit.")
print()
print("| K (nodes) | round | publishes/s | Redis cores | core busy beyond Redis (others, softirq) | Redis µs / publish | EVALSHA µs / call | exit |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in sorted(rs, key=lambda r: (r["nodes"], r["round"])):
    o = r.get("other_on_core")
    print(f"| {r['nodes']} | {r['round']} | {r['publishes_per_s'] or 0:,.0f} | {r['redis_busy']:.2f} | "
          f"{'–' if o is None else f'{o:.2f}'} | "
          f"{r['redis_us_per_publish'] or 0:.1f} | {r['evalsha_us_per_call'] or 0:.1f} | {r['exit']} |")
EOF
fi
if [ -s "$OUT/kmem.jsonl" ]; then
  python3 - <<'EOF' >>"$OUT/table.md"
import json, os
out = os.environ["OUT"]
rs = [json.loads(l) for l in open(os.path.join(out, "kmem.jsonl")) if l.strip()]
print()
print("Idle connections to one node: memory per connection (kernel: Slab growth while held, per TCP socket")
print("added; each connection is two sockets on this host, the node's and the loadgen's):")
print()
print("| round | connections | TCP sockets added | node RSS KiB / conn | kernel Slab KiB / socket | of which TCP | sock_inode_cache | dentry | filp | TCP buffer pages added |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in rs:
    c = r.get("named_caches_kib_per_socket") or {}
    f = lambda k: f"{c[k]:.2f}" if k in c else "–"
    rss = r.get("node_rss_kib_per_conn")
    print(f"| {r['name'].split('-')[-1]} | {r['conns']:,} | {r['tcp_sockets_added']:,} | "
          f"{'–' if rss is None else f'{rss:.2f}'} | {r['slab_kib_per_socket'] or 0:.2f} | {f('TCP')} | "
          f"{f('sock_inode_cache')} | {f('dentry')} | {f('filp')} | {r['tcp_mem_pages_added']} |")
EOF
fi
{
  cat "$OUT/header.md"
  echo
  cat "$OUT/table.md"
} >"$OUT/summary.md"
echo >&2
cat "$OUT/summary.md"
bad=$(python3 -c '
import json, os, sys
n = 0
for l in open(sys.argv[1]):
    r = json.loads(l)
    t = (r.get("report") or {}).get("totals") or {}
    if "error" in r or t.get("lost") or t.get("duplicated") or t.get("out_of_order") or t.get("delivered") != t.get("expected"):
        n += 1
for f, key in (("redis-max.jsonl", "exit"), ("kmem.jsonl", "loadgen_exit")):
    p = os.path.join(os.path.dirname(sys.argv[1]), f)
    if os.path.exists(p):
        n += sum(1 for l in open(p) if l.strip() and json.loads(l).get(key))
print(n)' "$OUT/results.jsonl")
if [ "$bad" -gt 0 ]; then
  log "$bad run(s) failed or were not perfect; see the table and $OUT/*.err"
  exit 1
fi
