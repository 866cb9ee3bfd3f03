#!/usr/bin/env bash
# Build the base image locally with debootstrap: public registries are not reachable from
# the build machines, so nothing is pulled. The Debian mirror is the one this machine's
# apt uses, read at run time (deb822 /etc/apt/sources.list.d/*.sources or sources.list).
#
#   image/build-base.sh [TAG]        default TAG: localhost/extproc-base:bookworm
#
# The base holds what the runtime needs from Debian: python3 (probes, the server), the
# venv module (the builder stage), iptables (the redirect init container), CA certificates.
set -euo pipefail
TAG=${1:-localhost/extproc-base:bookworm}
SUITE=${SUITE:-bookworm}
PACKAGES=${PACKAGES:-python3,python3-venv,iptables,ca-certificates}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need podman || ! need debootstrap; then
  echo "installing podman, buildah and debootstrap (apt-get)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman buildah debootstrap >&2
fi

if podman image exists "$TAG"; then
  echo "base image $TAG exists (podman rmi it to rebuild)" >&2
  exit 0
fi

mirror() {
  local m=""
  shopt -s nullglob
  for f in /etc/apt/sources.list.d/*.sources; do
    m=$(awk '/^URIs:/ {print $2; exit}' "$f")
    [ -n "$m" ] && break
  done
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "$m"
}
MIRROR=$(mirror)
ROOT=$(mktemp -d /var/tmp/extproc-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >&2
# Slim: no apt lists, docs or caches in the image.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" -c . | podman import --change 'CMD ["/bin/sh"]' - "$TAG" >&2
echo "$TAG"
