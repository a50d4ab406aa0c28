#!/usr/bin/env bash
# Broker benchmark: Pacer against mosquitto on this machine, same load generator (`pacer
# bench`, rumqttc clients), rounds interleaved so noise hits both alike. Pacer runs with its
# default ingest rules, so every message is also appended to the log (fsync batch: durable
# before PUBACK). Prints every run and the median per case and broker.
# Env: RUNS (default 5), MESSAGES (per publisher, default 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
runs=${RUNS:-5}; messages=${MESSAGES:-50000}

command -v mosquitto >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }
bench_setup

printf 'listener 18831 127.0.0.1\nallow_anonymous true\n' > "$tmp/mosquitto.conf"
mosquitto -c "$tmp/mosquitto.conf" 2>"$tmp/mosquitto.log" &
PACER_LOG=warn "$pacer" up --data-dir "$tmp/pacer" --mqtt-listen 127.0.0.1:18832 --http-listen 127.0.0.1:0 --osmand-listen "" >"$tmp/pacer.out" 2>&1 &
wait_for_mqtt 18831; wait_for_mqtt 18832

cases=(
  "publish-qos1-4clients|publish --clients 4 --messages $messages --qos 1"
  "publish-qos0-1client|publish --clients 1 --messages $((messages * 2)) --qos 0"
  "pubsub-qos0-1to1|pubsub --messages $messages --qos 0"
  "pubsub-qos1-1to1|pubsub --messages $messages --qos 1"
)
echo "$(nproc) cores, $(mosquitto -h 2>/dev/null | head -1), $runs rounds, 200-206 byte payloads"
for round in $(seq "$runs"); do
  for case in "${cases[@]}"; do
    name=${case%%|*}; args=${case#*|}
    for broker in mosquitto:18831 pacer:18832; do
      line=$("$pacer" bench $args --port "${broker##*:}" 2>/dev/null | tail -1)
      echo "round $round $name ${broker%%:*}: $line"
      rate=$(echo "$line" | grep -oE '[0-9]+ msg/s' | head -1 | cut -d' ' -f1 || true)
      p50=$(echo "$line" | grep -oE 'p50 [0-9.]+' | cut -d' ' -f2 || true)
      echo "$rate ${p50:-0}" >> "$tmp/$name.${broker%%:*}"
    done
  done
done
echo
printf '%-24s %12s %12s %8s %12s %12s\n' case "mosquitto/s" "pacer/s" ratio "mosq p50ms" "pacer p50ms"
for case in "${cases[@]}"; do
  name=${case%%|*}
  m=$(cut -d' ' -f1 "$tmp/$name.mosquitto" | median); p=$(cut -d' ' -f1 "$tmp/$name.pacer" | median)
  ml=$(cut -d' ' -f2 "$tmp/$name.mosquitto" | median); pl=$(cut -d' ' -f2 "$tmp/$name.pacer" | median)
  printf '%-24s %12s %12s %8s %12s %12s\n' "$name" "$m" "$p" "$(awk "BEGIN {printf \"%.2f\", $p / $m}")" "$ml" "$pl"
done
