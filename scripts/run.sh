#!/usr/bin/env bash
# `make run`: warmpod on this machine, in the foreground. Makes sure RabbitMQ
# answers (starting the installed server, or installing it via deps.sh),
# builds, then starts pod-manager (local bubblewrap backend) and api-server
# with their logs prefixed. Ctrl-C (or either service dying) stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-rabbitmq.sh
cargo build -p pod-manager -p warmpod-runner -p api-server

bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"
export RUST_LOG="${RUST_LOG:-info}"
export WARMPOD_BACKEND="${WARMPOD_BACKEND:-local}"
export WARMPOD_HTTP_ADDR="${WARMPOD_HTTP_ADDR:-127.0.0.1:8080}"

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

"$bin/pod-manager" > >(sed -u 's/^/[pod-manager] /') 2>&1 &
pids+=($!)
"$bin/api-server" > >(sed -u 's/^/[api-server]  /') 2>&1 &
pids+=($!)

echo "warmpod: API on http://$WARMPOD_HTTP_ADDR (Ctrl-C stops)"
echo "  curl -s -X POST 'http://$WARMPOD_HTTP_ADDR/execute?language=python' -H 'Content-Type: text/plain' --data-binary 'print(\"Hello, World!\")'"
# Returns when either service exits; the EXIT trap stops the other.
status=0
wait -n "${pids[@]}" || status=$?
echo "warmpod: a service exited (status $status); stopping" >&2
exit "$status"
