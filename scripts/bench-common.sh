# Helpers the MQTT benchmark scripts share; sourced, not run.

# What a benchmark running servers starts with: a release build, `pacer` naming it, and a
# scratch directory `tmp` removed, with the servers started in the background, on exit.
bench_setup() {
  cargo build --release --quiet
  pacer=target/release/pacer
  tmp=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
}

# Waits (up to 10 s) until an MQTT broker on 127.0.0.1:$1 takes a publish.
wait_for_mqtt() {
  for _ in $(seq 100); do mosquitto_pub -p "$1" -t ready -m 1 2>/dev/null && return; sleep 0.1; done
  echo "no MQTT broker on port $1 after 10 s" >&2; return 1
}

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Starts tansu (a Kafka-protocol broker, sqlite storage in directory $2) on 127.0.0.1:$1 in
# the background, and waits (up to 10 s) until it listens.
tansu_binary() { command -v tansu || echo ~/.cargo/bin/tansu; }
start_tansu() {
  local tansu; tansu=$(tansu_binary)
  (cd "$2" && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
    --storage-engine sqlite://tansu.db >"$2/tansu.log" 2>&1) &
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && { tansu_header_index "$2/tansu.db"; return; }; sleep 0.1; done
  echo "tansu did not listen on port $1 after 10 s" >&2; return 1
}

# tansu 0.6's sqlite schema has no index on its header table, so every record fetched scans
# every header ever stored (minutes once a topic's rows carry headers, e.g. Pacer's query
# output with pacer.query/pacer.cause). The index Kafka's own log has by construction:
tansu_header_index() {
  python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30); c.execute('create index if not exists header_record on header (topition, offset_id)'); c.commit()" "$1"
}
