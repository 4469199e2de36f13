#!/usr/bin/env bash
# Runs a command (the test suite) inside an outer cgroup that caps processes
# and memory, so a regression that lets a fork bomb or memory bomb out of the
# code under test cannot take the machine down. When the command ends (or
# hangs and is killed), everything left in the cgroup is killed and the
# cgroup removed. Without writable cgroups it runs the command as is and
# says so.
#
#   WARMPOD_TEST_PIDS_MAX   default 8192
#   WARMPOD_TEST_MEMORY     default 12G
set -uo pipefail

pids_max=${WARMPOD_TEST_PIDS_MAX:-8192}
memory=${WARMPOD_TEST_MEMORY:-12G}
name="warmpod-test-$$"
dirs=()

to_bytes() { numfmt --from=iec "$1"; }

if [ -w /sys/fs/cgroup/cgroup.subtree_control ] && grep -qw pids /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  d=/sys/fs/cgroup/$name; mkdir "$d" && dirs+=("$d")
  echo "$pids_max" > "$d/pids.max"; to_bytes "$memory" > "$d/memory.max"
elif [ -w /sys/fs/cgroup/pids ] && [ -w /sys/fs/cgroup/memory ]; then
  for c in pids memory; do d=/sys/fs/cgroup/$c/$name; mkdir "$d" && dirs+=("$d"); done
  echo "$pids_max" > "/sys/fs/cgroup/pids/$name/pids.max"
  to_bytes "$memory" > "/sys/fs/cgroup/memory/$name/memory.limit_in_bytes"
else
  echo "with-test-cgroup: no writable cgroups here; running without the outer safety net" >&2
fi

cleanup() {
  for d in "${dirs[@]}"; do
    if [ -e "$d/cgroup.kill" ]; then echo 1 > "$d/cgroup.kill" 2>/dev/null; fi
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      pids=$(cat "$d/cgroup.procs" 2>/dev/null)
      [ -z "$pids" ] && break
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null
      sleep 0.1
    done
    rmdir "$d" 2>/dev/null || { sleep 0.5; rmdir "$d" 2>/dev/null; } || echo "with-test-cgroup: could not remove $d" >&2
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The command runs in a child that joins the cgroup before exec; this shell
# stays outside so that it can kill and remove the cgroup afterwards.
[ "${#dirs[@]}" -gt 0 ] && echo "with-test-cgroup: running under $name (pids.max=$pids_max, memory=$memory)" >&2
bash -c 'for d in "${@:2:$1}"; do echo $$ > "$d/cgroup.procs" || exit 125; done; shift $(($1 + 1)); exec "$@"' \
  join "${#dirs[@]}" "${dirs[@]}" "$@" &
child=$!
wait "$child"
exit $?
