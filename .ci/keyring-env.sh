# shellcheck shell=bash
# Source me: gives this shell a working Secret Service for the keyring tests.
#
#   source .ci/keyring-env.sh || echo "no Secret Service"
#
# - Reuses the Secret Service already on $DBUS_SESSION_BUS_ADDRESS if its
#   default collection is unlocked (a desktop session, or an earlier source).
# - Else installs gnome-keyring and dbus with apt-get if they are missing
#   (root, or password-less sudo), starts a private D-Bus session bus and a
#   gnome-keyring-daemon (secrets component only) unlocked with a throwaway
#   password, and exports DBUS_SESSION_BUS_ADDRESS. Its state (bus socket,
#   keyrings, logs) lives in /tmp/latchkey-keyring-env-<uid>, never in the
#   user's ~/.local/share/keyrings, and a later source in another shell reuses
#   the same bus while it still works, so repeated CI runs don't pile up
#   daemons.
# - Prints one line saying what it did; on failure prints one line to stderr
#   and returns 1 (it never exits the calling shell). Works under set -euo
#   pipefail, with no TTY.
# - latchkey_keyring_env_stop stops what it started.

# Does the Secret Service on the current session bus have an unlocked default
# collection? (Checked without activating a new service.)
_latchkey_ss_ready() {
  [ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] || return 1
  command -v dbus-send >/dev/null 2>&1 || return 1
  dbus-send --session --print-reply --reply-timeout=2000 --dest=org.freedesktop.DBus \
    /org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets \
    2>/dev/null | grep -q 'boolean true' || return 1
  local collection
  collection=$(dbus-send --session --print-reply --reply-timeout=5000 --dest=org.freedesktop.secrets \
    /org/freedesktop/secrets org.freedesktop.Secret.Service.ReadAlias string:default 2>/dev/null |
    awk '/object path/ { gsub(/"/, "", $3); print $3 }')
  [ -n "$collection" ] && [ "$collection" != / ] || return 1
  dbus-send --session --print-reply --reply-timeout=5000 --dest=org.freedesktop.secrets \
    "$collection" org.freedesktop.DBus.Properties.Get \
    string:org.freedesktop.Secret.Collection string:Locked 2>/dev/null | grep -q 'boolean false'
}

# Kills a pid recorded in file $1 if it is still the program named $2.
_latchkey_kill_recorded() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  case "$pid" in '' | *[!0-9]*) return 0 ;; esac
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
    kill "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# Stops the bus and gnome-keyring this script started.
latchkey_keyring_env_stop() {
  local state="${LATCHKEY_KEYRING_ENV_DIR:-}"
  [ -n "$state" ] && [ -d "$state" ] || return 0
  _latchkey_kill_recorded "$state/gnome-keyring.pid" gnome-keyring-d
  _latchkey_kill_recorded "$state/dbus.pid" dbus-daemon
  if [ "${DBUS_SESSION_BUS_ADDRESS:-}" = "unix:path=$state/bus" ]; then
    unset DBUS_SESSION_BUS_ADDRESS
  fi
  unset LATCHKEY_KEYRING_ENV_DIR
}

_latchkey_keyring_env() {
  local say="keyring-env:" installed=""

  if _latchkey_ss_ready; then
    echo "$say reusing the unlocked Secret Service already on $DBUS_SESSION_BUS_ADDRESS"
    return 0
  fi

  # 1. Packages.
  local missing=()
  command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus)
  command -v dbus-send >/dev/null 2>&1 || missing+=(dbus-bin)
  command -v gnome-keyring-daemon >/dev/null 2>&1 || missing+=(gnome-keyring)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
      else
        echo "$say cannot install ${missing[*]}: not root; run: sudo apt-get install -y --no-install-recommends gnome-keyring dbus" >&2
        return 1
      fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "$say cannot install ${missing[*]}: no apt-get here; install gnome-keyring and dbus yourself" >&2
      return 1
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    local install=(install -y -qq --no-install-recommends "${missing[@]}")
    # Try first without `update` (fast when the package lists are present).
    if ! "${apt[@]}" "${install[@]}" >/dev/null 2>&1; then
      if ! { "${apt[@]}" update -qq && "${apt[@]}" "${install[@]}"; } >/dev/null 2>&1; then
        echo "$say apt-get install ${missing[*]} failed; run it by hand to see why" >&2
        return 1
      fi
    fi
    installed="installed ${missing[*]}; "
  fi

  # 2. Our private state directory, owned by us and 0700 (refuse a squatted one).
  local state
  state="/tmp/latchkey-keyring-env-$(id -u)"
  if [ -L "$state" ] || { [ -e "$state" ] && [ ! -O "$state" ]; }; then
    state=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-keyring-env.XXXXXX") || {
      echo "$say cannot create a state directory" >&2
      return 1
    }
  fi
  if ! { mkdir -p "$state" && chmod 700 "$state"; }; then
    echo "$say cannot create $state" >&2
    return 1
  fi

  # 3. Reuse the bus a previous source started, if it still works.
  local previous="${DBUS_SESSION_BUS_ADDRESS-}" previous_set="${DBUS_SESSION_BUS_ADDRESS+x}"
  local address="unix:path=$state/bus"
  if [ -S "$state/bus" ]; then
    export DBUS_SESSION_BUS_ADDRESS="$address"
    if _latchkey_ss_ready; then
      export LATCHKEY_KEYRING_ENV_DIR="$state"
      echo "$say ${installed}reusing the private D-Bus session and unlocked gnome-keyring started earlier ($address)"
      return 0
    fi
  fi
  # Anything left from an earlier start is broken: stop it, start afresh.
  _latchkey_kill_recorded "$state/gnome-keyring.pid" gnome-keyring-d
  _latchkey_kill_recorded "$state/dbus.pid" dbus-daemon
  rm -rf "${state:?}/bus" "$state/data" "$state/runtime"
  mkdir -p "$state/data" "$state/runtime"
  chmod 700 "$state/data" "$state/runtime"

  _latchkey_restore() {
    if [ -n "$previous_set" ]; then export DBUS_SESSION_BUS_ADDRESS="$previous"; else unset DBUS_SESSION_BUS_ADDRESS; fi
  }

  # 4. A private session bus. Its output goes to files: a daemon holding our
  # stdout open would make CI wait for it forever.
  local out
  if ! out=$(dbus-daemon --session --address="$address" --fork --print-pid=1 \
    </dev/null 2>"$state/dbus.log"); then
    _latchkey_restore
    echo "$say dbus-daemon failed to start: $(tr '\n' ' ' <"$state/dbus.log")" >&2
    return 1
  fi
  printf '%s\n' "${out//[!0-9]/}" >"$state/dbus.pid"
  export DBUS_SESSION_BUS_ADDRESS="$address"

  # 5. gnome-keyring, unlocked with a throwaway password. Its keyrings live in
  # $state/data, so it creates a fresh `login` collection and never touches
  # the user's own keyrings.
  printf '%s' "latchkey-ci-throwaway" |
    env XDG_DATA_HOME="$state/data" XDG_RUNTIME_DIR="$state/runtime" \
      gnome-keyring-daemon --daemonize --unlock --components=secrets \
      >"$state/gnome-keyring.env" 2>"$state/gnome-keyring.log" || true

  local tries=0
  until _latchkey_ss_ready; do
    tries=$((tries + 1))
    if [ "$tries" -ge 50 ]; then
      _latchkey_kill_recorded "$state/dbus.pid" dbus-daemon
      _latchkey_restore
      echo "$say gnome-keyring did not provide an unlocked Secret Service within 10 s: $(tail -n 3 "$state/gnome-keyring.log" | tr '\n' ' ')" >&2
      return 1
    fi
    sleep 0.2
  done
  dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.GetConnectionUnixProcessID string:org.freedesktop.secrets 2>/dev/null |
    awk '/uint32/ { print $2 }' >"$state/gnome-keyring.pid" || true

  unset -f _latchkey_restore
  export LATCHKEY_KEYRING_ENV_DIR="$state"
  echo "$say ${installed}started a private D-Bus session ($address) with an unlocked gnome-keyring Secret Service; exported DBUS_SESSION_BUS_ADDRESS"
}

_latchkey_keyring_env
