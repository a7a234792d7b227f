#!/usr/bin/env bash
# Builds the dev cluster's container images with buildah (no Docker engine, no registry) into
# archives in a cache outside the repo, for kumulus.devcluster.images to import into the dev
# node's containerd:
#
#   runner    ghcr.io/kumulus-dev/kumulus-runner:<version>   runner-image/Dockerfile
#   operator  ghcr.io/kumulus-dev/kumulus:<version>          images/operator/Dockerfile
#   pause     kumulus.dev/pause:<version>                    images/pause/ (the Pod sandbox)
#
# The repositories are in devcluster/images.env, <version> is pyproject.toml's. Each image is
# written by `buildah push` as a docker-archive, which names the image in full (so
# `ctr images import` keeps its tag unasked), to <cache>/<name>-<version>-<hash12>.tar, where
# <hash12> is a hash of the image's inputs (its Dockerfile, pyproject.toml, README.md, the
# operator/ tree without __pycache__ and *.egg-info, this script). An image whose archive exists
# for the current hash is not built again: a warm run only hashes. <cache>/manifest.json lists
# the current archive of every image; of the older ones, only the last is kept.
#
# The Python images are FROM debian:bookworm-slim, which cannot be pulled here: when
# docker.io/library/debian:bookworm-slim is not in buildah's storage, make_base makes it with
# mmdebstrap. Every build is `--pull-never --layers --network host`: RUN steps reach the Debian
# mirror and PyPI through the host's network and resolv.conf (buildah sets up no network of its
# own), and a source change rebuilds only the last layer of each Python image. `--force-rm`
# leaves no working container behind when a build fails.
#
#   devcluster/build-images.sh            build what is stale, print the manifest's path
#   devcluster/build-images.sh --force    rebuild every archive (buildah's layer cache still applies)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=devcluster/images.env
. "$here/images.env"
cache=${KUMULUS_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kumulus/images}
logs=$cache/logs
BASE_IMAGE=docker.io/library/debian:bookworm-slim

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

log() { printf '%s\n' "$*" >&2; }

# Temporary folders and buildah containers, removed however the script ends.
tmp_dirs=()
containers=()
cleanup() {
  if [[ ${#containers[@]} -gt 0 ]]; then buildah rm "${containers[@]}" >/dev/null 2>&1 || true; fi
  if [[ ${#tmp_dirs[@]} -gt 0 ]]; then rm -rf "${tmp_dirs[@]}"; fi
}
trap cleanup EXIT

if [[ $(id -u) -ne 0 ]]; then
  log "build-images.sh needs root (buildah's system storage, mmdebstrap's root mode)."
  exit 1
fi

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")

mkdir -p "$cache" "$logs"
# One build at a time per cache (make images, the launcher and the tests may race).
exec 9>"$cache/.lock"
flock 9

# The hash of files and folders (relative to the repo root), their paths included, without
# the files Python and pip generate (the same ones .dockerignore keeps out of the images).
inputs_hash() {
  (cd "$root" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' ! -path '*.egg-info/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12
}

# Runs a build step with its output in $logs/<name>.log; shows the log's end when it fails.
logged() { # name command...
  local name=$1 status=0
  shift
  "$@" >"$logs/$name.log" 2>&1 || status=$?
  if [[ $status -ne 0 ]]; then
    tail -n 40 "$logs/$name.log" >&2
    log "Failed: $* (exit $status; log: $logs/$name.log)."
    exit "$status"
  fi
}

# docker.io/library/debian:bookworm-slim, made locally. Equivalent to Debian's official image,
# which is built the same way from the same archive: the minbase variant of bookworm (the
# Essential and Priority: required packages plus apt) at the current versions of bookworm,
# bookworm-updates and bookworm-security; merged /usr through usr-is-merged (mmdebstrap's
# merged-usr hook), not the usrmerge package and its perl; the "slim" dpkg filters
# (images/base/slim.dpkg.cfg: no documentation but licences, manual pages or translations, also
# removed from the Essential packages, which are unpacked before the filters apply); the official
# apt settings (images/base/container.apt.conf) and deb822 sources (images/base/debian.sources);
# a policy-rc.d that keeps packages from starting services; empty package lists and apt cache;
# no /dev entries, resolv.conf or hostname of the build host (the runtime provides them); the
# same config (PATH, CMD bash).
make_base() {
  local start=$SECONDS work ctr mnt
  log "Making $BASE_IMAGE with mmdebstrap (log: $logs/base.log) ..."
  work=$(mktemp -d "${TMPDIR:-/tmp}/kumulus-base.XXXXXX")
  tmp_dirs+=("$work")
  # shellcheck disable=SC2016 # the hooks expand $1 (the new root) themselves
  logged base mmdebstrap --variant=minbase --mode=root --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt="$root/images/base/slim.dpkg.cfg" \
    --aptopt="$root/images/base/container.apt.conf" \
    --customize-hook='cd "$1/usr/share" && find doc -mindepth 1 ! -type d ! -name copyright -delete && find doc -mindepth 1 -type d -empty -delete && rm -rf man/* info/* groff/* lintian/* linda/* locale/*' \
    --customize-hook='rm -f "$1/etc/apt/sources.list" "$1/etc/resolv.conf" "$1/etc/hostname"' \
    --customize-hook="upload $root/images/base/debian.sources /etc/apt/sources.list.d/debian.sources" \
    --customize-hook='printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d" && chmod 755 "$1/usr/sbin/policy-rc.d"' \
    bookworm "$work/rootfs-dev.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mmtarfilter --path-exclude='/dev/*' <"$work/rootfs-dev.tar" >"$work/rootfs.tar"
  ctr=$(buildah from scratch)
  containers+=("$ctr")
  mnt=$(buildah mount "$ctr")
  tar -xpf "$work/rootfs.tar" -C "$mnt" --numeric-owner --xattrs --xattrs-include='*'
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["bash"]' "$ctr"
  buildah commit --quiet "$ctr" "$BASE_IMAGE" >/dev/null
  log "Made $BASE_IMAGE in $((SECONDS - start)) s."
}

ensure_base() {
  buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 || make_base
}

# A CA bundle lent to pip in the dependency step (the Dockerfiles' optional secret
# "build-ca"): the one the host's pip trusts, for hosts behind a TLS-inspecting proxy.
build_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
secret_args=()
if [[ -s $build_ca ]]; then secret_args=(--secret "id=build-ca,src=$build_ca"); fi

build_python_image() { # key ref dockerfile
  ensure_base
  logged "$1" buildah bud --layers --force-rm --pull-never --network host "${secret_args[@]}" \
    -f "$root/$3" -t "$2" "$root"
}

build_pause_image() { # key ref
  local ctx
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/kumulus-pause.XXXXXX")
  tmp_dirs+=("$ctx")
  gcc -static -O2 -s -Wall -Wextra -Werror -o "$ctx/pause" "$root/images/pause/pause.c"
  cp "$root/images/pause/Dockerfile" "$ctx/Dockerfile"
  logged "$1" buildah bud --layers --force-rm --pull-never --network host -f "$ctx/Dockerfile" -t "$2" "$ctx"
}

manifest_rows=()

# Builds one image unless its archive for the current inputs exists; records it for the manifest.
image() { # key repository build-function hash build-args...
  local key=$1 repo=$2 build=$3 hash=$4
  shift 4
  local ref=$repo:$version name=${repo##*/}
  local archive=$cache/$name-$version-$hash.tar
  if [[ $force -eq 1 || ! -s $archive ]]; then
    local start=$SECONDS
    log "Building $ref (log: $logs/$key.log) ..."
    "$build" "$key" "$ref" "$@"
    rm -f "$archive.tmp"
    buildah push --quiet "$ref" "docker-archive:$archive.tmp:$ref" >/dev/null
    mv "$archive.tmp" "$archive"
    # Keep this archive and the one before it (a containerd may be importing that right now).
    find "$cache" -maxdepth 1 -name "$name-[0-9]*.tar" -printf '%T@ %p\n' | sort -rn |
      tail -n +3 | cut -d' ' -f2- | xargs -r -d '\n' rm -f --
    log "Built $ref in $((SECONDS - start)) s: $archive"
  fi
  manifest_rows+=("$key" "$ref" "$archive" "$hash")
}

# All hashes first, from one look at the tree.
common=(pyproject.toml README.md operator .dockerignore devcluster/images.env devcluster/build-images.sh)
runner_hash=$(inputs_hash runner-image/Dockerfile "${common[@]}")
operator_hash=$(inputs_hash images/operator/Dockerfile "${common[@]}")
pause_hash=$(inputs_hash images/pause devcluster/images.env devcluster/build-images.sh)
image runner "$RUNNER_IMAGE" build_python_image "$runner_hash" runner-image/Dockerfile
image operator "$OPERATOR_IMAGE" build_python_image "$operator_hash" images/operator/Dockerfile
image pause "$PAUSE_IMAGE" build_pause_image "$pause_hash"

# manifest.json: {"images": [{"key", "image", "archive", "inputs", "format"}, ...]}
python3 - "$cache/manifest.json" "${manifest_rows[@]}" <<'EOF'
import json, os, sys
path, rows = sys.argv[1], sys.argv[2:]
images = [
    {"key": k, "image": i, "archive": a, "inputs": h, "format": "docker-archive"}
    for k, i, a, h in zip(rows[0::4], rows[1::4], rows[2::4], rows[3::4])
]
with open(path + ".tmp", "w") as f:
    json.dump({"images": images}, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
EOF
echo "$cache/manifest.json"
