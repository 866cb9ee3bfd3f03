#!/usr/bin/env bash
# Host packages the Kubernetes tests need: iptables (the redirect test runs Debian's
# iptables/ip6tables in a network namespace), iproute2 (ip netns, veth) and util-linux
# (unshare, nsenter, setpriv). Idempotent; needs root, like the tests.
set -euo pipefail
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
