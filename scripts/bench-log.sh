#!/usr/bin/env bash
# Embedded log benchmark: append throughput per fsync policy, replay, start-up, side by side
# with the disk's own synced write rate measured by dd in the same run.
# Env: DIR (disk to measure, default /tmp), RECORDS (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DIR:-/tmp}; records=${RECORDS:-1000000}
cargo build --release --quiet
pacer=target/release/pacer
export PACER_LOG=warn

echo "== the disk: dd with O_DSYNC in $dir"
f="$dir/pacer-bench-dd.$$"
for spec in "1M 512" "200 5000" "64k 2000"; do
  set -- $spec
  printf 'dd bs=%-4s oflag=dsync: ' "$1"
  dd if=/dev/zero of="$f" bs="$1" count="$2" oflag=dsync 2>&1 | tail -1 | sed 's/.*copied, //'
done
rm -f "$f"

echo "== pacer: fsync=always (one sync per append), 64 producers"
$pacer bench log --dir "$dir" --records 20000 --producers 64 --fsync always | grep -E '^append'
echo "== pacer: group commit and no fsync, 1024 producers (MQTT connections), 1 record per append"
$pacer bench log --dir "$dir" --records "$records" --producers 1024 --fsync batch,off
echo "== pacer: group commit, 64 producers appending 100 records per call (batched input: HTTP, Kafka-style clients)"
$pacer bench log --dir "$dir" --records "$((records * 2))" --producers 64 --batch 100 --fsync batch,off | grep -E '^append'
echo "== the disk again (its rate drifts on this shared machine)"
printf 'dd bs=1M  oflag=dsync: '
dd if=/dev/zero of="$f" bs=1M count=512 oflag=dsync 2>&1 | tail -1 | sed 's/.*copied, //'
rm -f "$f"
echo "== pacer: start-up with 10M records"
$pacer bench log --dir "$dir" --records 10000000 --producers 64 --batch 100 --fsync off | grep -E 'start-up|replay'
