#!/usr/bin/env bash
# Installs what mcpod's build and tests need on a fresh Debian 12 machine (run as root),
# and configures Podman for hosts like CI's. Idempotent.
set -euo pipefail

need_apt=()
for pkg in podman runc conmon netavark aardvark-dns iptables slirp4netns fuse-overlayfs \
           catatonit uidmap mmdebstrap ca-certificates util-linux prometheus; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# What `make image` and the tests use besides: strip (binutils), git, systemd-analyze (systemd).
for pkg in binutils git systemd; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Podman settings mcpod's hosts need:
# - runc: crun refuses hybrid cgroup v1 hosts ("cgroups in hybrid mode not supported");
# - explicit ulimits: Podman's defaults exceed a 20000 nofile hard limit (EPERM);
# - netavark: a stray CNI config must not pick the CNI backend.
conf=/etc/containers/containers.conf.d/50-mcpod.conf
if [ ! -f "$conf" ]; then
  mkdir -p "$(dirname "$conf")"
  cat > "$conf" <<'CONF'
# Written by mcpod's scripts/install-deps.sh.
[containers]
default_ulimits = ["nofile=10240:10240", "nproc=4096:4096"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
CONF
  echo "install-deps: wrote $conf"
fi

podman info --format 'install-deps: podman {{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupsVersion}}' 2>/dev/null
