#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust and Node: real MQTT clients (Debian's
# mosquitto-clients) and a real browser (Debian's chromium). Skips what is already there.
set -euo pipefail

missing=()
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
