#!/usr/bin/env bash
# Builds mcpod's MCP server images with Podman, from images/<name>/Containerfile, as
# localhost/mcpod/<name>:latest. No container registry is needed: everything starts from
# localhost/mcpod/base:latest, which scripts/build-base.sh makes with mmdebstrap.
#
# Usage: scripts/build-images.sh [--force] [NAME...]
#   NAME     filesystem memory everything sequentialthinking time fetch git (default: all
#            seven), or one of the intermediate images python-base node-base node-build base
#   --force  rebuild the named images even if they are up to date (not their bases)
# Environment:
#   MCPOD_CA_BUNDLE  path of a PEM CA bundle to trust while building (apt, pip, npm), for
#                    networks behind a TLS-intercepting proxy. Unset: no extra CA.
#                    It is mounted into the build steps only, never stored in an image.
#   MCPOD_DEBIAN_MIRROR, MCPOD_DEBIAN_SECURITY_MIRROR: see scripts/build-base.sh.
#
# An image is reused when localhost/mcpod/<name>:latest carries the label
# mcpod.dev/build-hash=<hash>, the hash of the files in images/<name>/ and of the IDs of
# the localhost/mcpod images it is built FROM (so rebuilding a base rebuilds what is on it).
# Prints one line per image, e.g. "memory: built in 21s (ID)" or "memory: cached in 0s (ID)".
# Exits non-zero with the tail of the build log if any build fails.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
images_dir="$root/images"
ALL_SERVERS=(filesystem memory everything sequentialthinking time fetch git)
PREFIX=localhost/mcpod

die() { echo "build-images: ERROR: $*" >&2; exit 1; }

force=0
names=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) die "unknown option: $arg (see --help)" ;;
    *) names+=("$arg") ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${ALL_SERVERS[@]}")
for name in "${names[@]}"; do
  [ "$name" = base ] || [ -f "$images_dir/$name/Containerfile" ] \
    || die "unknown image '$name': no $images_dir/$name/Containerfile (known: ${ALL_SERVERS[*]} python-base node-base node-build base)"
done

command -v podman >/dev/null 2>&1 || die "podman not found (Debian: apt-get install podman; or run scripts/install-deps.sh)"
command -v flock >/dev/null 2>&1 || die "flock not found (Debian: apt-get install util-linux)"

ca_args=()
if [ -n "${MCPOD_CA_BUNDLE:-}" ]; then
  [ -f "$MCPOD_CA_BUNDLE" ] && [ -r "$MCPOD_CA_BUNDLE" ] && [ -s "$MCPOD_CA_BUNDLE" ] \
    || die "MCPOD_CA_BUNDLE=$MCPOD_CA_BUNDLE is not a readable, non-empty file"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$MCPOD_CA_BUNDLE" \
    || die "MCPOD_CA_BUNDLE=$MCPOD_CA_BUNDLE holds no PEM certificate"
  # Read by /usr/local/bin/mcpod-with-build-ca (images/base/) in the RUN steps.
  ca_args=(--volume "$(readlink -f "$MCPOD_CA_BUNDLE"):/run/mcpod-build-ca.crt:ro")
fi

# One build at a time: concurrent runs would race on the same tags.
exec 9>/var/tmp/mcpod-build.lock
if ! flock -n 9; then
  echo "build-images: waiting for another build to finish (lock /var/tmp/mcpod-build.lock)" >&2
  flock 9
fi
export MCPOD_BUILD_LOCK_HELD=1

logdir=$(mktemp -d /var/tmp/mcpod-build-images.XXXXXX)
trap 'rm -rf "$logdir"' EXIT

declare -A done_=()    # name -> 1 once built or found up to date in this run
declare -A visiting=() # cycle guard

image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# The localhost/mcpod images that images/$1/Containerfile is built FROM, by short name.
deps_of() {
  local ref
  for ref in $(awk 'toupper($1) == "FROM" { print $2 }' "$images_dir/$1/Containerfile"); do
    case "$ref" in
      "$PREFIX"/*:latest) ref=${ref#"$PREFIX"/}; echo "${ref%:latest}" ;;
      "$PREFIX"/*) die "$1: FROM $ref: use the :latest tag of localhost/mcpod images" ;;
      *) die "$1: FROM $ref is not a $PREFIX image; there is no registry to pull it from" ;;
    esac
  done | sort -u
}

build() {
  local name=$1 force_this=$2
  [ -n "${done_[$name]:-}" ] && return 0
  [ -z "${visiting[$name]:-}" ] || die "$name: circular FROM"
  visiting[$name]=1

  if [ "$name" = base ]; then
    local base_args=()
    [ "$force_this" = 1 ] && base_args=(--force)
    "$here/build-base.sh" "${base_args[@]}" || die "base: scripts/build-base.sh failed"
    done_[$name]=1
    return 0
  fi

  local dir="$images_dir/$name"
  [ -f "$dir/Containerfile" ] \
    || die "unknown image '$name': no $dir/Containerfile (known: ${ALL_SERVERS[*]} python-base node-base node-build base)"

  local deps dep
  deps=$(deps_of "$name")
  for dep in $deps; do build "$dep" 0; done

  # Hash of the build inputs: every file of the image's directory (name and content), and
  # the IDs of the images it starts FROM.
  local hash
  hash=$(
    cd "$dir"
    echo "mcpod-build-hash v1"
    find . -type f ! -name '*~' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    for dep in $deps; do echo "FROM $dep $(image_id "$PREFIX/$dep:latest")"; done
  )
  hash=$(printf '%s\n' "$hash" | sha256sum | cut -c1-32)

  local image="$PREFIX/$name:latest" old_id old_hash
  old_id=$(image_id "$image")
  if [ "$force_this" = 0 ] && [ -n "$old_id" ]; then
    old_hash=$(podman image inspect --format '{{index .Labels "mcpod.dev/build-hash"}}' "$image" 2>/dev/null || true)
    if [ "$old_hash" = "$hash" ]; then
      echo "$name: cached in 0s (${old_id:0:12})"
      done_[$name]=1
      return 0
    fi
  fi

  local start log="$logdir/$name.log"
  start=$(date +%s)
  # --layers=false: one new layer per image and no dangling intermediate/stage images;
  # reuse comes from the build hash instead of podman's per-instruction cache.
  if ! podman build \
        --pull=never \
        --layers=false \
        ${ca_args[@]+"${ca_args[@]}"} \
        --build-arg "MCPOD_BUILD_HASH=$hash" \
        --tag "$image" \
        --file "$dir/Containerfile" \
        "$dir" >"$log" 2>&1; then
    echo "----- last 60 lines of the build log of $name -----" >&2
    tail -n 60 "$log" >&2
    echo "-----" >&2
    if [ -z "${MCPOD_CA_BUNDLE:-}" ] && grep -qE 'CERTIFICATE_VERIFY_FAILED|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT|UNABLE_TO_VERIFY_LEAF_SIGNATURE|self.signed certificate' "$log"; then
      echo "build-images: hint: TLS verification failed; behind a TLS-intercepting proxy, set MCPOD_CA_BUNDLE to a CA bundle that trusts it (e.g. MCPOD_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt)" >&2
    fi
    die "building $image from $dir/Containerfile failed after $(( $(date +%s) - start ))s"
  fi
  local id
  id=$(image_id "$image")
  [ -n "$id" ] || die "$image is missing after a successful build"

  # Drop the image this one replaces, unless something still uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$id" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi
  echo "$name: built in $(( $(date +%s) - start ))s (${id:0:12})"
  done_[$name]=1
}

total_start=$(date +%s)
base_force=0
for name in "${names[@]}"; do [ "$name" = base ] && base_force=$force; done
build base "$base_force"
for name in "${names[@]}"; do
  build "$name" "$force"
done
echo "all: done in $(( $(date +%s) - total_start ))s"
