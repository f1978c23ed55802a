#!/usr/bin/env bash
# Mutation testing of the trust boundary with cargo-mutants: every condition
# that decides what crosses it (a grant, an allow-list entry, an address, a
# MAC, a chain link, a checkpoint, a masking rule, a role) is switched off or
# turned around, one at a time, and the tests that guard it must fail.
#
#   bash scripts/mutants.sh              every group below
#   bash scripts/mutants.sh audit mask   only these groups
#   bash scripts/mutants.sh --list       the groups, their files and mutant counts
#   bash scripts/mutants.sh --iterate G  retry only what group G's last run did
#                                        not catch (after adding a test)
#   bash scripts/mutants.sh --report     the report of the runs so far, no run
#
# A mutant the tests miss must be killed by a new test or explained, one line
# each, in tests/MUTANTS.md; the script exits 1 while any is neither. The
# report is target/mutants/report.md. It mutates a copy of the working tree's
# tracked files (target/mutants/tree, with its own target directory seeded
# from this one), so the checkout stays usable while it runs. The package
# under test is built at opt-level 0 over the release profile's optimized
# dependencies: about 6 s per mutant instead of 12, and no second dependency
# build. Too slow for every push (see README "Mutation testing" for the
# figures); CI checks only that tests/MUTANTS.md names functions that exist.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# group | files under host/src | the end-to-end tests that guard them
# (libtest filters and --skip). Every group runs all unit tests too (each
# one's path has `tests::`); cargo test runs them first and stops at the
# first failing binary, so a mutant they catch costs a second, not the e2e.
GROUPS_TABLE='
access|access.rs policy.rs capability/mod.rs capability/secrets.rs capability/context.rs capability/log.rs|exec:: --skip exec::secret_set safety::a_task_gets_at_most dynamic::a_task_gets audit::a_value_used flows::each_task lifecycle::a_revocation masking::masking_tells sandbox::no_env_vars
audit|audit/chain.rs audit/log.rs audit/mod.rs audit/verify.rs|audit:: safety::an_edited_keyed safety::reading_the safety::a_forged safety::a_signed safety::deleting safety::a_store_written safety::a_plugin_cannot_grow safety::edited_rows safety::the_actor network::nothing_is_sent exec::secret_cli
authz|authz.rs|server::the_authorization_matrix server::the_server_refuses server::an_approval console::a_console
network|network/mod.rs network/address.rs network/allow.rs network/inject.rs capability/http.rs|network:: masking::a_password safety::a_task_gets_at_most rotation:: server::a_team_deploys
router|backend/router.rs|vault:: aws:: exec::nearer exec::granted lifecycle::a_revocation lifecycle::a_rotation_mid dynamic:: safety::edited_rows
crypto|crypto.rs keyring.rs store/mod.rs store/bundle.rs store/read.rs store/rows.rs store/stage.rs store/write.rs|store:: safety::edited_rows safety::key_rotation safety::a_crafted safety::a_rotated safety::concurrent safety::a_store_written safety::an_edited_backend safety::every_file lifecycle:: network::an_edited_row exec::granted flows::validation_warns_about_missing_secrets
mask|mask.rs|masking:: flows::a_leaked flows::a_plugins_error engine::parallel
rotate|lease.rs process.rs rotate.rs capability/rotation.rs|dynamic:: rotation:: lifecycle::a_staged
server|server/webhook.rs server/schedule.rs server/worker.rs trigger.rs|server::webhooks server::schedules server::cancel server::an_approval server::a_flows_concurrency server::kill_9
wasi|capability/config.rs capability/wasi.rs|authors::a_wasi_program_with_main sandbox::no_env_vars exec::granted exec::imports_no_flow network::the_allow_list
vouch|vouch.rs service/flows.rs registry/mod.rs registry/read.rs registry/review.rs registry/protection.rs|vouch:: server::the_authorization_matrix server::a_team_deploys dynamic::a_server console::the_console_in'

list=false
report_only=false
iterate=()
want=()
for a in "$@"; do
  case "$a" in
    --list) list=true ;;
    --iterate) iterate=(--iterate) ;;
    --report) report_only=true ;;
    -h|--help) sed -n "2,22p" "$0"; exit 0 ;;
    *) want+=("$a") ;;
  esac
done

if ! command -v cargo-mutants >/dev/null 2>&1; then
  echo "==> installing cargo-mutants (cargo install cargo-mutants --locked; about 2.5 minutes)"
  cargo install --quiet cargo-mutants --locked
fi

# The groups to run, in table order.
groups=()
while IFS='|' read -r name files tests; do
  [ -n "$name" ] || continue
  if [ ${#want[@]} -eq 0 ] || [[ " ${want[*]} " == *" $name "* ]]; then groups+=("$name"); fi
done <<<"$GROUPS_TABLE"
for w in "${want[@]}"; do
  grep -q "^$w|" <<<"$GROUPS_TABLE" || { echo "mutants.sh: no group '$w' (see --list)" >&2; exit 2; }
done

row() { grep "^$1|" <<<"$GROUPS_TABLE"; }
file_args() {
  local f
  for f in $(row "$1" | cut -d'|' -f2); do printf -- '-f\nhost/src/%s\n' "$f"; done
}

if $list; then
  for g in "${groups[@]}"; do
    mapfile -t fa < <(file_args "$g")
    n=$(cargo mutants --list -p keyhole-host "${fa[@]}" | wc -l)
    printf '%-8s %4d mutants  %s\n' "$g" "$n" "$(row "$g" | cut -d'|' -f2)"
  done
  exit 0
fi

work="$root/target/mutants"
tree="$work/tree"
opt="profile.release.package.keyhole-host.opt-level=0"

# Adds what group $1's last run settled to what its earlier runs did:
# --iterate retries only the rest, and the report counts the whole group.
settled() {
  local f
  for f in caught timeout unviable; do
    cat "$work/out/$1/mutants.out/$f.txt" >>"$work/out/$1/all-$f.txt" 2>/dev/null || true
    sort -u -o "$work/out/$1/all-$f.txt" "$work/out/$1/all-$f.txt"
  done
}

# Runs the groups: a copy of the tree, then cargo-mutants on each group.
run() {
  # A copy of the working tree's tracked files to mutate in place.
  mkdir -p "$work"
  if [ ! -d "$tree/.git" ] && [ ! -f "$tree/.git" ]; then
    git worktree add --detach --force "$tree" HEAD >/dev/null
  fi
  # The working tree as it is now (tracked files), or this checkout's HEAD:
  # resolved here, since HEAD inside the copy is the copy's own.
  snapshot=$(git stash create 2>/dev/null || true)
  git -C "$tree" checkout --quiet --detach --force "${snapshot:-$(git rev-parse HEAD)}"
  git -C "$tree" clean --quiet -fd -e target
  if [ -n "$(git ls-files --others --exclude-standard host tests)" ]; then
    echo "*** note: untracked files under host/ or tests/ are not in the copy; git add them first" >&2
  fi
  if [ ! -d "$tree/target/release" ] && [ -d "$root/target/release" ]; then
    echo "==> seeding $tree/target from target/ (the optimized dependencies are reused)"
    mkdir -p "$tree/target"
    for d in release plugins js-tools; do
      [ -d "$root/target/$d" ] && cp -a "$root/target/$d" "$tree/target/"
    done
  fi

  cd "$tree"
  echo "==> building the unmutated tree once (its tests are the baseline: scripts/test.sh runs them)"
  cargo test --quiet --release --config "$opt" -p keyhole-host --lib --test e2e --no-run

  for g in "${groups[@]}"; do
    mapfile -t fa < <(file_args "$g")
    read -r -a filters <<<"$(row "$g" | cut -d'|' -f3)"
    echo "==> group $g: $(row "$g" | cut -d'|' -f2)"
    if [ ${#iterate[@]} -eq 0 ]; then
      rm -rf "$work/out/$g"
    elif [ -d "$work/out/$g/mutants.out" ]; then
      settled "$g" # a run that was stopped part way counts too
      # cargo-mutants retries timeouts; a timeout is caught, so skip them.
      cat "$work/out/$g/all-timeout.txt" >>"$work/out/$g/mutants.out/previously_caught.txt"
    fi
    mkdir -p "$work/out/$g"
    gstart=$(date +%s)
    rc=0
    # A mutant that hangs the tests is caught (timeout.txt): a group's tests
    # take under 30 s unmutated (26 s at most on the runs so far); 90 s
    # leaves room for a loaded machine, where a false timeout would count
    # a survivor as caught.
    cargo mutants --in-place --baseline skip --no-shuffle "${iterate[@]}" \
      --timeout 90 --build-timeout 600 \
      -p keyhole-host --test-package keyhole-host "${fa[@]}" --profile release "--cargo-arg=--config=$opt" \
      -o "$work/out/$g" -- --lib --test e2e -- tests:: "${filters[@]}" || rc=$?
    # 2: some missed, 3: some timed out; both judged below. Anything else
    # (a usage error, a tree that does not build) stops the run.
    case $rc in 0|2|3) ;; *) echo "mutants.sh: cargo mutants failed ($rc) on group $g" >&2; exit "$rc" ;; esac
    settled "$g"
    echo "$(( $(date +%s) - gstart + $(cat "$work/out/$g/seconds" 2>/dev/null || echo 0) ))" >"$work/out/$g/seconds.new"
    mv "$work/out/$g/seconds.new" "$work/out/$g/seconds"
    git checkout --quiet --force -- . # cargo-mutants restores each file; be sure
  done
  cd "$root"
}
$report_only || run

# The report: every group's figures, and each missed mutant that
# tests/MUTANTS.md does not explain. An explanation is a line
#   - `host/src/FILE.rs: MUTANT` — why it cannot change behaviour
#   - `host/src/FILE.rs:LINE: MUTANT` — why (only the mutant on that line)
# where MUTANT is cargo-mutants' text without the line and column.
explained=$(sed -n 's/^- `\(host\/src\/[^`]*\)`.*/\1/p' tests/MUTANTS.md 2>/dev/null || true)
report="$work/report.md"
unexplained=0
{
  echo "# Mutation testing: $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD)"
  echo
  echo "| group | mutants | caught | timeout | unviable | missed | explained | unexplained | minutes |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$report"
survivors=""
total=0
for g in "${groups[@]}"; do
  o="$work/out/$g/mutants.out"
  [ -d "$o" ] || { echo "| $g | did not run | | | | | | | |" >>"$report"; unexplained=$((unexplained + 1)); continue; }
  count() { if [ -f "$1" ]; then grep -c . "$1" || true; else echo 0; fi; }
  caught=$(count "$work/out/$g/all-caught.txt"); unviable=$(count "$work/out/$g/all-unviable.txt")
  # A timeout a later run caught counts once, as caught.
  timeout=$(comm -23 "$work/out/$g/all-timeout.txt" "$work/out/$g/all-caught.txt" | grep -c . || true)
  missed=$(count "$o/missed.txt")
  ex=0; un=0
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    key=$(sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /' <<<"$m")
    at_line=$(sed -E 's/^([^:]+:[0-9]+):[0-9]+: /\1: /' <<<"$m")
    if grep -qxF -e "$key" -e "$at_line" <<<"$explained"; then ex=$((ex + 1)); else un=$((un + 1)); survivors+="$m"$'\n'; fi
  done <"${o}/missed.txt"
  unexplained=$((unexplained + un))
  total=$((total + $(cat "$work/out/$g/seconds" 2>/dev/null || echo 0)))
  echo "| $g | $((caught + timeout + unviable + missed)) | $caught | $timeout | $unviable | $missed | $ex | $un | $(( $(cat "$work/out/$g/seconds" 2>/dev/null || echo 0) / 60 )) |" >>"$report"
done
{
  echo
  echo "Time in cargo-mutants, all runs of these groups: $(( total / 60 )) minutes."
  if [ -n "$survivors" ]; then
    echo
    echo "## Unexplained survivors (kill each with a test, or explain it in tests/MUTANTS.md)"
    echo
    printf '%s' "$survivors" | sed 's/^/- /'
  fi
} >>"$report"
cat "$report"
if [ "$unexplained" -gt 0 ]; then
  echo "mutants.sh: $unexplained unexplained survivor(s) or group(s) that did not run; see $report" >&2
  exit 1
fi
