#!/usr/bin/env bash
# Instructions per call: `send` through the behaviours against the direct handler call,
# counted by callgrind (valgrind) rather than timed, so the figure does not depend on what
# else the machine is doing — the steady companion of `cargo bench --bench send`.
#
#   crates/gracefully-mediator/benches/send_instructions.sh
#
# Each case of benches/send.rs runs under callgrind twice (SEND_BENCH_CASE, SEND_BENCH_CALLS:
# the bench binary then makes that many calls of that case and skips criterion), with SHORT
# and LONG calls; the difference in instructions divided by the difference in calls is the
# cost of one call (start-up cancels out). Needs valgrind (installed from Debian's packages
# if missing). Environment: SHORT and LONG (default 20000 and 120000).
set -euo pipefail
cd "$(dirname "$0")/../../.."

SHORT=${SHORT:-20000}
LONG=${LONG:-120000}

if ! command -v valgrind >/dev/null; then
    echo "installing valgrind" >&2
    (apt-get install -y -qq valgrind || (apt-get update -qq && apt-get install -y -qq valgrind)) >/dev/null
fi
BIN=$(cargo bench -q -p gracefully-mediator --bench send --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "send":
        print(m["executable"])')
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

instructions() { # case calls -> total instructions
    SEND_BENCH_CASE="$1" SEND_BENCH_CALLS="$2" \
        valgrind --tool=callgrind --callgrind-out-file="$OUT/cg" "$BIN" >/dev/null 2>&1
    callgrind_annotate "$OUT/cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

per_call() { # case -> instructions per call
    local short long
    short=$(instructions "$1" "$SHORT")
    long=$(instructions "$1" "$LONG")
    echo $(((long - short) / (LONG - SHORT)))
}

direct=$(per_call "handler called directly")
echo "handler called directly: $direct instructions per call"
for case in "send, no behaviours" "send, logging" "send, timeout" \
    "send, timeout, the caller's deadline sooner" "send, retry" "send, validation" \
    "send, logging + timeout + retry" "Sender::send, logging + timeout + retry"; do
    n=$(per_call "$case")
    echo "$case: $n instructions per call, added $((n - direct))"
done
for case in "core: child_with_timeout create + drop" "core: Instant::now"; do
    echo "$case: $(per_call "$case") instructions per call"
done
direct_info=$(per_call "handler called directly, subscriber at INFO")
n=$(per_call "send, logging + timeout + retry, subscriber at INFO")
echo "send, logging + timeout + retry, subscriber at INFO: $n instructions per call, added $((n - direct_info))"
