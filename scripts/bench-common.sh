# Helpers the MQTT benchmark scripts share; sourced, not run.

# Waits (up to 10 s) until an MQTT broker on 127.0.0.1:$1 takes a publish.
wait_for_mqtt() {
  for _ in $(seq 100); do mosquitto_pub -p "$1" -t ready -m 1 2>/dev/null && return; sleep 0.1; done
  echo "no MQTT broker on port $1 after 10 s" >&2; return 1
}

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
