#!/usr/bin/env bash
# What the repartition step of a GROUP BY on a value column costs on the Kafka backend, and
# what a second node does to it, in one run: tansu (a Kafka-protocol broker, sqlite storage)
# and Pacer nodes on this machine. A backlog of readings is in the input topic; each round
# starts a query over it and times it until its table has one change row per reading:
#   by-key    GROUP BY the record key: one step, a task per input partition
#   by-value  GROUP BY a value column: forwarded through __repartition_<id>, then merged
# each on one node, then by-value again with a second node in the query's consumer group.
# Rounds interleave the cases so noise hits them alike.
# Env: RUNS (default 3), READINGS (default 20000), PARTITIONS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-common.sh
runs=${RUNS:-3}; readings=${READINGS:-20000}; partitions=${PARTITIONS:-4}

scripts/install-test-deps.sh
bench_setup
tansu=$(tansu_binary)

start_tansu 19094 "$tmp"
# A node killed or stopped leaves the group soon; tansu ends a rebalance only after
# max.poll.interval.ms, so that is lowered too.
printf '[log]\nbackend = "kafka"\npartitions = %s\n[log.kafka]\nbrokers = "127.0.0.1:19094"\ndelete_records = false\nproperties = { "session.timeout.ms" = "6000", "max.poll.interval.ms" = "10000" }\n[sql]\nfile = "%s/none.sql"\n' \
  "$partitions" "$tmp" > "$tmp/kafka.toml"
: > "$tmp/none.sql"
node() { # node NAME HTTP_PORT
  PACER_LOG=warn "$pacer" up --data-dir "$tmp/$1" --config "$tmp/kafka.toml" --mqtt-listen 127.0.0.1:0 \
    --http-listen "127.0.0.1:$2" --osmand-listen "" >"$tmp/$1.out" 2>&1 &
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$2/api/v1/streams" >/dev/null && return; sleep 0.1; done
  echo "node $1 did not answer on port $2" >&2; return 1
}
sql() { "$pacer" sql --server http://127.0.0.1:18871 "$1" >/dev/null; }
# Records a stream holds, per the HTTP API (0 while it does not exist).
records() {
  curl -sf http://127.0.0.1:18871/api/v1/streams |
    python3 -c "import json,sys; d=json.load(sys.stdin); d=d if isinstance(d,list) else d['streams']; print(sum(s['records'] for s in d if s['name']=='$1'))"
}

node a 18871
sql "CREATE STREAM readings (device STRING KEY, site STRING, temp DOUBLE) WITH (kafka_topic='readings', value_format='JSON', partitions=$partitions);"
python3 -c "
import json
for i in range($readings):
    print(json.dumps({'device': f'device-{i % 500}', 'site': f'site-{i % 40}', 'temp': (i % 7) + 0.5}))
" > "$tmp/readings.jsonl"
"$pacer" produce readings --key-field device --server http://127.0.0.1:18871 < "$tmp/readings.jsonl" >/dev/null

# run CASE ROUND: starts the case's query over the backlog and prints its seconds to the last row.
run() {
  local group=device table="${1//-/_}_$2"
  [ "$1" = by-key ] || group=site
  local start; start=$(date +%s.%N)
  sql "CREATE TABLE $table AS SELECT $group, COUNT(*) AS n, SUM(temp) AS total FROM readings GROUP BY $group EMIT CHANGES;"
  for _ in $(seq 6000); do [ "$(records "$table")" -ge "$readings" ] && break; sleep 0.1; done
  local end; end=$(date +%s.%N)
  [ "$(records "$table")" -ge "$readings" ] || { echo "$table did not finish" >&2; return 1; }
  sql "TERMINATE CTAS_${table^^};"
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}'
}

echo "$(nproc) cores, tansu $("$tansu" --version 2>/dev/null | head -1), $readings readings in $partitions partitions, $runs rounds"
for round in $(seq "$runs"); do
  for case in by-key by-value; do
    t=$(run "$case" "$round"); echo "round $round $case (1 node): ${t}s"; echo "$t" >> "$tmp/$case"
  done
done
node b 18872
for round in $(seq "$runs"); do
  t=$(run by-value "2n$round"); echo "round $round by-value (2 nodes): ${t}s"; echo "$t" >> "$tmp/by-value-2"
done
echo
printf '%-22s %10s %14s\n' case "median s" "readings/s"
for case in by-key by-value by-value-2; do
  m=$(median < "$tmp/$case")
  printf '%-22s %10s %14s\n' "$case" "$m" "$(awk -v n="$readings" -v s="$m" 'BEGIN {printf "%.0f", n / s}')"
done
