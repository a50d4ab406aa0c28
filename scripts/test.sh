#!/usr/bin/env bash
# Runs the whole Pacer test suite: formatting and lints, Rust unit and end-to-end tests
# (real pacer processes, mosquitto clients, rumqttc), then the dashboard in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
(cd web && npm ci --no-audit --no-fund --loglevel=error)

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
cargo test --workspace

(cd web && PACER_BIN="$PWD/../target/debug/pacer" npm test --silent)
