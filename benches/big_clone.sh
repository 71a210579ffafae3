#!/usr/bin/env bash
# One very large clone through gitgate's embedded CGI backend: does the pack stream, or does
# gitgate's memory grow with it? Prints the bytes served, the seconds each took and gitgate's
# peak RSS (VmHWM), and, for scale only, `git upload-pack` writing the same pack to /dev/null.
#
#   benches/big_clone.sh              10 GiB (10,240 random 1 MiB blobs), two clones
#   MB=1024 ROUNDS=3 benches/big_clone.sh
#
# Needs: git, curl, python3, cargo, about 2 × MB of free disk in TMPDIR (the repository is made
# once by `git fast-import` without compression: ~7 minutes for 10 GiB on two cores). Runs on
# 127.0.0.1; stops gitgate and removes its folder on exit (KEEP=1 keeps the folder).
set -euo pipefail

MB=${MB:-10240}
ROUNDS=${ROUNDS:-2}
HERE=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/gitgate-big-clone.XXXXXX")
GG_PID=
cleanup() {
	[[ -n "$GG_PID" ]] && kill "$GG_PID" 2>/dev/null && wait "$GG_PID" 2>/dev/null
	[[ -n "${KEEP:-}" ]] || rm -rf "$W"
}
trap cleanup EXIT
log() { echo "big_clone: $*" >&2; }

[[ -n "${NO_BUILD:-}" ]] || (cd "$HERE" && cargo build --release -q)
B=$HERE/target/release/gitgate

log "generating $MB MiB of random blobs in $W (fast-import, no compression)"
mkdir -p "$W/repos/team"
git init -q --bare "$W/repos/team/big.git"
python3 - "$MB" <<'EOF' | git -c core.compression=0 -c pack.compression=0 --git-dir="$W/repos/team/big.git" fast-import --quiet
import os, sys
n, out, mb = int(sys.argv[1]), sys.stdout.buffer, 1 << 20
for i in range(n):
    out.write(b"blob\nmark :%d\ndata %d\n" % (i + 1, mb))
    out.write(os.urandom(mb))
    out.write(b"\n")
out.write(b"commit refs/heads/main\ncommitter b <b@example.com> 1700000000 +0000\ndata 4\nbig\n")
for i in range(n):
    out.write(b"M 100644 :%d d%03d/f%05d\n" % (i + 1, i // 1000, i))
out.write(b"\n")
EOF

cat >"$W/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[store]
path = "$W/gitgate.db"
[upstream]
cgi = "$(git --exec-path)/git-http-backend"
project_root = "$W/repos"
EOF
"$B" --config "$W/proxy.toml" user add bench --password-stdin <<<pw >/dev/null 2>&1
"$B" --config "$W/proxy.toml" grant add bench team read >/dev/null 2>&1
TOKEN=$(printf 'pw\n' | "$B" --config "$W/proxy.toml" token create --user bench --name big \
	--permission REPO_READ --password-stdin --json 2>/dev/null |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$B" --config "$W/proxy.toml" serve 2>"$W/gitgate.log" &
GG_PID=$!
PORT=
for _ in $(seq 100); do
	PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$W/gitgate.log" | grep -o '[0-9]*$' || true)
	[[ -n "$PORT" ]] && break
	sleep 0.1
done
[[ -n "$PORT" ]] || { log "gitgate did not start:"; cat "$W/gitgate.log" >&2; exit 1; }

# A protocol-v0 fetch of everything: one want, no capabilities, done.
printf '0032want %s\n00000009done\n' "$(git --git-dir="$W/repos/team/big.git" rev-parse main)" >"$W/req"
echo "| round | bytes | through gitgate (s) | upload-pack to /dev/null (s) | gitgate peak RSS (MiB) |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
	got=$(curl -sS -X POST -H 'Content-Type: application/x-git-upload-pack-request' \
		--data-binary @"$W/req" -u "bench:$TOKEN" -o /dev/null \
		-w '%{http_code} %{size_download} %{time_total}' \
		"http://127.0.0.1:$PORT/team/big.git/git-upload-pack")
	read -r code bytes secs <<<"$got"
	[[ "$code" == 200 ]] || { log "round $round: HTTP $code"; exit 1; }
	start=$(date +%s.%N)
	git upload-pack --stateless-rpc "$W/repos/team/big.git" <"$W/req" 2>/dev/null >/dev/null
	pipe=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e - s}')
	hwm=$(awk '/VmHWM/{printf "%.1f", $2 / 1024}' "/proc/$GG_PID/status")
	echo "| $round | $bytes | $(printf '%.1f' "$secs") | $pipe | $hwm |"
done
