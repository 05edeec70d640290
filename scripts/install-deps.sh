#!/usr/bin/env bash
# Installs what mcpod's build and tests need on a fresh Debian 12 machine (run as root),
# and configures Podman for hosts like CI's. Idempotent.
set -euo pipefail

need_apt=()
for pkg in podman runc conmon netavark aardvark-dns iptables slirp4netns fuse-overlayfs \
           catatonit uidmap mmdebstrap ca-certificates util-linux prometheus; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# What `make image` and the tests use besides: strip (binutils), git, systemd-analyze (systemd),
# a real browser for the cross-site and dashboard tests (chromium, the latter via puppeteer-core).
for pkg in binutils git systemd chromium; do
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

# Subordinate ids, so no two servers share a host uid (a fork bomb or a per-uid limit
# then stays inside one container):
# - mcpod:      the span mcpod's default `--user-namespace per-server` picks each
#               server's 65536 ids from (2^30 .. 2^31), reserved so nothing else uses it;
# - containers: the span Podman's `userns=auto` picks from (`--user-namespace auto`).
for file in /etc/subuid /etc/subgid; do
  touch "$file"
  for range in mcpod:1073741824:1073741824 containers:2147483648:2147483648; do
    grep -q "^${range%%:*}:" "$file" || { echo "$range" >> "$file"; echo "install-deps: added $range to $file"; }
  done
done

podman info --format 'install-deps: podman {{.Version.Version}}, runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupsVersion}}' 2>/dev/null
