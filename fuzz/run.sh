#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), one after the other, starting from the
# committed seeds (fuzz/seeds/TARGET, taken from real git request lines, Authorization headers,
# token secrets, git http-backend header blocks, git request header blocks, REST bodies and
# upstreams' redirects). New inputs go
# to fuzz/corpus/TARGET (not committed); a crash is written to fuzz/artifacts/TARGET and stops
# the script with an error. Each target's libFuzzer output is in fuzz/logs/TARGET.log; the
# script prints the executions.
#
# Stable toolchain: the default SANITIZER=none makes cargo-fuzz pass no -Z flag at all (only
# stable -C flags for SanitizerCoverage), so nightly is not needed. gitgate has no unsafe code
# of its own and the targets assert the invariants we care about, so panics and broken
# invariants are what we hunt; ASan adds little. SANITIZER=address needs -Zsanitizer, which a
# stable rustc accepts only with RUSTC_BOOTSTRAP=1; the script sets that in that case.
# Needs `cargo install cargo-fuzz` and a C++ compiler (libfuzzer-sys builds libFuzzer).
#
#   fuzz/run.sh 600                        # ten minutes per target
#   TARGETS="classify token" fuzz/run.sh 60
#   SANITIZER=address fuzz/run.sh 60
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
targets="${TARGETS:-classify credentials token cgi_head headers api_body location}"
sanitizer="${SANITIZER:-none}"
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
fi
mkdir -p fuzz/logs
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${seconds}s"
  if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1; then
    tail -n 40 "fuzz/logs/$t.log" >&2
    echo "fuzz target $t failed: see fuzz/logs/$t.log and fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E 'stat::number_of_executed_units' "fuzz/logs/$t.log" | sed "s/^/$t: /"
done
