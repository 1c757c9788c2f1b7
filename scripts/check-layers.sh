#!/usr/bin/env bash
# The layering the crates promise (docs/architecture.md), checked on the
# resolved dependency graph: the sans-I/O crates pull in no runtime,
# socket or CLI crate, and nothing but the tests depends on the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
forbidden='^(tokio|tokio-uring|mio|socket2|io-uring|clap|signal-hook|tracing-subscriber|mimalloc)$'
for crate in ringcast-proto ringcast-core; do
  bad=$(cargo tree --locked -p "$crate" -e normal --prefix none --format '{p}' |
    awk '{print $1}' | sort -u | grep -E "$forbidden" || true)
  if [ -n "$bad" ]; then
    echo "$crate depends on: $bad"
    status=1
  fi
done
for crate in ringcast-loadgen ringcast-bench; do
  if cargo tree --locked -p "$crate" -e normal --prefix none --format '{p}' |
    awk '{print $1}' | grep -qx ringcast; then
    echo "$crate depends on the broker crate"
    status=1
  fi
done
if (cd fuzz && cargo tree --locked -e normal --prefix none --format '{p}') |
  awk '{print $1}' | grep -qx ringcast; then
  echo "ringcast-fuzz depends on the broker crate"
  status=1
fi
[ $status -eq 0 ] && echo "layers: proto and core are sans-I/O; loadgen, bench and fuzz do not link the broker"
exit $status
