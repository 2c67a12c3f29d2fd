#!/usr/bin/env bash
# Builds the Enlace node image from this checkout, with one command:
#     deploy/container/build.sh [image-name]      (default: localhost/enlace:latest)
# It compiles enlaced and enlace (release, --locked), stages them with the libraries they link
# and a passwd entry for the `enlace` user (65532) in a root filesystem, and assembles the image
# from deploy/container/Containerfile with podman (or docker, if podman is not installed).
# ENLACE_ROOTFS_ONLY=1 stages the root filesystem and stops (no container engine needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
image=${1:-localhost/enlace:latest}

cargo build --release --locked --bin enlaced --bin enlace

ctx=target/container
rm -rf "$ctx"
# /etc/enlace/pki and /var/lib/enlace are not in rootfs/: the Containerfile's COPY --chown
# creates them, owned by the user (their parents stay root's).
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc/enlace/config" "$ctx/rootfs/var/lib" \
    "$ctx/mounts/pki" "$ctx/mounts/data"
for bin in enlaced enlace; do
    # Symbols and debug information stay in the build; the image gets the code.
    strip -o "$ctx/rootfs/usr/bin/$bin" "target/release/$bin"
done
# The shared libraries the binaries load (and the loader itself), at the paths they are
# loaded from.
libs=$(ldd target/release/enlaced target/release/enlace |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || { echo "error: ldd found no libraries" >&2; exit 1; }
for lib in $libs; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
cat >"$ctx/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
enlace:x:65532:65532:Enlace node:/var/lib/enlace:/sbin/nologin
PASSWD
cat >"$ctx/rootfs/etc/group" <<'GROUP'
root:x:0:
enlace:x:65532:
GROUP
chmod -R go-w "$ctx/rootfs"
cp deploy/container/Containerfile "$ctx/Containerfile"

if [ "${ENLACE_ROOTFS_ONLY:-}" = 1 ]; then
    echo "staged $ctx/rootfs and $ctx/mounts"
    exit 0
fi
if command -v podman >/dev/null; then
    # Docker format, so that the HEALTHCHECK is kept (the OCI format has none).
    podman build --format docker -t "$image" -f "$ctx/Containerfile" "$ctx"
    size=$(podman image inspect "$image" --format '{{.Size}}')
elif command -v docker >/dev/null; then
    docker build -t "$image" -f "$ctx/Containerfile" "$ctx"
    size=$(docker image inspect "$image" --format '{{.Size}}')
else
    echo "error: neither podman nor docker is installed (apt-get install podman)" >&2
    exit 1
fi
echo "built $image: $((size / 1024 / 1024)) MiB"
