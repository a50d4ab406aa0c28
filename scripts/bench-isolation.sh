#!/usr/bin/env bash
# Slow consumers: how much a healthy subscriber's rate drops when 1 or 10 other subscribers to
# the same messages stop reading (their sockets fill), Pacer against mosquitto on this machine,
# same load generator (`pacer bench pubsub --stalled N`, rumqttc), rounds interleaved. Each
# broker starts fresh per round, so one round's stalled sessions do not weigh on the next.
# Prints every run, the median rate per case and broker, and each broker's peak memory.
# Env: RUNS (default 3), MESSAGES (default 200000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
runs=${RUNS:-3}; messages=${MESSAGES:-200000}

command -v mosquitto >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }
bench_setup
printf 'listener 18841 127.0.0.1\nallow_anonymous true\n' > "$tmp/mosquitto.conf"

# Starts a broker, prints its pid.
start() {
  case $1 in
    mosquitto) mosquitto -c "$tmp/mosquitto.conf" >/dev/null 2>>"$tmp/mosquitto.log" & echo $! ;;
    pacer) rm -rf "$tmp/pacer"
      PACER_LOG=warn "$pacer" up --data-dir "$tmp/pacer" --mqtt-listen 127.0.0.1:18842 --http-listen 127.0.0.1:0 \
        --osmand-listen "" >"$tmp/pacer.out" 2>>"$tmp/pacer.log" & echo $! ;;
  esac
}
port() { [ "$1" = mosquitto ] && echo 18841 || echo 18842; }
peak_mb() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }

echo "$(nproc) cores, $(mosquitto -h 2>/dev/null | head -1), $runs rounds, $messages messages of 206 bytes, 1 publisher, 1 healthy subscriber"
cases=(0 1 10)
for round in $(seq "$runs"); do
  for qos in 0 1; do
    for stalled in "${cases[@]}"; do
      for broker in mosquitto pacer; do
        pid=$(start $broker); wait_for_mqtt "$(port $broker)"
        line=$("$pacer" bench pubsub --port "$(port $broker)" --messages "$messages" --qos $qos --stalled "$stalled" 2>/dev/null | tail -1)
        peak=$(peak_mb "$pid"); kill "$pid"; wait "$pid" 2>/dev/null || true
        echo "round $round qos$qos stalled=$stalled $broker: $line; peak ${peak} MB"
        rate=$(echo "$line" | grep -oE '[0-9]+ msg/s' | head -1 | cut -d' ' -f1 || echo 0)
        got=$(echo "$line" | grep -oE '[0-9]+/[0-9]+ delivered' | cut -d/ -f1 || echo 0)
        echo "$rate $got $peak" >> "$tmp/q$qos-s$stalled.$broker"
      done
    done
  done
done
echo
printf '%-16s %11s %9s %9s %11s %9s %9s\n' case "mosquitto/s" "peak MB" "of 0" "pacer/s" "peak MB" "of 0"
for qos in 0 1; do
  for stalled in "${cases[@]}"; do
    row="qos$qos stalled=$stalled"
    line=$(printf '%-16s' "$row")
    for broker in mosquitto pacer; do
      r=$(cut -d' ' -f1 "$tmp/q$qos-s$stalled.$broker" | median); m=$(cut -d' ' -f3 "$tmp/q$qos-s$stalled.$broker" | median)
      r0=$(cut -d' ' -f1 "$tmp/q$qos-s0.$broker" | median)
      line+=$(printf ' %11s %9s %9s' "$r" "$m" "$(awk "BEGIN {printf \"%.2f\", $r / $r0}")")
    done
    echo "$line"
  done
done
