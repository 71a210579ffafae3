#!/usr/bin/env bash
# An interleaved A/B of two gitgate builds on the hop (benchmark 2's set-up), for changes too
# small for `run.sh --hop`'s rounds: one fresh gitgate at a time, wrk for SECONDS, the order of
# the two builds alternating from pair to pair, one token and then 300 tokens in turn; per run
# the request rate, p99 and gitgate's CPU time per request (from /proc, user + system).
#
#   benches/ab.sh NEW_BINARY OLD_BINARY [PAIRS=5] [SECONDS=8]
#
# MODES chooses the loads, in this order within a pair (default "one many"): `one` a valid
# token, `many` 300 tokens in turn, `bad` benchmark 3's wrong token (401s).
#
# Uses `run.sh --hop` with HOLD for nginx, the repository and the tokens (NO_BUILD=1: build
# both binaries first). Prints one line per run on stdout.
set -euo pipefail
NEW=$1 OLD=$2 PAIRS=${3:-5} SECS=${4:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
read -ra MODE_LIST <<<"${MODES:-one many}"
# shellcheck source=benches/ab_common.sh
. "$HERE/ab_common.sh"
# Generous: the set-up's end is what stops a run still going (at 20:47 on 2026-12-06 a run
# took 15 s for its 8 s of load, with its start and stop, and the last run of 6 pairs found its
# gitgate gone), and the exit ends the hold at once however long it was.
hold $((PAIRS * 2 * ${#MODE_LIST[@]} * (SECS + 15) + 300)) --hop
AUTH=$(grep -o "auth='[^']*'" "$HOLD_LOG" | cut -d"'" -f2)
HOP="/team/app.git/info/refs?service=git-upload-pack"
# run.sh's wrong token for benchmark 3.
# A well-formed token of an id the store does not hold: refused after the hash and the lookup.
BAD_AUTH="Basic $(printf 'ci:%s' "$(python3 "$HERE/wrong-token.py")" | base64 -w0)"

run() { # name binary one|many
	local dir=$W/ab-$1 port pid
	read -r port pid < <(start_gitgate "$dir" "$W/gg-hop/gitgate.toml" "$2")
	PIDS+=("$pid")
	if [[ $3 == bad ]]; then
		wrk -t2 -c64 -d"${SECS}s" --latency -H "Authorization: $BAD_AUTH" "http://127.0.0.1:$port$HOP" >"$dir/wrk"
	elif [[ $3 == many ]]; then
		wrk -t2 -c64 -d"${SECS}s" --latency -s "$W/many.lua" "http://127.0.0.1:$port$HOP" >"$dir/wrk"
	else
		wrk -t2 -c64 -d"${SECS}s" --latency -H "Authorization: $AUTH" "http://127.0.0.1:$port$HOP" >"$dir/wrk"
	fi
	local ticks requests
	ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
	requests=$(awk '/requests in/ {print $1}' "$dir/wrk")
	stop_gitgate "$pid"
	echo "$1 $3 req/s=$(awk '/^Requests\/sec/ {print $2}' "$dir/wrk") p99=$(awk '$1 == "99%" {print $2}' "$dir/wrk")" \
		"cpu_us_per_request=$(awk -v t="$ticks" -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')" \
		"non_2xx=$(grep -c Non-2xx "$dir/wrk" || true)"
}
for ((i = 1; i <= PAIRS; i++)); do
	for mode in "${MODE_LIST[@]}"; do
		if ((i % 2)); then
			run "new$i" "$NEW" $mode
			run "old$i" "$OLD" $mode
		else
			run "old$i" "$OLD" $mode
			run "new$i" "$NEW" $mode
		fi
	done
done
