#!/usr/bin/env bash
# Instructions per outbound call, gracefully-reqwest against plain reqwest, counted by
# callgrind (valgrind) rather than timed: the count does not depend on what else the machine
# is doing, so it is the steady figure behind `cargo bench --bench outbound`'s noisy µs.
#
#   crates/gracefully-reqwest/benches/outbound_instructions.sh
#
# The bench binary runs one side alone (OUTBOUND_ONLY=<side>, a loopback hyper server on a
# thread of the same process) under callgrind twice, with SHORT and LONG calls; the
# difference in instructions divided by the difference in calls is the marginal cost of one
# call, client and server together (start-up and the warm-up cancel out). Needs valgrind
# (installed from Debian's packages if missing).
#
# Environment: SHORT and LONG numbers of calls (default 1000 and 3000).
set -euo pipefail
cd "$(dirname "$0")/../../.."

SHORT=${SHORT:-1000}
LONG=${LONG:-3000}

if ! command -v valgrind >/dev/null; then
    echo "installing valgrind" >&2
    (apt-get install -y -qq valgrind || (apt-get update -qq && apt-get install -y -qq valgrind)) >/dev/null
fi
cargo bench -q -p gracefully-reqwest --bench outbound --no-run 2>/dev/null
BIN=$(ls -t target/release/deps/outbound-* | grep -v '\.d$' | head -1)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

count() { # side calls -> instructions
    OUTBOUND_ONLY=$1 OUTBOUND_CALLS=$2 valgrind --tool=callgrind \
        --callgrind-out-file="$OUT/$1.$2" "$BIN" >/dev/null 2>&1
    awk '/^summary:/ {print $2}' "$OUT/$1.$2"
}

declare -A per_call
for side in reqwest gracefully reqwest-header gracefully-no-deadline gracefully-request-timeout; do
    i1=$(count "$side" "$SHORT")
    i2=$(count "$side" "$LONG")
    per_call[$side]=$(((i2 - i1) / (LONG - SHORT)))
    echo "$side: $SHORT calls $i1 instructions, $LONG calls $i2 instructions" >&2
done
awk -v r="${per_call[reqwest]}" -v g="${per_call[gracefully]}" -v h="${per_call[reqwest-header]}" \
    -v n="${per_call[gracefully-no-deadline]}" -v t="${per_call[gracefully-request-timeout]}" 'BEGIN {
    printf "outbound instructions per call: reqwest %d, gracefully %d (%+.1f %%)\n", r, g, (g / r - 1) * 100
    printf "  reqwest sending the same header by hand %d (gracefully vs that: %+.1f %%)\n", h, (g / h - 1) * 100
    printf "  gracefully, token without deadline %d (%+.1f %%)\n", n, (n / r - 1) * 100
    printf "  gracefully with set_request_timeout(true) %d (%+.1f %%)\n", t, (t / r - 1) * 100
}'
