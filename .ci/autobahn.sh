#!/usr/bin/env bash
# Autobahn|Testsuite conformance run (fuzzingclient, cases 1.* .. 10.*) for CI.
#
#   .ci/autobahn.sh URL OUTDIR        e.g. .ci/autobahn.sh ws://127.0.0.1:9001/echo ci-out/autobahn
#   .ci/autobahn.sh --install-only    just install/verify wstest (e.g. a CI cache step)
#
# The WebSocket server under test must already be running (this script does not
# start it) and must echo text and binary messages back on URL.
#
# Self-installing: wstest needs Python 2.7 (pyenv's 2.7.18); the pinned deps in
# .ci/autobahn/requirements-py27.txt are pip-installed with --target into
# $AUTOBAHN_DIR (default ~/.cache/ringcast-autobahn), reused while the pins are
# unchanged and the install still imports.
#
# Output in OUTDIR: index.html / index.json + per-case reports (keep as CI
# artifacts), wstest.log, fuzzingclient.spec.json, expected-cases.json.
# Exit: 0 all cases ran and none FAILED/UNIMPLEMENTED; 1 conformance failure,
# missing cases or wstest crash/timeout; 2 usage/setup error (install failed,
# server not reachable).
#
# Environment knobs (all optional):
#   AUTOBAHN_DIR      install dir               (default ~/.cache/ringcast-autobahn)
#   AUTOBAHN_PY27     python2.7 interpreter     (default $(pyenv root)/versions/2.7.18/bin/python)
#   AUTOBAHN_TIMEOUT  wall-clock cap for wstest, seconds (default 1500)
#   AUTOBAHN_WAIT     seconds to wait for the server's TCP port (default 30)
#   AUTOBAHN_CASES    comma list overriding the case patterns, e.g. "1.*,2.*"
#   AUTOBAHN_EXCLUDE  comma list of case patterns to exclude, e.g. "9.*" or "9.1.6,9.2.6"
#   AUTOBAHN_MIN_CASES sanity floor on cases run (default 290 for the default set, else 1)
#   AUTOBAHN_FAIL_ON  behaviors that fail the run (default FAILED,UNIMPLEMENTED)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CFG="$HERE/autobahn"
REQS="$CFG/requirements-py27.txt"
SPEC_TEMPLATE="$CFG/fuzzingclient.json"
CHECKER="$CFG/check_report.py"

AUTOBAHN_DIR="${AUTOBAHN_DIR:-$HOME/.cache/ringcast-autobahn}"
AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-1500}"
AUTOBAHN_WAIT="${AUTOBAHN_WAIT:-30}"
AUTOBAHN_FAIL_ON="${AUTOBAHN_FAIL_ON:-FAILED,UNIMPLEMENTED}"

log() { echo "[autobahn] $*"; }
die() { echo "[autobahn] ERROR: $*" >&2; exit 2; }

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

INSTALL_ONLY=0
if [ "${1:-}" = "--install-only" ]; then
  INSTALL_ONLY=1
elif [ $# -ne 2 ]; then
  usage
fi

# --------------------------------------------------------------- python 2.7
find_py27() {
  if [ -n "${AUTOBAHN_PY27:-}" ]; then echo "$AUTOBAHN_PY27"; return; fi
  local root=""
  if command -v pyenv >/dev/null 2>&1; then root="$(pyenv root 2>/dev/null || true)"; fi
  [ -n "$root" ] || root="${PYENV_ROOT:-$HOME/.pyenv}"
  echo "$root/versions/2.7.18/bin/python"
}
PY27="$(find_py27)"
[ -x "$PY27" ] || die "Python 2.7 interpreter not found at $PY27 (set AUTOBAHN_PY27)"
"$PY27" -c 'import sys; assert sys.version_info[:2] == (2, 7)' \
  || die "$PY27 is not Python 2.7"
command -v python3 >/dev/null 2>&1 || die "python3 not found (needed for the report checker)"

# ------------------------------------------------------------------ install
# Import check of an install dir: everything wstest needs, including the C
# speedups and the epoll reactor (a broken zope namespace silently degrades it).
probe() {
  PYTHONPATH="$1" "$PY27" -W ignore -c '
import zope.interface, twisted, autobahn, autobahntestsuite, wsaccel, ujson, OpenSSL
from twisted.internet import epollreactor
from autobahntestsuite import fuzzing, wstest
assert autobahn.version == "0.10.9", autobahn.version
' >/dev/null 2>&1
}

# pip --target does not process *-nspkg.pth files and PYTHONPATH entries are not
# site dirs, so setuptools namespace packages (zope.*) would not import. Give
# each such namespace a pkgutil-style __init__.py instead.
fix_namespaces() {
  "$PY27" - "$1" <<'PYEOF'
import glob, os, re, sys
d = sys.argv[1]
for pth in glob.glob(os.path.join(d, "*-nspkg.pth")):
    for line in open(pth):
        m = re.search(r"\*\(([^)]*)\)", line)
        if not m:
            continue
        parts = [p.strip().strip("'\"") for p in m.group(1).split(",") if p.strip()]
        pkg = os.path.join(d, *parts)
        init = os.path.join(pkg, "__init__.py")
        if os.path.isdir(pkg) and not os.path.exists(init):
            with open(init, "w") as f:
                f.write("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
PYEOF
}

install_autobahn() {
  local want have="" tmp
  want="$(sha256sum "$REQS" | cut -d' ' -f1)"
  mkdir -p "$(dirname "$AUTOBAHN_DIR")"
  exec 9>"$AUTOBAHN_DIR.lock"
  flock -w 900 9 || die "could not lock $AUTOBAHN_DIR.lock"
  [ -f "$AUTOBAHN_DIR/.ringcast-reqs.sha256" ] && have="$(cat "$AUTOBAHN_DIR/.ringcast-reqs.sha256")"
  if [ "$have" = "$want" ] && probe "$AUTOBAHN_DIR"; then
    log "wstest already installed in $AUTOBAHN_DIR"
  else
    log "installing autobahntestsuite (pinned, python 2.7) into $AUTOBAHN_DIR ..."
    tmp="$AUTOBAHN_DIR.tmp.$$"
    rm -rf "$tmp"
    if ! timeout 900 "$PY27" -m pip install --disable-pip-version-check --no-warn-script-location \
          --target "$tmp" -r "$REQS" >"$tmp.pip.log" 2>&1; then
      tail -n 40 "$tmp.pip.log" >&2
      rm -rf "$tmp"
      die "pip install failed (full log: $tmp.pip.log)"
    fi
    fix_namespaces "$tmp"
    if ! probe "$tmp"; then
      PYTHONPATH="$tmp" "$PY27" -c 'from autobahntestsuite import fuzzing, wstest; from twisted.internet import epollreactor' >&2 || true
      die "installed wstest does not import (dir kept: $tmp)"
    fi
    echo "$want" >"$tmp/.ringcast-reqs.sha256"
    rm -rf "$AUTOBAHN_DIR" "$tmp.pip.log"
    mv "$tmp" "$AUTOBAHN_DIR"
    # moved: re-check from the final location
    probe "$AUTOBAHN_DIR" || die "install in $AUTOBAHN_DIR does not import after move"
    log "installed."
  fi
  flock -u 9
}

install_autobahn
if [ "$INSTALL_ONLY" = 1 ]; then exit 0; fi

# ---------------------------------------------------------------- arguments
URL="$1"
OUTDIR="$2"
case "$URL" in
  ws://*|wss://*) ;;
  *) die "URL must start with ws:// or wss:// (got '$URL')" ;;
esac
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SPEC="$OUTDIR/fuzzingclient.spec.json"
EXPECTED="$OUTDIR/expected-cases.json"
WSLOG="$OUTDIR/wstest.log"

# Stale reports must never be mistaken for this run's.
rm -f "$OUTDIR/index.json" "$OUTDIR/index.html" "$OUTDIR"/*_case_*.json "$OUTDIR"/*_case_*.html \
      "$SPEC" "$EXPECTED" "$WSLOG"

# ------------------------------------------------------------ write the spec
python3 - "$SPEC_TEMPLATE" "$SPEC" "$URL" "$OUTDIR" <<'PYEOF'
import json, os, sys
tpl, out, url, outdir = sys.argv[1:5]
spec = json.load(open(tpl))
spec.pop("_comment", None)
spec["outdir"] = outdir
spec["servers"][0]["url"] = url
split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
if os.environ.get("AUTOBAHN_CASES"):
    spec["cases"] = split(os.environ["AUTOBAHN_CASES"])
if os.environ.get("AUTOBAHN_EXCLUDE"):
    spec["exclude-cases"] = spec.get("exclude-cases", []) + split(os.environ["AUTOBAHN_EXCLUDE"])
with open(out, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PYEOF

# The exact case list wstest will run, resolved by wstest's own code.
PYTHONPATH="$AUTOBAHN_DIR" "$PY27" -W ignore - "$SPEC" "$EXPECTED" <<'PYEOF'
import json, sys
from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories, CaseBasename, CaseSetname
from autobahntestsuite.caseset import CaseSet
spec = json.load(open(sys.argv[1]))
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
ids = cs.parseSpecCases(spec)
json.dump(ids, open(sys.argv[2], "w"))
PYEOF
N_EXPECTED="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$EXPECTED")"
if [ -z "${AUTOBAHN_MIN_CASES:-}" ]; then
  if [ -z "${AUTOBAHN_CASES:-}${AUTOBAHN_EXCLUDE:-}" ]; then AUTOBAHN_MIN_CASES=290; else AUTOBAHN_MIN_CASES=1; fi
fi
[ "$N_EXPECTED" -ge "$AUTOBAHN_MIN_CASES" ] \
  || die "spec resolves to only $N_EXPECTED cases (< $AUTOBAHN_MIN_CASES); check $SPEC"

# ------------------------------------------------------- wait for the server
python3 - "$URL" "$AUTOBAHN_WAIT" <<'PYEOF' || die "server at $URL is not accepting TCP connections (start it first)"
import socket, sys, time
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
port = u.port or (443 if u.scheme == "wss" else 80)
deadline = time.time() + float(sys.argv[2])
while True:
    try:
        socket.create_connection((u.hostname, port), timeout=2).close()
        sys.exit(0)
    except OSError:
        if time.time() > deadline:
            sys.exit(1)
        time.sleep(0.5)
PYEOF

# ------------------------------------------------------------------ run wstest
# Condensed live progress for the CI log: one line per case group, plus errors.
progress() {
  local line id grp last="" n=0
  while IFS= read -r line; do
    case "$line" in
      "Running test case ID "*)
        n=$((n + 1)); id="${line#Running test case ID }"; id="${id%% *}"; grp="${id%%.*}"
        if [ "$grp" != "$last" ]; then
          printf '[autobahn] %4ds  case group %s.* (case %d)\n' "$(( $(date +%s) - START ))" "$grp" "$n"
          last="$grp"
        fi ;;
      *Traceback*|*rror*|*"failed ("*) echo "[wstest] $line" ;;
    esac
  done
}

log "running $N_EXPECTED cases against $URL (cap ${AUTOBAHN_TIMEOUT}s; full log: $WSLOG)"
START=$(date +%s)
set +e
( cd "$OUTDIR" && exec timeout --kill-after=30 "$AUTOBAHN_TIMEOUT" \
    env PYTHONPATH="$AUTOBAHN_DIR" PYTHONUNBUFFERED=1 \
    "$PY27" -W ignore "$AUTOBAHN_DIR/bin/wstest" -m fuzzingclient -s "$SPEC" ) 2>&1 \
  | tee "$WSLOG" \
  | progress
WSTEST_RC=${PIPESTATUS[0]}
set -e
ELAPSED=$(( $(date +%s) - START ))
log "wstest exited $WSTEST_RC after ${ELAPSED}s"
if [ "$WSTEST_RC" -eq 124 ] || [ "$WSTEST_RC" -eq 137 ]; then
  log "wstest TIMED OUT after ${AUTOBAHN_TIMEOUT}s; last cases started:"
  grep '^Running test case ID' "$WSLOG" | tail -n 3 >&2 || true
elif [ "$WSTEST_RC" -ne 0 ]; then
  log "wstest failed; tail of $WSLOG:"
  tail -n 40 "$WSLOG" >&2
fi

# ------------------------------------------------------------------ verdict
set +e
python3 "$CHECKER" "$OUTDIR" --expected "$EXPECTED" --min-cases "$AUTOBAHN_MIN_CASES" \
  --fail-on "$AUTOBAHN_FAIL_ON"
CHECK_RC=$?
set -e
[ -f "$OUTDIR/index.html" ] && log "HTML report: $OUTDIR/index.html"
if [ "$CHECK_RC" -ne 0 ] || [ "$WSTEST_RC" -ne 0 ]; then exit 1; fi
exit 0
