#!/usr/bin/env bash
# The main job, end to end, on the embedded default store: build the host and
# the example plugins, store a demo secret, run the signing plugin with a grant,
# bind the signing key to a local webhook receiver and run the example flow,
# which delivers the report signed by the host (no plugin sees the key), then
# show what arrived, the execution records and the audit trail.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

echo "==> building the host and the example plugins"
cargo build --release --quiet -p keyhole-host --bin host --example webhook-receiver
cargo build --release --quiet --target wasm32-wasip2 --target-dir target/plugins -p hello -p hmac-sign -p open-issue -p probe -p webhook-request

host=target/release/host
plugin=target/plugins/wasm32-wasip2/release/hmac_sign.wasm
# A local data directory: store, master key and compiled-plugin cache.
export KEYHOLE_HOME="${KEYHOLE_HOME:-$PWD/.keyhole}"

echo "==> storing WEBHOOK_SIGNING_KEY in namespace finance (data directory $KEYHOLE_HOME)"
demo_key="whsec_demo_$(date +%s)"
printf '%s' "$demo_key" | "$host" secret set WEBHOOK_SIGNING_KEY --namespace finance
# A second run of this demo starts from an unbound key again.
"$host" secret bind WEBHOOK_SIGNING_KEY --namespace finance --clear 2>/dev/null
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
echo "==> binding WEBHOOK_SIGNING_KEY to the receiver: tasks now get a placeholder, the host signs"
"$host" secret bind WEBHOOK_SIGNING_KEY --namespace finance --destination http://127.0.0.1:8087
"$host" secret describe WEBHOOK_SIGNING_KEY --namespace finance | grep -E "^(name|destinations)"

echo "==> starting a local webhook receiver on 127.0.0.1:8087 (it knows the key, to check signatures)"
received="$KEYHOLE_HOME/received.txt"
key="$demo_key"
WEBHOOK_SIGNING_KEY="$key" RECEIVER_MAX=1 target/release/examples/webhook-receiver 127.0.0.1:8087 >"$received" 2>/dev/null &
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/8087) 2>/dev/null && break; sleep 0.1; done

echo "==> running the example flow: deliver the nightly report, signed by the host"
"$host" validate plugins/flows/nightly-sales-report.yaml
"$host" run plugins/flows/nightly-sales-report.yaml --input day="$(date +%F)"
wait $receiver || true
echo "==> what the receiver got (the signature checks out against the key; no plugin held it)"
cat "$received"

echo "==> recorded executions and the audit trail"
"$host" executions list --limit 3
"$host" audit list --limit 8
"$host" audit verify
echo "==> a signed checkpoint of the audit log: keep it outside the data directory, then"
echo "    \`host audit verify --against FILE\` proves the log was not cut or rolled back"
"$host" audit checkpoint
echo "==> done"
