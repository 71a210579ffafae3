#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), one after the other, starting from the
# committed seeds (fuzz/seeds/TARGET, taken from real git request lines, Authorization headers,
# token secrets and git http-backend header blocks). New inputs go to fuzz/corpus/TARGET (not
# committed); a crash is written to fuzz/artifacts/TARGET and stops the script with an error.
#
# Works on a stable toolchain: `--sanitizer none` avoids -Zsanitizer (gitgate is safe Rust; the
# bugs we hunt are panics and broken invariants, which libFuzzer's coverage-guided search finds
# without ASan), and RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the few -Z flags it still needs.
# Needs `cargo install cargo-fuzz`.
#
#   fuzz/run.sh 600            # ten minutes per target
#   TARGETS="classify token" fuzz/run.sh 60
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
targets="${TARGETS:-classify credentials token cgi_head}"
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/logs
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${seconds}s"
  if ! cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1; then
    tail -n 40 "fuzz/logs/$t.log" >&2
    echo "fuzz target $t failed: see fuzz/logs/$t.log and fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E 'stat::number_of_executed_units' "fuzz/logs/$t.log" | sed "s/^/$t: /"
done
