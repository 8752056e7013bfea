#!/usr/bin/env bash
# HTTP overhead of gracefully-axum against plain `axum::serve`.
#
#   crates/gracefully-axum/benches/http_overhead.sh
#
# The same hello-world handler behind `axum::serve` and behind gracefully's HttpServer with
# a TimeoutLayer and a DisconnectPolicyLayer wrapping the router (examples/hello.rs), under
# the same load from `wrk` (installed from Debian's packages if missing). The server runs
# on CPU 0 with one tokio worker, wrk on CPU 1 with one thread. Each round runs axum,
# gracefully, and gracefully with the layers applied per route (`Router::layer`), back to
# back (the order alternating between rounds), so drift (other load on the machine) hits all
# three; the medians are compared, and so are the rounds pair by pair. A fourth run per round
# serves with the operations registry on (`gracefully-operations`: every request recorded); its ratio to plain axum is the registry's target (≥ 0.97).
#
# Environment: ROUNDS (default 9), DURATION seconds per run (default 5), CONNECTIONS (64).
set -euo pipefail
cd "$(dirname "$0")/../../.."

ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    (apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null
fi
cargo build --release -q -p gracefully-axum --example hello
BIN=${CARGO_TARGET_DIR:-target}/release/examples/hello
CPUS=$(nproc)
pin_server=(); pin_load=()
if [ "$CPUS" -ge 2 ] && command -v taskset >/dev/null; then
    pin_server=(taskset -c 0); pin_load=(taskset -c 1)
fi

run() { # mode port -> requests per second
    local mode=$1 port=$2 pid rps
    "${pin_server[@]}" "$BIN" "$mode" "$port" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
    rps=$("${pin_load[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$port/" |
        awk '/Requests\/sec/ {print $2}')
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$rps"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

axum_runs=(); graceful_runs=(); route_runs=(); ops_runs=(); paired=(); ops_paired=()
for round in $(seq 1 "$ROUNDS"); do
    # Alternate the order so neither server always runs first in a round.
    if [ $((round % 2)) -eq 1 ]; then
        a=$(run axum 18080); g=$(run gracefully 18081); r=$(run gracefully-route-layers 18082)
        o=$(run gracefully-operations 18083)
    else
        o=$(run gracefully-operations 18083)
        r=$(run gracefully-route-layers 18082); g=$(run gracefully 18081); a=$(run axum 18080)
    fi
    axum_runs+=("$a"); graceful_runs+=("$g"); route_runs+=("$r"); ops_runs+=("$o")
    paired+=("$(awk -v g="$g" -v a="$a" 'BEGIN {print g / a}')")
    ops_paired+=("$(awk -v o="$o" -v a="$a" 'BEGIN {print o / a}')")
    echo "round $round: axum $a req/s, gracefully $g req/s, gracefully (Router::layer) $r req/s, with operations $o req/s" >&2
done
axum_median=$(printf '%s\n' "${axum_runs[@]}" | median)
graceful_median=$(printf '%s\n' "${graceful_runs[@]}" | median)
route_median=$(printf '%s\n' "${route_runs[@]}" | median)
ops_median=$(printf '%s\n' "${ops_runs[@]}" | median)
ratio() { awk -v g="$1" -v a="$2" 'BEGIN {printf "%.3f", g / a}'; }
printf 'http overhead: axum %.0f req/s, gracefully %.0f req/s, ratio %s\n' \
    "$axum_median" "$graceful_median" "$(ratio "$graceful_median" "$axum_median")"
printf '  (same layers through Router::layer, which re-boxes every route: %.0f req/s, ratio %s)\n' \
    "$route_median" "$(ratio "$route_median" "$axum_median")"
# Rounds run back to back, so a round's two runs share the machine's state: the median of
# the per-round ratios cancels drift that the ratio of medians does not.
sorted=$(printf '%s\n' "${paired[@]}" | sort -g)
quartile() { echo "$sorted" | awk -v q="$1" '{a[NR]=$1} END {printf "%.3f", a[int((NR-1)*q/4)+1]}'; }
printf '  (median of the per-round ratios: %s; middle half of rounds %s to %s)\n' \
    "$(quartile 2)" "$(quartile 1)" "$(quartile 3)"
ops_sorted=$(printf '%s\n' "${ops_paired[@]}" | sort -g)
printf 'with the operations registry: %.0f req/s, ratio to axum %s (target >= 0.97), to gracefully without it %s\n' \
    "$ops_median" "$(ratio "$ops_median" "$axum_median")" "$(ratio "$ops_median" "$graceful_median")"
printf '  (median of the per-round ratios to axum: %s)\n' \
    "$(echo "$ops_sorted" | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR-1)/2)+1]}')"
