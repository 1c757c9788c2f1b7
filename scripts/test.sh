#!/usr/bin/env bash
# Runs every test ringcast has: format and lint, unit + property + end-to-end
# + interop tests, the demo page in headless Chromium, the Autobahn|Testsuite
# conformance run against /echo, and the fuzz-corpus replay (plus a short
# live fuzz run when FUZZ_SECONDS > 0).
# Installs what the tests need (Python `websockets`, playwright-core from npm
# for the browser test, the Autobahn suite). The browser is Debian's
# chromium (/usr/bin/chromium, or $CHROMIUM); .ci/run installs it. The
# cluster-mode tests start Debian's redis-server (on PATH, or
# $REDIS_SERVER); .ci/run installs that too.
#
#   scripts/test.sh                 # everything, fuzz replay only
#   FUZZ_SECONDS=20 scripts/test.sh # plus 20 s of libFuzzer per target
#
# Reports (Autobahn HTML + index.json, the demo page's screenshots) go to
# ${OUT:-target/test-reports}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/test-reports}
FUZZ_SECONDS=${FUZZ_SECONDS:-0}
mkdir -p "$OUT"

step() { printf '\n=== %s\n' "$*"; }

step "python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "minimum Rust version (Cargo.toml's rust-version against Cargo.lock)"
scripts/check-msrv.sh

step "crate layers (cargo tree)"
scripts/check-layers.sh

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release (the binaries under test)"
cargo build --release -p ringcast -p ringcast-loadgen

step "cargo test --workspace (unit, property, end-to-end, interop)"
RINGCAST_BIN="$PWD/target/release/ringcast" cargo test --workspace

step "demo page in headless Chromium (playwright-core, Debian chromium)"
# playwright-core never downloads a browser; the variable makes sure no
# other package of the lock file tries either.
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
RINGCAST_BIN="$PWD/target/release/ringcast" OUT="$OUT" node --test tests/browser/demo.test.mjs

# autobahn NAME BROKER-FLAGS...: Autobahn 1.* - 10.* against /echo of a
# broker started with those flags; reports in $OUT/NAME, its log in
# $OUT/NAME-broker.log. Fails the run if a case fails or the broker does
# not exit 0 on SIGTERM.
autobahn() {
  local name=$1 port broker status=0
  shift
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ./target/release/ringcast --listen "127.0.0.1:$port" "$@" >"$OUT/$name-broker.log" 2>&1 &
  broker=$!
  trap "kill $broker 2>/dev/null || true" EXIT
  for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  .ci/autobahn.sh "ws://127.0.0.1:$port/echo" "$OUT/$name" || status=$?
  kill -TERM $broker
  wait $broker || { echo "broker ($*) exited non-zero after SIGTERM"; status=1; }
  trap - EXIT
  [ $status -eq 0 ] || exit $status
}

step "Autobahn|Testsuite 1.* - 10.* against /echo"
autobahn autobahn --shards 2

step "fuzz targets (corpus replay${FUZZ_SECONDS:+, ${FUZZ_SECONDS}s live per target})"
fuzz/run.sh "$FUZZ_SECONDS"

step "all tests passed"
