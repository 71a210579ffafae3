#!/usr/bin/env bash
# An interleaved A/B of two gitgate builds on the big clone (benchmark 1a's set-up, gitgate in
# front of nginx + fcgiwrap + git http-backend): both builds run side by side, and each pair is
# one `git clone --bare` of the REPO_MB repository through each, the one that goes first
# alternating from pair to pair. Per clone: its time, and gitgate's CPU time over it from every
# thread's /proc/PID/task/TID/schedstat (nanoseconds: /proc/PID/stat's 10 ms ticks are a tenth
# of a clone's cost, too coarse for a change of a few per cent).
#
#   benches/ab_clone.sh NEW_BINARY OLD_BINARY [PAIRS=12]
#
# Uses `run.sh` with HOLD for nginx, fcgiwrap, the repository and the token (NO_BUILD=1: build
# both binaries first). Prints one line per pair, then the medians of the per-pair ratios.
set -euo pipefail
NEW=$1 OLD=$2 PAIRS=${3:-12}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/ab_common.sh
. "$HERE/ab_common.sh"
RUNS=0 BIG_MB=1 CONCURRENT=1 hold $((PAIRS * 2 * 40 + 300)) # generous: see ab.sh
TOKEN_URL=$(grep -o "^clone gitgate_http [^ ]*" "$HOLD_LOG" | awk '{print $3}')

read -r NEW_PORT NEW_PID < <(start_gitgate "$W/ab-clone-new" "$W/gg-http/gitgate.toml" "$NEW")
read -r OLD_PORT OLD_PID < <(start_gitgate "$W/ab-clone-old" "$W/gg-http/gitgate.toml" "$OLD")
PIDS+=("$NEW_PID" "$OLD_PID")
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{c += $1} END {printf "%.0f", c}'; }
clone() { # port pid -> "seconds cpu_ms client_cpu_ms"
	local url c0 c1 t0 t1 client
	url=$(sed "s/127.0.0.1:[0-9]*/127.0.0.1:$1/" <<<"$TOKEN_URL")
	c0=$(cpu_ns "$2")
	t0=$(date +%s.%N)
	# The git client's own CPU (git, git-remote-http, index-pack: user + system), which shares
	# the two cores with the hop: what gitgate hands it (how many chunks, how big) is its cost too.
	/usr/bin/time -f "%U %S" -o "$W/ab-clone.time" git clone -q --bare "$url" "$W/ab-clone"
	t1=$(date +%s.%N)
	c1=$(cpu_ns "$2")
	rm -rf "$W/ab-clone"
	client=$(awk '{printf "%.0f", ($1 + $2) * 1000}' "$W/ab-clone.time")
	awk -v a="$t0" -v b="$t1" -v c="$c0" -v d="$c1" -v e="$client" 'BEGIN {printf "%.3f %.1f %d", b - a, (d - c) / 1e6, e}'
}
git clone -q --bare "$(sed "s/127.0.0.1:[0-9]*/127.0.0.1:$NEW_PORT/" <<<"$TOKEN_URL")" "$W/ab-clone" && rm -rf "$W/ab-clone" # page cache
for ((i = 1; i <= PAIRS; i++)); do
	if ((i % 2)); then
		n=$(clone "$NEW_PORT" "$NEW_PID")
		o=$(clone "$OLD_PORT" "$OLD_PID")
	else
		o=$(clone "$OLD_PORT" "$OLD_PID")
		n=$(clone "$NEW_PORT" "$NEW_PID")
	fi
	echo "pair $i new $n old $o"
done | tee "$W/ab-clone.txt"
# "pair I new SECONDS CPU_MS CLIENT_MS old SECONDS CPU_MS CLIENT_MS"
awk '{t[NR] = $4 / $8; c[NR] = $5 / $9; g[NR] = $6 / $10; tf += ($4 < $8); cl += ($5 < $9); gl += ($6 < $10)}
	function median(a, n,   i, j, x) {
		for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {printf "new/old, median of the pairs: time %.3f (new faster in %d of %d), CPU %.3f (new lower in %d of %d), the git client'"'"'s CPU %.3f (new lower in %d of %d)\n", median(t, NR), tf, NR, median(c, NR), cl, NR, median(g, NR), gl, NR}' "$W/ab-clone.txt"
