#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60) on its corpus, with
# cargo-fuzz on the nightly toolchain. New inputs found go to a scratch corpus, not the repository;
# a crash leaves its input in fuzz/artifacts/<target>/: copy it into fuzz/corpus/<target>/ with
# the fix, and tests/fuzz_corpus.rs replays it on stable from then on.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly); nothing run"
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(ls fuzz/fuzz_targets | sed 's/\.rs$//'))
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd fuzz && cargo +nightly fuzz build)
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  # The scratch corpus first (written to), the repository's seeds second (only read).
  out=$(cd fuzz && cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 2>&1) || { echo "$out" | tail -40; echo "fuzz: $t FAILED"; exit 1; }
  runs=$(echo "$out" | grep -oE 'Done [0-9]+ runs' | tail -1 | grep -oE '[0-9]+' || echo "?")
  echo "fuzz: $t: $runs executions in ${seconds} s, no crash"
done
