#!/usr/bin/env bash
# The whole test suite: unit tests, SDK doc examples, and end-to-end tests that
# build the plugins in plugins/ to wasm and drive the real `host` binary.
set -euo pipefail
cd "$(dirname "$0")/.."

for t in wasm32-wasip2 wasm32-wasip1; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done

cargo test --release
# The benchmarks must keep compiling; run them with `cargo bench -p keyhole-host`.
cargo bench --no-run --quiet -p keyhole-host
