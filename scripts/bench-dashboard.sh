#!/usr/bin/env bash
# Dashboard frame times with DEVICES synthetic runners reporting at 1 Hz (release build):
# pacer up, `pacer simulate race --devices N`, and headless Chromium measuring the interval
# between animation frames for SECONDS once every runner is on the page.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-1000}
SECONDS_MEASURED=${SECONDS_MEASURED:-30}
cargo build --release --quiet
pacer=target/release/pacer
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
PACER_LOG=warn "$pacer" up --data-dir "$tmp/data" --mqtt-listen 127.0.0.1:18851 --http-listen 127.0.0.1:18852 --osmand-listen "" >"$tmp/up.out" 2>&1 &
for _ in $(seq 100); do grep -q "pacer ready" "$tmp/up.out" && break; sleep 0.1; done
"$pacer" simulate race --port 18851 --devices "$DEVICES" --rate 1 --duration $((SECONDS_MEASURED + 90)) >"$tmp/sim.out" 2>&1 &
(cd web && node bench/frametime.mjs http://127.0.0.1:18852 "$DEVICES" "$SECONDS_MEASURED")
