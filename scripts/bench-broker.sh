#!/usr/bin/env bash
# Broker benchmark: QoS 1 publish throughput and PUBLISH→PUBACK latency of Pacer (log fsync
# batch, and fsync off) against mosquitto on this machine, with the same load generator
# (`pacer bench publish`, rumqttc clients), rounds interleaved so noise hits all alike.
# Prints every run and the median per broker. Env: RUNS, CLIENTS, MESSAGES, PAYLOAD.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}; clients=${CLIENTS:-4}; messages=${MESSAGES:-25000}; payload=${PAYLOAD:-200}

command -v mosquitto >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }
cargo build --release --quiet
pacer=target/release/pacer
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

printf 'listener 18831 127.0.0.1\nallow_anonymous true\n' > "$tmp/mosquitto.conf"
mosquitto -c "$tmp/mosquitto.conf" 2>"$tmp/mosquitto.log" &
"$pacer" up --data-dir "$tmp/batch" --fsync batch --mqtt-listen 127.0.0.1:18832 --http-listen 127.0.0.1:0 >"$tmp/batch.out" 2>&1 &
"$pacer" up --data-dir "$tmp/off" --fsync off --mqtt-listen 127.0.0.1:18833 --http-listen 127.0.0.1:0 >"$tmp/off.out" 2>&1 &
for port in 18831 18832 18833; do
  for _ in $(seq 100); do mosquitto_pub -p $port -t ready -m 1 2>/dev/null && break; sleep 0.1; done
done

echo "$(nproc) cores; $clients clients x $messages messages of $payload bytes, QoS 1, inflight 100; $runs rounds"
for round in $(seq "$runs"); do
  for target in mosquitto:18831 pacer-fsync-batch:18832 pacer-fsync-off:18833; do
    name=${target%%:*}; port=${target##*:}
    line=$("$pacer" bench publish --port "$port" --clients "$clients" --messages "$messages" --payload-bytes "$payload")
    echo "round $round $name: $line"
    echo "$line" | sed -E 's/.* ([0-9]+) msg\/s.*p50 ([0-9.]+) ms, p99 ([0-9.]+) ms.*/\1 \2 \3/' >> "$tmp/$name.txt"
  done
done
echo
printf '%-20s %12s %10s %10s\n' broker "msg/s" "p50 ms" "p99 ms"
for name in mosquitto pacer-fsync-batch pacer-fsync-off; do
  median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  rate=$(cut -d' ' -f1 "$tmp/$name.txt" | median)
  p50=$(cut -d' ' -f2 "$tmp/$name.txt" | median)
  p99=$(cut -d' ' -f3 "$tmp/$name.txt" | median)
  printf '%-20s %12s %10s %10s\n' "$name" "$rate" "$p50" "$p99"
done
