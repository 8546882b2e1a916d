#!/usr/bin/env bash
# Profile the peer's core (CPU 0) during one window of the tls-ws bench, and sort the
# samples into cost categories (perf/tools/cpu_categories.py).
# Usage: perf/tools/profile_window.sh PEER CASE OUT_DIR
#   PEER: epoll, uring or haproxy; CASE: cycles or msgs_N (N connections in ping-pong).
# Writes OUT_DIR/PEER-CASE.{data,log,categories}. Needs `perf` (Debian linux-perf) and a
# release build (`cargo build --release`). Analysis only: no test or bench depends on it.
set -euo pipefail
[[ $# -eq 3 ]] || { echo "usage: $0 epoll|uring|haproxy cycles|msgs_N OUT_DIR" >&2; exit 2; }
peer=$1 case=$2 out=$3
here=$(cd "$(dirname "$0")/../.." && pwd)
command -v perf >/dev/null || { echo "$0: needs perf (apt-get install linux-perf)" >&2; exit 2; }
[[ -x $here/target/release/tls-ws-bench ]] || { echo "$0: run cargo build --release first" >&2; exit 2; }
mkdir -p "$out"
log="$out/$peer-$case.log"
clients=100
[[ $case == msgs_* ]] && clients=${case#msgs_}
"$here/target/release/tls-ws-bench" --peers "$peer" --clients "$clients" --seconds 14 --rounds 1 \
    --out-dir "$out/bench-$peer-$case" >"$log" 2>&1 &
bench=$!
wait_for() {
    until grep -q -- "$1" "$log"; do
        sleep 0.2
        kill -0 $bench 2>/dev/null || { cat "$log"; exit 1; }
    done
}
if [[ $case == cycles ]]; then
    wait_for "connection cycles"
    sleep 4
else
    # The ping-pong window follows the cycles window and the connection set-up.
    wait_for " cycles "
    sleep $((2 + clients / 500))
fi
perf record -q -g -C 0 -F 999 -o "$out/$peer-$case.data" -- sleep 6 2>/dev/null
wait $bench
rate=$(grep -E "^ +.* $case +[0-9]" "$log" | awk '{for (i=1;i<=NF;i++) if ($i ~ /\/s$/) {sub("/s","",$i); print $i; exit}}')
grep -E "^ +.* $case +[0-9]" "$log" | tee "$out/$peer-$case.categories"
perf script -i "$out/$peer-$case.data" 2>/dev/null | "$here/perf/tools/cpu_categories.py" --per-second "$rate" \
    | tee -a "$out/$peer-$case.categories"
