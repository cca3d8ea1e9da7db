#!/usr/bin/env bash
# Make a local base image for the Dockerfile's PYTHON_IMAGE from Debian packages, for sites where no
# container registry answers:
#   deploy/docker/offline-base.sh [IMAGE]        (default: se-onnx-base:bookworm, or $SE_ONNX_BASE_IMAGE)
#   docker build --build-arg PYTHON_IMAGE=se-onnx-base:bookworm -t se-onnx:0.1.0 .
# The image is a minimal Debian bookworm (python3 3.11, venv, pip) made with debootstrap from the
# host's Debian mirror, trusting the host's extra CA certificates so that pip inside the build can
# reach the package index through a TLS-intercepting proxy. Idempotent: an existing image is kept.
# Needs root (debootstrap, chroot), debootstrap and a running Docker engine.
# Environment: SE_ONNX_BASE_IMAGE (image name), DEBIAN_MIRROR (default: the host's apt sources),
# DEBIAN_SUITE (default bookworm), DOCKER (the docker CLI).
set -euo pipefail

IMAGE="${1:-${SE_ONNX_BASE_IMAGE:-se-onnx-base:bookworm}}"
SUITE="${DEBIAN_SUITE:-bookworm}"
# Debian's CLI has BuildKit built in; another one on PATH may not (see deploy/docker/smoke.sh).
DOCKER="${DOCKER:-$([ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker)}"

log() { echo "offline-base: $*"; }
fail() {
    echo "offline-base: FAIL: $*" >&2
    exit 1
}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE exists; nothing to do"
    exit 0
fi

host_mirror() {
    # deb822 sources (Debian 12) first, then the one-line format.
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
            /etc/apt/sources.list 2>/dev/null || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror)}"

[ "$(id -u)" -eq 0 ] || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap not installed (apt-get install -y debootstrap)"

ROOTFS=$(mktemp -d /tmp/se-onnx-rootfs.XXXXXX)
# The rootfs is only an intermediate: the image holds a copy.
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS"
start=$(date +%s)
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 ||
    {
        tail -20 "$ROOTFS.log" >&2
        fail "debootstrap failed (log: $ROOTFS.log)"
    }
rm -f "$ROOTFS.log"

# The host's extra CA certificates, trusted in the image (pip in the build verifies against them).
shopt -s nullglob
extra=(/usr/local/share/ca-certificates/*.crt)
if [ ${#extra[@]} -gt 0 ]; then
    cp "${extra[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
    # Quiet: its rehash warns about the bundle file itself, which is harmless.
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates failed in the rootfs"
    log "trusted ${#extra[@]} extra CA certificate(s) from the host"
fi
# Package lists and caches are not needed in a base image.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb

# `docker import` keeps no environment: without PATH, RUN cannot find groupadd. PIP_CERT makes pip
# use the system bundle (with the extra certificates) instead of its own.
tar -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
size=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")
log "made $IMAGE ($((size / 1000000)) MB, python $("$DOCKER" run --rm "$IMAGE" python3 -c 'import platform; print(platform.python_version())')) in $(($(date +%s) - start)) s"
