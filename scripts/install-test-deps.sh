#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust and Node: real MQTT clients (Debian's
# mosquitto-clients; mosquitto for its password tool and the benchmark), a real browser
# (Debian's chromium), OpenSSL headers for librdkafka's TLS, DuckDB (PyPI), and a real Kafka-protocol broker
# (tansu, built once into ~/.cargo/bin: about 20 minutes on 2 cores). Skips what is there.
set -euo pipefail

missing=()
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# DuckDB (PyPI) reads the Parquet Pacer exports, as its users would.
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb

# The sqlite engine (libsql): tansu's memory engine answers ListOffsets wrongly for batches.
if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "installing tansu (cargo install, cached in ~/.cargo/bin)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --quiet
fi
