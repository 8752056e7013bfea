#!/usr/bin/env bash
# Instructions per request, gracefully-axum against plain `axum::serve`, counted by
# callgrind (valgrind) rather than timed: the count does not depend on what else the machine
# is doing, so it is the steady figure behind http_overhead.sh's noisy requests/second.
#
#   crates/gracefully-axum/benches/http_instructions.sh
#
# Each server (examples/hello.rs: axum, gracefully, and gracefully with the operations
# registry on) runs under callgrind twice, loaded by `wrk` for a short
# and a long time; the difference in instructions divided by the difference in requests is
# the marginal cost of one request (start-up and shutdown cancel out). Needs valgrind and
# wrk (both installed from Debian's packages if missing).
#
# Environment: SHORT and LONG seconds of load (default 3 and 9), CONNECTIONS (default 8).
set -euo pipefail
cd "$(dirname "$0")/../../.."

SHORT=${SHORT:-3}
LONG=${LONG:-9}
CONNECTIONS=${CONNECTIONS:-8}

for tool in valgrind wrk; do
    if ! command -v "$tool" >/dev/null; then
        echo "installing $tool" >&2
        (apt-get install -y -qq "$tool" || (apt-get update -qq && apt-get install -y -qq "$tool")) >/dev/null
    fi
done
cargo build --release -q -p gracefully-axum --example hello
BIN=${CARGO_TARGET_DIR:-target}/release/examples/hello
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

measure() { # mode port seconds -> "requests instructions"
    local mode=$1 port=$2 seconds=$3 pid requests total
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$mode.$seconds" "$BIN" "$mode" "$port" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    requests=$(wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
    kill -TERM "$pid"
    wait "$pid" || true
    total=$(callgrind_annotate "$OUT/$mode.$seconds" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$requests $total"
}

declare -A per_request
for mode in axum gracefully gracefully-operations; do
    read -r r1 i1 < <(measure "$mode" 18190 "$SHORT")
    read -r r2 i2 < <(measure "$mode" 18191 "$LONG")
    per_request[$mode]=$(((i2 - i1) / (r2 - r1)))
    echo "$mode: ${SHORT}s: $r1 requests, $i1 instructions; ${LONG}s: $r2 requests, $i2 instructions" >&2
done
awk -v a="${per_request[axum]}" -v g="${per_request[gracefully]}" \
    'BEGIN {printf "http instructions per request: axum %d, gracefully %d (%+.1f %%)\n", a, g, (g / a - 1) * 100}'
# The operations registry on (every request recorded): its cost per request, and the
# throughput ratio it implies against axum if time followed instructions.
awk -v a="${per_request[axum]}" -v g="${per_request[gracefully]}" -v o="${per_request[gracefully-operations]}" \
    'BEGIN {printf "with the operations registry: %d instructions per request (%+d over gracefully without it; %+.1f %% over axum; implied ratio to axum %.3f, target >= 0.97)\n", o, o - g, (o / a - 1) * 100, a / o}'
