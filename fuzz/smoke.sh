#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) on the stable toolchain,
# without a sanitizer (panics and aborts are found), starting from the
# committed seeds and the target's dictionary. New inputs go to a scratch
# corpus under target/; a crash stops the run with the input's path and
# exits 1. Usage: fuzz/smoke.sh [SECONDS] [TARGET...]
# XENCODE_FUZZ_SEED=N fixes libFuzzer's seed (CI does, so a run replays);
# unset, every run explores differently.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^xencode-fuzz$')
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install --locked cargo-fuzz"; exit 1; }
cargo fuzz build -s none
total=0
for t in "${targets[@]}"; do
  corpus=target/corpus/$t
  mkdir -p "$corpus" regressions/"$t"
  log=target/smoke-$t.log
  if ! cargo fuzz run -s none "$t" "$corpus" seeds/"$t" -- \
      -max_total_time="$secs" -dict=dict/"$t".dict -max_len=65536 \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      ${XENCODE_FUZZ_SEED:+-seed="$XENCODE_FUZZ_SEED"} >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $t crashed: replay with"
    echo "  cargo fuzz run -s none $t $(ls -t artifacts/"$t"/* | head -1)"
    echo "then fix it and keep the input in fuzz/regressions/$t/ (node/src/fuzzing/tests.rs replays it)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  total=$((total + ${runs:-0}))
  printf '%-20s %10s runs in %ss, corpus %s inputs, no crash\n' "$t" "${runs:-?}" "$secs" "$(ls "$corpus" | wc -l)"
done
echo "all ${#targets[@]} targets: $total runs, no crash"
