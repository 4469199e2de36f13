#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (or the host/port
# of $AMQP_URL): uses a running one, else starts the installed server, else
# installs it through scripts/deps.sh first. Waits until it accepts AMQP.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
hostport=${url#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=5672

up() { timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }

if up; then exit 0; fi
case "$host" in
  127.0.0.1|localhost) ;;
  *) echo "RabbitMQ at $host:$port does not answer, and it is not local: start it yourself" >&2; exit 1 ;;
esac
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  "$here/deps.sh"
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "starting rabbitmq-server"
as_root env PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" rabbitmq-server -detached || true
for _ in $(seq 1 120); do
  if up; then echo "RabbitMQ is up on $host:$port"; exit 0; fi
  sleep 0.5
done
echo "RabbitMQ did not come up on $host:$port within 60 s" >&2
exit 1
