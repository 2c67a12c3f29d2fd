#!/usr/bin/env bash
# Tests the image deploy/container/build.sh built, as far as this machine allows: containers
# may not run here (crun cannot set its rlimits in this VM), so the image's root filesystem is
# exported and its binaries run from it with chroot, as the image's user. Checks: the image's
# settings (user, entrypoint, health check, volumes), that it holds no shell, that `enlace pki
# demo` and `enlaced --check-config` work from it for the four deploy/ configs, and that a node
# started from it on a read-only root (the data directory a writable mount, as a volume would be)
# answers `enlace health --ready` and stops cleanly on SIGTERM. Needs root.
#     deploy/container/test.sh [image-name]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
image=${1:-localhost/enlace:latest}
fail() { echo "FAIL: $*" >&2; exit 1; }

inspect() { podman image inspect "$image" --format "$1"; }
[ "$(inspect '{{.Config.User}}')" = "65532:65532" ] || fail "the image's user is not 65532:65532"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["/usr/bin/enlaced"]' ] || fail "entrypoint"
inspect '{{json .Config.Healthcheck}}' | grep -q '/usr/bin/enlace' || fail "no health check"
for v in /etc/enlace/config /etc/enlace/pki /var/lib/enlace; do
    inspect '{{json .Config.Volumes}}' | grep -q "\"$v\"" || fail "no volume $v"
done
echo "ok: image settings (user 65532, entrypoint enlaced, health check, volumes)"

root=$(mktemp -d)
chmod 755 "$root"
node_pid=
mounted=
log=
data=
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
    if [ -n "$mounted" ]; then
        umount "$root/var/lib/enlace" 2>/dev/null || true
        umount "$root" 2>/dev/null || true
    fi
    podman rm -f enlace-image-test >/dev/null 2>&1 || true
    rm -rf "$root" ${log:+"$log"} ${data:+"$data"}
}
trap cleanup EXIT
podman create --name enlace-image-test "$image" >/dev/null
podman export enlace-image-test | tar -x -C "$root"
for sh in bin/sh bin/bash usr/bin/sh; do
    [ ! -e "$root/$sh" ] || fail "the image holds a shell: /$sh"
done
for path in etc etc/enlace etc/enlace/config var var/lib usr/bin usr/bin/enlaced etc/passwd; do
    [ "$(stat -c %u "$root/$path")" = 0 ] || fail "/$path is not root's"
done
for path in etc/enlace/pki var/lib/enlace; do
    [ "$(stat -c %u "$root/$path")" = 65532 ] || fail "/$path is not the user's"
done
echo "ok: exported the root filesystem ($(du -sh "$root" | cut -f1)); no shell in it; the user owns only /etc/enlace/pki and /var/lib/enlace"

as_user() { chroot --userspec=65532:65532 "$root" "$@"; }
as_user /usr/bin/enlace --version
as_user /usr/bin/enlace pki demo --dir /etc/enlace/pki --if-missing >/dev/null
as_user /usr/bin/enlace pki demo --dir /etc/enlace/pki --if-missing | grep -q "kept the PKI" \
    || fail "pki demo --if-missing replaced an existing PKI"
cp deploy/*.toml "$root/etc/enlace/config/"
for node in dea-1 pgr-1 afi-1 cenapi-1; do
    as_user /usr/bin/enlaced --check-config --config "/etc/enlace/config/$node.toml" >/dev/null \
        || fail "enlaced --check-config for $node"
done
echo "ok: enlace pki demo and enlaced --check-config (4 nodes) from the image"

# As the image runs: the root filesystem read-only, /var/lib/enlace (a volume) writable.
log=$(mktemp)
data=$(mktemp -d)
chown 65532:65532 "$data"
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$data" "$root/var/lib/enlace"
mounted=1
if as_user /usr/bin/enlace pki demo --dir /etc/enlace/pki-2 >/dev/null 2>&1; then
    fail "the root filesystem is writable"
fi
# chroot itself, not a function, in the background: $! is then the node's own pid (chroot
# execs it), which SIGTERM reaches.
chroot --userspec=65532:65532 "$root" /usr/bin/enlaced --config /etc/enlace/config/dea-1.toml \
    </dev/null >/dev/null 2>"$log" &
node_pid=$!
ready=
for _ in $(seq 1 100); do
    if as_user /usr/bin/enlace health --ready >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ready" ] || { cat "$log" >&2; fail "the node from the image never became ready"; }
as_user /usr/bin/enlace health --ready
kill -TERM "$node_pid"
status=0
wait "$node_pid" || status=$?
node_pid=
[ "$status" = 0 ] || { cat "$log" >&2; fail "enlaced exited $status on SIGTERM"; }
[ -d "$data/dea-1/store" ] || fail "no store under /var/lib/enlace/dea-1"
echo "ok: a node from the image, on a read-only root, became ready, then stopped cleanly on SIGTERM"
