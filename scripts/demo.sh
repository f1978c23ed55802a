#!/usr/bin/env bash
# The main job, end to end, on the embedded default store: build the host and
# the example plugins, store a demo secret, run the signing plugin with a grant,
# run the example flow, and show the execution records and the audit trail.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

echo "==> building the host and the example plugins"
cargo build --release --quiet -p keyhole-host
cargo build --release --quiet --target wasm32-wasip2 --target-dir target/plugins -p hello -p hmac-sign -p probe -p webhook-request

host=target/release/host
plugin=target/plugins/wasm32-wasip2/release/hmac_sign.wasm
# A local data directory: store, master key and compiled-plugin cache.
export KEYHOLE_HOME="${KEYHOLE_HOME:-$PWD/.keyhole}"

echo "==> storing WEBHOOK_SIGNING_KEY in namespace finance (data directory $KEYHOLE_HOME)"
printf '%s' "whsec_demo_$(date +%s)" | "$host" secret set WEBHOOK_SIGNING_KEY --namespace finance
"$host" secret list

echo "==> running the signing plugin in finance.reporting with exactly one grant"
"$host" exec "$plugin" \
  --namespace finance.reporting \
  --grant WEBHOOK_SIGNING_KEY \
  --input '{"payload": "{\"event\":\"invoice.paid\",\"amount\":4200}"}'

echo "==> the same plugin without the grant is refused (exit code 1)"
if "$host" exec "$plugin" --namespace finance.reporting --input '{"payload": "x"}'; then
  echo "unexpected: ran without a grant" >&2
  exit 1
fi
echo "==> running the example flow: sign the nightly report, then build its webhook delivery"
"$host" validate plugins/flows/nightly-sales-report.yaml
"$host" run plugins/flows/nightly-sales-report.yaml --input day="$(date +%F)"

echo "==> recorded executions and the audit trail"
"$host" executions list --limit 3
"$host" audit list --limit 6
"$host" audit verify
echo "==> a signed checkpoint of the audit log: keep it outside the data directory, then"
echo "    \`host audit verify --against FILE\` proves the log was not cut or rolled back"
"$host" audit checkpoint
echo "==> done"
