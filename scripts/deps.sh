#!/usr/bin/env bash
# Installs what warmpod needs on a fresh Debian/Ubuntu machine: build tools,
# the language runtimes the local backend runs, bubblewrap and RabbitMQ.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config ca-certificates curl
  python3 nodejs default-jdk-headless g++ bash
  bubblewrap rabbitmq-server procps iproute2
  python3-venv
)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  as_root apt-get update -qq
  # rabbitmq-server's postinst tries to start the service; without systemd
  # that may fail harmlessly, ensure-rabbitmq.sh starts it afterwards.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -f
else
  echo "deps: system packages present"
fi

# Precompiled C++ standard headers for the C++ compile step (the local
# sandboxes see /usr read-only); rebuilt only when g++ changed.
as_root "$(dirname "$0")/../standby-image/build-pch.sh"
# Pre-started Java's bootstrap, precompiled, and its compiler JVM's CDS
# archive (the runner falls back to the source-file launcher without them);
# rebuilt only when WarmpodBoot.java or the JDK changed.
as_root "$(dirname "$0")/../standby-image/build-java-boot.sh"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "deps: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
