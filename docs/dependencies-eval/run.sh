#!/bin/bash
# docs/dependencies.md's measurement: a clean release build of the baseline, then each library
# feature built on a copy of that target directory; stripped sizes, crate counts, one run each.
set -u
cd "$(dirname "$0")"
D="$PWD"
export CARGO_TARGET_DIR="$D/target"
rm -rf target
t0=$(date +%s.%N); cargo build --release 2>&1 | tail -1; t1=$(date +%s.%N)
echo "baseline clean build s: $(echo "$t1 - $t0" | bc)"
cp target/release/libeval "$D/bin-baseline"
for f in governor prost kube; do
  cp -a target "target-$f"
  t0=$(date +%s.%N); CARGO_TARGET_DIR="$D/target-$f" cargo build --release --features "$f" 2>&1 | tail -1; t1=$(date +%s.%N)
  echo "$f added build s: $(echo "$t1 - $t0" | bc)"
  echo "$f crates: $(cargo tree --features "$f" -e normal --prefix none 2>/dev/null | sort -u | wc -l) vs baseline $(cargo tree -e normal --prefix none 2>/dev/null | sort -u | wc -l)"
  cp "target-$f/release/libeval" "$D/bin-$f"
  rm -rf "target-$f"
done
for b in baseline governor prost kube; do strip "$D/bin-$b"; echo "$b: $(stat -c %s "$D/bin-$b") bytes stripped; $("$D/bin-$b")"; done
