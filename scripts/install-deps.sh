#!/usr/bin/env bash
# Installs what mcpod's build and tests need on a fresh Debian 12 machine (run as root).
# Idempotent: a machine that already has everything does nothing but check.
set -euo pipefail

need_apt=()
for pkg in podman runc conmon netavark aardvark-dns iptables slirp4netns fuse-overlayfs \
           catatonit uidmap mmdebstrap jq curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
