# The start every bench script shares; sourced by scripts/bench-*.sh.
#
# bench_out_init WHO: a fresh OUT (results.jsonl, progress.log), `log`
# (stderr and progress.log), the caller's RINGCAST_* variables unset (a
# RINGCAST_* variable or RINGCAST_CONFIG file would configure the
# measured processes, WHO, behind the script's back), and the soft
# descriptor limit raised to the hard one (each connection needs one).

log() { echo "$*" | tee -a "$OUT/progress.log" >&2; }

bench_out_init() {
  local v
  mkdir -p "$OUT"
  : >"$OUT/results.jsonl"
  : >"$OUT/progress.log"
  while read -r v; do
    log "unsetting $v for the $1"
    unset "$v"
  done < <(env | sed -n 's/^\(RINGCAST_[A-Z0-9_]*\)=.*/\1/p')
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}
