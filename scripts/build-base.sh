#!/usr/bin/env bash
# Builds mcpod's base image, localhost/mcpod/base:latest, from Debian packages alone:
#   mmdebstrap --variant=minbase bookworm - | podman import - localhost/mcpod/base:latest
# No container registry is needed, only a Debian mirror (plain http by default; apt checks
# the signatures, so no CA bundle is involved).
#
# The base is a minimal Debian 12 (bookworm) with apt and ca-certificates, ~86 MB. The
# language runtimes are layered on top by images/python-base, images/node-base and
# images/node-build (built by scripts/build-images.sh), so every image shares this layer.
#
# Usage: scripts/build-base.sh [--force]
#   --force   rebuild even if localhost/mcpod/base:latest has the current build hash
# Environment:
#   MCPOD_DEBIAN_MIRROR           default http://deb.debian.org/debian
#   MCPOD_DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
# Prints one line: "base: built in Ns (ID)" or "base: cached in 0s (ID)".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
IMAGE=localhost/mcpod/base:latest   # the FROM of images/python-base and images/node-base
# Helper for the RUN steps of derived images: trusts the build-time CA bundle (MCPOD_CA_BUNDLE).
HELPER="$here/../images/base/mcpod-with-build-ca"
MIRROR="${MCPOD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${MCPOD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm
# Packages on top of minbase. Keep this small: each runtime has its own derived base.
INCLUDE=ca-certificates

die() { echo "build-base: ERROR: $*" >&2; exit 1; }

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap creates device nodes and sets file ownership)"
for tool in mmdebstrap podman sha256sum flock; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (Debian: apt-get install mmdebstrap podman; or run scripts/install-deps.sh)"
done
[ -f "$HELPER" ] || die "missing $HELPER"

# One build at a time (scripts/build-images.sh holds the lock already when it calls us).
if [ -z "${MCPOD_BUILD_LOCK_HELD:-}" ]; then
  exec 9>/var/tmp/mcpod-build.lock
  flock 9
fi

# The build hash covers what decides the content: this script, the helper, the mirrors.
hash=$( { cat "$0" "$HELPER"; echo "$MIRROR $SECURITY_MIRROR $SUITE $INCLUDE"; } | sha256sum | cut -c1-32)

old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [ "$force" = 0 ] && [ -n "$old_id" ]; then
  old_hash=$(podman image inspect --format '{{index .Labels "mcpod.dev/build-hash"}}' "$IMAGE" 2>/dev/null || true)
  if [ "$old_hash" = "$hash" ]; then
    echo "base: cached in 0s (${old_id:0:12})"
    exit 0
  fi
fi

start=$(date +%s)
tmp=$(mktemp -d /var/tmp/mcpod-base.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# - merged-usr hook: sets up merged /usr the debootstrap way and installs usr-is-merged;
#   without it apt satisfies init-system-helpers with usrmerge, which drags in perl (~50 MB).
# - Check-Valid-Until off: frozen mirrors/snapshots serve Release files past their
#   Valid-Until date (the host's apt has the same setting on such machines).
# - dpkg path-excludes: no docs, man pages or locales, here and in every later apt install
#   of derived images (the options stay in /etc/dpkg/dpkg.cfg.d/99mmdebstrap).
if ! mmdebstrap \
      --mode=root \
      --variant=minbase \
      --include="$INCLUDE" \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --aptopt='Acquire::Check-Valid-Until "false"' \
      --aptopt='Acquire::Languages "none"' \
      --aptopt='APT::Install-Recommends "false"' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook="copy-in $HELPER /usr/local/bin" \
      --customize-hook='chmod 0755 "$1"/usr/local/bin/mcpod-with-build-ca' \
      --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log' \
      "$SUITE" "$tmp/rootfs.tar" \
      "deb $MIRROR $SUITE main" \
      "deb $MIRROR $SUITE-updates main" \
      "deb $SECURITY_MIRROR $SUITE-security main" \
      >"$tmp/mmdebstrap.log" 2>&1; then
  tail -n 40 "$tmp/mmdebstrap.log" >&2
  die "mmdebstrap failed (last 40 lines of its log above); is $MIRROR reachable?"
fi

if ! id=$(podman import \
      --change 'CMD ["/bin/bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change "LABEL mcpod.dev/build-hash=$hash" \
      --message "mcpod base: mmdebstrap --variant=minbase $SUITE" \
      "$tmp/rootfs.tar" "$IMAGE" 2>"$tmp/import.log"); then
  cat "$tmp/import.log" >&2
  die "podman import failed"
fi
id=${id#sha256:}

# Drop the image this one replaces, unless something still uses it (a tag, a container,
# or images built on it: they keep it until they are rebuilt).
if [ -n "$old_id" ] && [ "$old_id" != "$id" ]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true
fi

echo "base: built in $(( $(date +%s) - start ))s (${id:0:12})"
