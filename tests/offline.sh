#!/bin/sh
# Runs its arguments with loopback as the only network: a new network namespace (as root, or as a user where user
# namespaces are allowed), so a test whose settings miss an emulator's address fails instead of reaching a real
# endpoint. Where the machine allows no namespace it runs them as they are and says so in one line.
# Usage: tests/offline.sh COMMAND [ARGS...]
set -eu
inside='ip link set lo up && ELA_JAX_TESTS_OFFLINE=1 exec "$@"'
if command -v unshare >/dev/null && command -v ip >/dev/null; then
  if unshare -n true 2>/dev/null; then
    exec unshare -n sh -c "$inside" sh "$@"
  fi
  if unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c "$inside" sh "$@"
  fi
fi
echo "tests/offline.sh: no network namespace on this machine; the tests run with its network" >&2
exec "$@"
