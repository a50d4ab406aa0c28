# Helpers the MQTT benchmark scripts share; sourced, not run.

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
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done
  echo "tansu did not listen on port $1 after 10 s" >&2; return 1
}
