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
LOG=$(mktemp /tmp/gitgate-ab.XXXXXX)
read -ra MODE_LIST <<<"${MODES:-one many}"
NO_BUILD=1 HOLD=$((PAIRS * 2 * ${#MODE_LIST[@]} * (SECS + 3) + 120)) "$HERE/run.sh" --hop >/dev/null 2>"$LOG" &
HOLDER=$!
# run.sh stops its nginx, fcgiwrap and temporary folder on its own exit.
# Ending the holder's HOLD `sleep` lets it exit and stop everything it started (a signal to
# the holder itself would cut that clean-up short).
trap 'pkill -x -P $HOLDER sleep || true; wait $HOLDER 2>/dev/null || true; rm -f "$LOG"' EXIT
until grep -q "^proxy=" "$LOG"; do
	kill -0 $HOLDER 2>/dev/null || { cat "$LOG" >&2; exit 1; }
	sleep 1
done
W=$(grep -o "dir=[^ ]*" "$LOG" | cut -d= -f2)
AUTH=$(grep -o "auth='[^']*'" "$LOG" | cut -d"'" -f2)
HOP="/team/app.git/info/refs?service=git-upload-pack"
# run.sh's wrong token for benchmark 3.
# A well-formed token of an id the store does not hold: refused after the hash and the lookup.
BAD_AUTH="Basic $(printf 'ci:%s' "$(python3 "$HERE/wrong-token.py")" | base64 -w0)"

run() { # name binary one|many
	local dir=$W/ab-$1 i=0
	mkdir -p "$dir"
	cp "$W/gg-hop/gitgate.toml" "$dir/gitgate.toml"
	GITGATE_LOG=warn,gitgate=info,gitgate::request=warn,gitgate::audit=warn \
		"$2" --config "$dir/gitgate.toml" serve 2>"$dir/log" &
	local pid=$!
	until grep -q 'listening on' "$dir/log"; do
		i=$((i + 1))
		((i < 200)) || { cat "$dir/log" >&2; exit 1; }
		sleep 0.05
	done
	local port
	port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$dir/log" | sed 's/.*://')
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
	kill "$pid"
	wait "$pid" 2>/dev/null || true
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
