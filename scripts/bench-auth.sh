#!/usr/bin/env bash
# What access control costs: the same broker binary with `--auth jwt`
# against `--auth none`, driven by the same loadgen, in one run. It is
# scripts/bench-before-after.sh with BEFORE = AFTER = the one binary:
# side "none" runs `--auth none` with anonymous clients, side "jwt" runs
# `--auth jwt --jwt-secret-file F` and every loadgen connection presents
# `--token T` (subscribers and publishers: `?token=` on the upgrade URL).
# The sides alternate (none, jwt, then jwt, none, ...), a fresh broker for
# every run.
#
#   scripts/bench-auth.sh [BROKER [LOADGEN]]
#
# BROKER defaults to target/release/ringcast, LOADGEN to the
# ringcast-loadgen beside it (it must know --token), e.g.
#   cargo build --release -p ringcast -p ringcast-loadgen
#   REPEATS=3 DURATION=8s CONNS=10000 scripts/bench-auth.sh
#
# F is a fresh random 32-byte secret (64 hex digits) in $OUT/jwt.secret;
# T is an HS256 token (PyJWT if python3 can import it, else the standard
# library's hmac) with claims sub "ringcast-loadgen", iat now, exp now +
# TOKEN_TTL, subscribe ["lg.>"] and publish ["lg.>"] (the loadgen's topics
# are lg.<random>.<i>). The token is not written into the reports.
#
# Scenarios (SCENARIOS, default "c a1 b1"; see bench-before-after.sh):
#   c   CONNS idle subscribed WebSocket connections: handshakes/s, broker
#       CPU and RSS per connection (the upgrade is where a token is verified)
#   a1  fan-out 1 topic x 1,000 subscribers at RATE_A msg/s, --shards 1
#   b1  fan-out 100 topics x 10 subscribers at RATE_B msg/s, --shards 1
#       (the publish check runs once per publish: 10,000/s here)
#   a2, b2  the same fan-outs with --shards 2
#
# Environment: everything bench-before-after.sh takes (OUT defaults to
# /tmp/bench-auth here and must not contain spaces; DURATION, REPEATS,
# RATE_A, RATE_B, CONNS, QUIET_WAIT, BROKER_FLAGS ...), plus
#   TOKEN_TTL [3600]  seconds until the token expires: a run longer than
#                     that sees its connections closed with 4401
#   TREE [git rev-parse --short HEAD]  the tree the binary was built from
# Exit status: bench-before-after.sh's.
set -euo pipefail

case ${1:-} in
-h | --help)
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
  ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
BROKER=${1:-${BROKER:-target/release/ringcast}}
LOADGEN=${2:-${LOADGEN:-$(dirname "$BROKER")/ringcast-loadgen}}
for b in "$BROKER" "$LOADGEN"; do
  [ -x "$b" ] || { echo "not an executable file: $b" >&2; exit 2; }
done
if ! "$LOADGEN" help 2>&1 | grep -q -- '--token'; then
  echo "$LOADGEN has no --token option (build this tree's loadgen)" >&2
  exit 2
fi

export OUT=${OUT:-/tmp/bench-auth}
case $OUT in *[[:space:]]*) echo "OUT must not contain spaces: $OUT" >&2; exit 2 ;; esac
TOKEN_TTL=${TOKEN_TTL:-3600}
mkdir -p "$OUT"
secret=$OUT/jwt.secret
(umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$secret")

token=$(python3 - "$secret" "$TOKEN_TTL" <<'EOF'
import base64, hashlib, hmac, json, sys, time
secret = open(sys.argv[1], "rb").read().strip()
now = int(time.time())
claims = {"sub": "ringcast-loadgen", "iat": now, "exp": now + int(sys.argv[2]),
          "subscribe": ["lg.>"], "publish": ["lg.>"]}
try:
    import jwt  # PyJWT
    print(jwt.encode(claims, secret, algorithm="HS256"))
except ImportError:
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + \
        b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, signing, hashlib.sha256).digest()
    print((signing + b"." + b64(sig)).decode())
EOF
)

tree=${TREE:-$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)}
export BEFORE_NAME=none AFTER_NAME=jwt
export BEFORE_TREE=$tree AFTER_TREE=$tree
export BEFORE_FLAGS="--auth none"
export AFTER_FLAGS="--auth jwt --jwt-secret-file $secret"
export BEFORE_LOADGEN_FLAGS=""
export AFTER_LOADGEN_FLAGS="--token $token"
export SCENARIOS=${SCENARIOS:-"c a1 b1"}
echo "token: HS256, sub ringcast-loadgen, subscribe/publish lg.>, expires in ${TOKEN_TTL}s;" \
  "secret in $secret" >&2
inner=$(printf '%q ' "$here/bench-before-after.sh" "$BROKER" "$BROKER" "$LOADGEN")
BENCH_COMMAND="$(printf '%q ' "$0" "$@")(runs ${inner% })"
export BENCH_COMMAND
exec "$here/bench-before-after.sh" "$BROKER" "$BROKER" "$LOADGEN"
