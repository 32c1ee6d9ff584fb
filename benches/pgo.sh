#!/bin/sh
# A profile-guided build of regtally (issue 27's lever), reproducible:
#
#   benches/pgo.sh            # prints the path of the optimized binary at the end
#
# 1. builds the release binary instrumented (-Cprofile-generate), in target/pgo-gen;
# 2. trains it on logs of the benchmark's own generator (benches/gen_logs.rs, fixed seeds),
#    under target/pgo-train: plain files, gzip files, envelopes and pretty-printed bodies, an
#    archive over a million repositories, a run that spills (--memory-limit), one with
#    --events and one with --state, so that no path of a nightly run is left cold;
# 3. merges the profiles with llvm-profdata of rustc's own LLVM major version (`rustc -vV`
#    names it; on Debian `apt install llvm-NN` gives llvm-profdata-NN);
# 4. builds the release binary with the profile (-Cprofile-use), in target/pgo-use.
#
# Both builds compile every crate again (their flags differ from the plain build's): about
# twice a cold release build.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=$(command -v "llvm-profdata-$llvm" || true)
if [ -z "$profdata" ]; then
    echo "pgo.sh: llvm-profdata-$llvm not found (rustc uses LLVM $llvm)" >&2
    exit 2
fi
data="$root/target/pgo-data"
train="$root/target/pgo-train"
rm -rf "$data"
RUSTFLAGS="-Cprofile-generate=$data" CARGO_TARGET_DIR=target/pgo-gen \
    cargo build --release --quiet --bin regtally
# Build scripts and procedural macros ran instrumented too: only the training's profiles count.
rm -rf "$data"
cargo build --release --quiet --example gen_logs
gen="$root/target/release/examples/gen_logs"
bin="$root/target/pgo-gen/release/regtally"
if [ ! -e "$train/done" ]; then
    rm -rf "$train"
    "$gen" "$train/plain" 1000000 8 --seed 1
    "$gen" "$train/gzip" 200000 4 --gzip --seed 2
    "$gen" "$train/envelopes" 100000 2 --envelopes --seed 3
    "$gen" "$train/bodies" 50000 2 --bodies --seed 4
    "$gen" "$train/repositories" 500000 4 --repositories 1000000 --seed 5
    touch "$train/done"
fi
out="$train/out"
for archive in plain gzip envelopes bodies repositories; do
    rm -rf "$out"
    "$bin" run "$train/$archive" -o "$out" --quiet --max-bad-ratio 1 >/dev/null
done
rm -rf "$out" "$train/events"
"$bin" run "$train/plain" -o "$out" --quiet --memory-limit 64M >/dev/null
rm -rf "$out"
"$bin" run "$train/repositories" -o "$out" --quiet --events "$train/events" >/dev/null
rm -rf "$out" "$train/state"
"$bin" run "$train/gzip" -o "$out" --quiet --state "$train/state" >/dev/null
"$profdata" merge -o "$data/merged.profdata" "$data"
RUSTFLAGS="-Cprofile-use=$data/merged.profdata" CARGO_TARGET_DIR=target/pgo-use \
    cargo build --release --quiet --bin regtally
echo "$root/target/pgo-use/release/regtally"
