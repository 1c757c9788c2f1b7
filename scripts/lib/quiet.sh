# Waiting for a quiet machine before a measured run; sourced by the bench
# scripts (loadgen/bench.sh, scripts/bench-*.sh). The machine may be
# shared: a run measured against someone else's compile is noise.
#
# The caller sets QUIET (busy cores below which the machine counts as
# quiet) and QUIET_WAIT (seconds to wait at most; 0: do not wait), and
# may define quiet_log (how to say it gave up; default: echo).

# Machine-wide busy cores over 3 s (from /proc/stat).
busy_cores() {
  local a b
  a=$(head -n 1 /proc/stat)
  sleep 3
  b=$(head -n 1 /proc/stat)
  awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN {
    split(a, x); split(b, y);
    busy = (y[2]+y[3]+y[4]+y[7]+y[8]) - (x[2]+x[3]+x[4]+x[7]+x[8]);
    tot = 0; for (i = 2; i <= 9; i++) tot += y[i] - x[i];
    printf "%.2f", busy / tot * n }'
}

# Waits until fewer than QUIET cores are busy, or QUIET_WAIT seconds
# passed; leaves the last reading in quiet_before ("" if it did not wait).
quiet_before=
wait_quiet() {
  local waited=0 b
  quiet_before=
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  while :; do
    b=$(busy_cores)
    quiet_before=$b
    if awk -v b="$b" -v q="$QUIET" 'BEGIN { exit !(b < q) }'; then return 0; fi
    if [ "$waited" -ge "$QUIET_WAIT" ]; then
      "${quiet_log:-echo}" "   machine still busy ($b cores) after ${waited}s; measuring anyway"
      return 0
    fi
    waited=$((waited + 3))
  done
}
