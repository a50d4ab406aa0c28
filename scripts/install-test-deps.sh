#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust and Node: real MQTT clients (Debian's
# mosquitto-clients; mosquitto for its password tool and the benchmark) and a real browser (Debian's chromium). Skips what is already there.
set -euo pipefail

missing=()
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
