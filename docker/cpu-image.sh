#!/usr/bin/env bash
# Build and run the emotune image on a machine with no GPU and no container registry: the same
# Dockerfile as on GPU clusters, on a Debian base made locally with debootstrap, built and run by
# podman with the runc runtime. The e2e image test uses it; it also works by hand:
#
#   docker/cpu-image.sh build [TAG]      # default tag localhost/emotune:cpu
#   docker/cpu-image.sh run ARGS...      # = podman run --rm ARGS... with the settings below
#
# Cached between runs: the debootstrapped base (a tarball under $EMOTUNE_IMAGE_CACHE, default
# ~/.cache/emotune-image, and the imported image in podman's storage) and podman's layer cache,
# so a rebuild after a code change reinstalls only the package layer.
#
# torch: the CPU build, never the multi-GB CUDA one. From a local wheel directory when one is there
# ($EMOTUNE_TORCH_WHEELS, default /opt/wheels), mounted into the build (not copied into a layer);
# otherwise from PyTorch's CPU index. The version is the host's torch unless EMOTUNE_TORCH is set.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${EMOTUNE_IMAGE_CACHE:-$HOME/.cache/emotune-image}"
suite="${EMOTUNE_IMAGE_SUITE:-bookworm}"
base="localhost/emotune-base:$suite"
mkdir -p "$cache"

# crun (podman's default runtime) cannot set rlimits or use hybrid cgroups in these sandboxes:
# runc + cgroupfs + no default ulimits works.
conf="$cache/containers.conf"
if [ ! -f "$conf" ]; then
  printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\n' > "$conf.tmp"
  mv "$conf.tmp" "$conf"
fi
export CONTAINERS_CONF="$conf"
podman_() { podman --runtime runc "$@"; }

ensure_base() {
  podman_ image exists "$base" && return 0
  local tarball="$cache/debian-$suite-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
    local root
    root="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    echo "debootstrap: a minimal Debian $suite in $root" >&2
    debootstrap --variant=minbase "$suite" "$root" "${EMOTUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
    tar -C "$root" -c . > "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  podman_ import "$tarball" "$base" >/dev/null
}

build() {
  local tag="${1:-localhost/emotune:cpu}"
  ensure_base
  local torch="${EMOTUNE_TORCH:-}"
  if [ -z "$torch" ]; then
    local py="${PYTHON:-python3}"
    local version
    version="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)"
    torch="torch==$version"
  fi
  local wheels="${EMOTUNE_TORCH_WHEELS:-/opt/wheels}"
  local args=(--build-arg "BASE_IMAGE=$base" --build-arg "TORCH_SPEC=$torch" --build-arg DS_BUILD_OPS=0)
  # A network whose HTTPS goes through a proxy with its own CA: hand the host's CA bundle to pip.
  local ca="${EMOTUNE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
  if [ -s "$ca" ]; then
    args+=(-v "$ca:/etc/emotune-host-ca.crt:ro" --build-arg PIP_CERT=/etc/emotune-host-ca.crt)
  fi
  if [ -d "$wheels" ] && ls "$wheels"/torch-*.whl >/dev/null 2>&1; then
    args+=(-v "$(cd "$wheels" && pwd):/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
  else
    args+=(--build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
  fi
  podman_ build --network host "${args[@]}" -t "$tag" .
}

case "${1:-}" in
  build) shift; build "$@" ;;
  run) shift; exec podman --runtime runc run --rm --network host "$@" ;;
  base) ensure_base; echo "$base" ;;
  *) echo "usage: $0 build [TAG] | run PODMAN-RUN-ARGS... | base" >&2; exit 2 ;;
esac
