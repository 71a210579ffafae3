# What benches/ab.sh and benches/ab_clone.sh share (sourced, not run): run.sh's set-up held in
# the background for the A/B, and a fresh gitgate of one build started on one of its
# configurations. The caller sets HERE (the benches folder) and `set -euo pipefail`.

# Processes of the caller's own that the exit stops too (the A/B's gitgates).
PIDS=()

# hold SECONDS [run.sh arguments]: run.sh's set-up (NO_BUILD=1, so both builds are built
# first) kept up for SECONDS in the background, with run.sh's own variables taken from the
# environment. Returns once it is up, with HOLDER its pid, HOLD_LOG its log (its ports, URLs
# and token) and W its folder. At the caller's exit, PIDS are stopped and the holder's HOLD
# `sleep` ended, which lets run.sh stop its nginx and fcgiwrap and remove its folder (a
# signal to the holder itself would cut that clean-up short).
hold() {
	local seconds=$1
	shift
	HOLD_LOG=$(mktemp /tmp/gitgate-ab.XXXXXX)
	NO_BUILD=1 HOLD=$seconds "$HERE/run.sh" "$@" >/dev/null 2>"$HOLD_LOG" &
	HOLDER=$!
	trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
		pkill -x -P $HOLDER sleep || true; wait $HOLDER 2>/dev/null || true; rm -f "$HOLD_LOG"' EXIT
	until grep -q "^proxy=" "$HOLD_LOG"; do
		kill -0 $HOLDER 2>/dev/null || { cat "$HOLD_LOG" >&2; exit 1; }
		sleep 1
	done
	W=$(grep -o "dir=[^ ]*" "$HOLD_LOG" | cut -d= -f2)
}

# start_gitgate DIR CONFIG BINARY: a gitgate of BINARY on a copy of CONFIG (one of run.sh's
# gitgate.toml) in DIR, logging to DIR/log as run.sh's do (request lines and audit lines off);
# prints "PORT PID" once it listens.
start_gitgate() {
	local dir=$1 i=0
	mkdir -p "$dir"
	cp "$2" "$dir/gitgate.toml"
	# Emptied here, before the start: a folder used before (ab.sh's `new4` for each of its
	# modes) holds the last run's "listening on", which the wait below could read before the
	# new process truncates its log, and take the stopped gitgate's port for the new one's.
	: >"$dir/log"
	GITGATE_LOG=warn,gitgate=info,gitgate::request=warn,gitgate::audit=warn \
		"$3" --config "$dir/gitgate.toml" serve >/dev/null 2>"$dir/log" &
	local pid=$!
	until grep -q 'listening on' "$dir/log"; do
		i=$((i + 1))
		((i < 200)) || { cat "$dir/log" >&2; exit 1; }
		sleep 0.05
	done
	echo "$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$dir/log" | head -1 | sed 's/.*://') $pid"
}

# stop_gitgate PID: stop one started by start_gitgate, and wait until it is gone, so that the
# next run does not share the cores with its exit.
stop_gitgate() {
	kill "$1" 2>/dev/null || true
	while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}
