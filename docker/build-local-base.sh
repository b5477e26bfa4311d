#!/usr/bin/env bash
# Build a local base image where public images cannot be pulled (README "Docker"):
# debootstrap a minimal Debian with Python and venv, import it into Docker as $1
# (default pad-base:bookworm), and stage the host's CA bundle and torch CPU wheel for the build.
#
#   sudo docker/build-local-base.sh [image] [torch wheel]
#   docker build --build-arg BASE=pad-base:bookworm \
#       --build-arg TORCH=docker/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl \
#       --build-arg TORCH_INDEX= --build-arg PIP_CERT=docker/ca/ca-bundle.crt -t pad-lightning .
set -euo pipefail
IMAGE=${1:-pad-base:bookworm}
WHEEL=${2:-$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1)}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$IMAGE"
mkdir -p "$HERE/ca" "$HERE/wheels"
cp /etc/ssl/certs/ca-certificates.crt "$HERE/ca/ca-bundle.crt"
if [ -n "$WHEEL" ]; then cp "$WHEEL" "$HERE/wheels/"; fi
echo "base image $IMAGE; CA bundle in docker/ca/, torch wheel in docker/wheels/"
