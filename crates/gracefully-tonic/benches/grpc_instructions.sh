#!/usr/bin/env bash
# Instructions per gRPC unary call, gracefully-tonic against plain tonic, counted by
# callgrind (valgrind) rather than timed: the count does not depend on what else the machine
# is doing, so it is the steady figure behind `cargo bench --bench grpc_overhead`'s noisy µs.
#
#   crates/gracefully-tonic/benches/grpc_instructions.sh
#
# The bench binary runs one side alone (GRPC_ONLY=<side>: its server on a thread of the same
# process, the client on the main thread) under callgrind twice, with SHORT and LONG calls;
# the difference in instructions divided by the difference in calls is the marginal cost of
# one call, client and server together (start-up and the warm-up cancel out). Needs valgrind
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
cargo bench -q -p gracefully-tonic --bench grpc_overhead --no-run 2>/dev/null
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/grpc_overhead-* | grep -v '\.d$' | head -1)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

count() { # side calls -> instructions
    GRPC_ONLY=$1 GRPC_CALLS=$2 valgrind --tool=callgrind \
        --callgrind-out-file="$OUT/$1.$2" "$BIN" >/dev/null 2>&1
    awk '/^summary:/ {print $2}' "$OUT/$1.$2"
}

declare -A per_call
for side in tonic gracefully tonic-timeout gracefully-no-deadline grpc-server-plain-client; do
    i1=$(count "$side" "$SHORT")
    i2=$(count "$side" "$LONG")
    per_call[$side]=$(((i2 - i1) / (LONG - SHORT)))
    echo "$side: $SHORT calls $i1 instructions, $LONG calls $i2 instructions" >&2
done
awk -v t="${per_call[tonic]}" -v g="${per_call[gracefully]}" -v h="${per_call[tonic-timeout]}" \
    -v n="${per_call[gracefully-no-deadline]}" -v s="${per_call[grpc-server-plain-client]}" 'BEGIN {
    printf "grpc instructions per call: tonic %d, gracefully %d (%+.1f %%)\n", h, g, (g / h - 1) * 100
    printf "  (both with the same deadline: tonic Request::set_timeout, gracefully its token)\n"
    printf "  without a deadline: tonic %d, gracefully %d (%+.1f %%)\n", t, n, (n / t - 1) * 100
    printf "  gracefully with a deadline vs plain tonic without one: %+.1f %% (tonic with vs without: %+.1f %%)\n", (g / t - 1) * 100, (h / t - 1) * 100
    printf "  GrpcServer with a plain tonic client %d (%+.1f %%)\n", s, (s / t - 1) * 100
}'
