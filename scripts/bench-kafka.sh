#!/usr/bin/env bash
# MQTT → log throughput, embedded log against the Kafka backend, in one run: two Pacers on
# this machine, one on its embedded log (fsync batch), one on tansu (a Kafka-protocol broker,
# sqlite storage), the same load generator (`pacer bench publish`, rumqttc clients), rounds
# interleaved so noise hits both alike. At QoS 1 every PUBACK waits for the log: an fsync
# for the embedded log, acks=all from Kafka for the other.
# Env: RUNS (default 5), MESSAGES (per publisher, default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
runs=${RUNS:-5}; messages=${MESSAGES:-20000}

scripts/install-test-deps.sh
bench_setup
tansu=$(tansu_binary)

start_tansu 19093 "$tmp"
printf '[log]\nbackend = "kafka"\n[log.kafka]\nbrokers = "127.0.0.1:19093"\ndelete_records = false\n' > "$tmp/kafka.toml"
PACER_LOG=warn "$pacer" up --data-dir "$tmp/embedded" --mqtt-listen 127.0.0.1:18841 --http-listen 127.0.0.1:0 --osmand-listen "" >"$tmp/embedded.out" 2>&1 &
pid_embedded=$!
PACER_LOG=warn "$pacer" up --config "$tmp/kafka.toml" --mqtt-listen 127.0.0.1:18842 --http-listen 127.0.0.1:0 --osmand-listen "" >"$tmp/kafka.out" 2>&1 &
pid_kafka=$!
# CPU time (ms) a process has used: Pacer's own cost, apart from the broker's and the load's.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
wait_for_mqtt 18841; wait_for_mqtt 18842

cases=(
  "publish-qos1-4clients|publish --clients 4 --messages $messages --qos 1"
  "publish-qos1-32clients|publish --clients 32 --messages $((messages / 8)) --qos 1"
  "publish-qos0-1client|publish --clients 1 --messages $((messages * 2)) --qos 0"
)
echo "$(nproc) cores, tansu $("$tansu" --version 2>/dev/null | head -1), $runs rounds, 200-206 byte payloads"
for round in $(seq "$runs"); do
  for case in "${cases[@]}"; do
    name=${case%%|*}; args=${case#*|}
    for backend in embedded:18841 kafka:18842; do
      pid_var="pid_${backend%%:*}"; pid=${!pid_var}
      before=$(cpu_ms "$pid")
      line=$("$pacer" bench $args --port "${backend##*:}" 2>/dev/null | tail -1)
      used=$(awk -v a="$before" -v b="$(cpu_ms "$pid")" 'BEGIN {print b - a}')
      count=$(echo "$line" | grep -oE '^[0-9]+ messages' | cut -d' ' -f1)
      per_k=$(awk -v u="$used" -v n="$count" 'BEGIN {printf "%.1f", u * 1000 / n}')
      echo "round $round $name ${backend%%:*}: $line; pacer CPU ${per_k} ms per 1000 messages"
      rate=$(echo "$line" | grep -oE '[0-9]+ msg/s' | head -1 | cut -d' ' -f1 || true)
      p50=$(echo "$line" | grep -oE 'p50 [0-9.]+' | cut -d' ' -f2 || true)
      echo "$rate ${p50:-0} $per_k" >> "$tmp/$name.${backend%%:*}"
    done
  done
done
echo
printf '%-24s %11s %11s %7s %10s %10s %12s %12s\n' case "embedded/s" "kafka/s" ratio "emb p50ms" "kaf p50ms" "emb cpu/1k" "kaf cpu/1k"
for case in "${cases[@]}"; do
  name=${case%%|*}
  e=$(cut -d' ' -f1 "$tmp/$name.embedded" | median); k=$(cut -d' ' -f1 "$tmp/$name.kafka" | median)
  el=$(cut -d' ' -f2 "$tmp/$name.embedded" | median); kl=$(cut -d' ' -f2 "$tmp/$name.kafka" | median)
  ec=$(cut -d' ' -f3 "$tmp/$name.embedded" | median); kc=$(cut -d' ' -f3 "$tmp/$name.kafka" | median)
  printf '%-24s %11s %11s %7s %10s %10s %12s %12s\n' "$name" "$e" "$k" "$(awk "BEGIN {printf \"%.2f\", $k / $e}")" "$el" "$kl" "$ec ms" "$kc ms"
done
