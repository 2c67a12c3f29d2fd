#!/usr/bin/env bash
# The packaging tests (issue #14), run by .ci/run as root: the container image built and run
# from its exported root filesystem, the compose federation and the Kubernetes manifests
# validated offline, and the Debian package installed, used as deploy/RUNBOOK.md says
# ("Install a node"), and purged. Installs what it needs: podman (Debian), podman-compose and
# kubernetes-validate (PyPI).
#     deploy/package-tests.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n--> %s\n' "$*"; }
[ "$(id -u)" = 0 ] || fail "needs root (chroot, dpkg -i, a system user)"

step "tools: podman, podman-compose, kubernetes-validate"
if ! command -v podman >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends podman; } >/tmp/enlace-podman-apt.log 2>&1 \
        || { cat /tmp/enlace-podman-apt.log >&2; fail "cannot install podman"; }
fi
python3 -m pip install -q --disable-pip-version-check podman-compose==1.6.0 kubernetes-validate==1.37.0 \
    || fail "cannot install podman-compose and kubernetes-validate from PyPI"
podman --version

step "container image: deploy/container/build.sh, then deploy/container/test.sh"
deploy/container/build.sh localhost/enlace:ci
deploy/container/test.sh localhost/enlace:ci

step "compose: podman-compose config, and every node hardened"
(cd deploy/compose && podman-compose config >/tmp/enlace-compose.yaml)
python3 - /tmp/enlace-compose.yaml <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
services = c["services"]
nodes = ["dea-1", "pgr-1", "afi-1", "cenapi-1"]
# (the `cli` service is in profile "cli", which `config` leaves out unless asked)
assert set(nodes) | {"pki"} == set(services), sorted(services)
for n in nodes:
    s = services[n]
    assert s["read_only"] is True and s["user"] == "65532:65532", n
    assert s["cap_drop"] == ["ALL"] and "no-new-privileges:true" in s["security_opt"], n
    assert s["healthcheck"]["test"][:3] == ["CMD", "/usr/bin/enlace", "health"], n
    assert s["depends_on"]["pki"]["condition"] == "service_completed_successfully", n
    assert s["command"] == ["--config", f"/etc/enlace/config/{n}.toml"], n
    vols = [str(v) for v in s["volumes"]]
    assert any(v.endswith(":/etc/enlace/pki:ro") for v in vols), (n, vols)
    assert any(v.endswith(":/etc/enlace/config:ro") for v in vols), (n, vols)
    assert any(v.endswith(f"{n}-data:/var/lib/enlace") for v in vols), (n, vols)
assert "--if-missing" in services["pki"]["entrypoint"]
print("ok: 4 nodes, read-only, user 65532, no capabilities, health checked, PKI job first")
PY

step "kubernetes: kubernetes-validate --strict, and the ConfigMap's config checks"
kubernetes-validate --strict --quiet deploy/k8s/enlace-node.yaml
echo "ok: deploy/k8s/enlace-node.yaml validates (Kubernetes $(kubernetes-validate --version))"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/enlace pki demo --dir "$work/pki" >/dev/null
python3 - deploy/k8s/enlace-node.yaml "$work" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = next(d for d in docs if d["kind"] == "ConfigMap")
work = sys.argv[2]
toml = cm["data"]["enlaced.toml"]
for mounted, real in [
    ("/etc/enlace/tls/node.pem", f"{work}/pki/nodes/dea/dea-1.pem"),
    ("/etc/enlace/tls/node.key.pem", f"{work}/pki/nodes/dea/dea-1.key.pem"),
    ("/etc/enlace/tls/root.pem", f"{work}/pki/ca/root.pem"),
    ("/etc/enlace/crl", f"{work}/pki/crl"),
    ("/var/lib/enlace", f"{work}/data"),
]:
    assert mounted in toml, mounted
    toml = toml.replace(mounted, real)
open(f"{work}/enlaced.toml", "w").write(toml)
open(f"{work}/policy.toml", "w").write(cm["data"]["policy.toml"])
sts = next(d for d in docs if d["kind"] == "StatefulSet")
pod = sts["spec"]["template"]["spec"]
assert pod["terminationGracePeriodSeconds"] >= 5 + 1 + 5, "grace: drain, close, margin"
PY
target/release/enlaced --check-config --config "$work/enlaced.toml" >/dev/null \
    || fail "the ConfigMap's enlaced.toml does not pass enlaced --check-config"
echo "ok: the ConfigMap's enlaced.toml passes enlaced --check-config"

step "cargo install --path . (the README's way; reusing this checkout's release build)"
CARGO_TARGET_DIR=target cargo install --locked --quiet --path . --root "$work/cargo-root"
"$work/cargo-root/bin/enlaced" --version && "$work/cargo-root/bin/enlace" --version

step "debian package: build, install, use, purge"
deploy/deb/build.sh
deb=$(ls target/deb/enlace_*.deb)
if getent passwd enlace >/dev/null || [ -e /etc/enlace ] || [ -e /var/lib/enlace ]; then
    fail "this machine already has an enlace user, /etc/enlace or /var/lib/enlace"
fi
node_pid=
cleanup_deb() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
    dpkg --purge enlace >/dev/null 2>&1 || true
    rm -rf /etc/enlace /var/lib/enlace "$work"
    userdel enlace 2>/dev/null || true
    groupdel enlace 2>/dev/null || true
}
trap cleanup_deb EXIT
dpkg -i "$deb"
getent passwd enlace >/dev/null || fail "no system user enlace"
[ "$(stat -c '%U:%G %a' /var/lib/enlace)" = "enlace:enlace 750" ] || fail "/var/lib/enlace: $(stat -c '%U:%G %a' /var/lib/enlace)"
[ "$(stat -c '%U:%G %a' /etc/enlace)" = "root:enlace 750" ] || fail "/etc/enlace: $(stat -c '%U:%G %a' /etc/enlace)"
for f in /usr/bin/enlaced /usr/bin/enlace /lib/systemd/system/enlaced.service \
    /usr/share/man/man8/enlaced.8.gz /usr/share/man/man1/enlace.1.gz \
    /usr/share/man/man1/enlace-send.1.gz /usr/share/bash-completion/completions/enlace \
    /usr/share/zsh/vendor-completions/_enlace /usr/share/fish/vendor_completions.d/enlace.fish \
    /usr/share/doc/enlace/RUNBOOK.md; do
    [ -s "$f" ] || fail "the package did not install $f"
done
grep -q '^ExecStart=/usr/bin/enlaced ' /lib/systemd/system/enlaced.service || fail "unit paths"
zcat /usr/share/man/man8/enlaced.8.gz | grep -q 'check\\-config' || fail "enlaced's man page"
bash -c 'source /usr/share/bash-completion/completions/enlace && complete -p enlace' >/dev/null \
    || fail "the bash completion does not load"
echo "ok: installed $(basename "$deb"): user, directories, unit, man pages, completions"

# The runbook's "Install a node", as written there.
enlace pki demo --dir /etc/enlace/pki >/dev/null
chgrp -R enlace /etc/enlace/pki && chmod -R g+rX /etc/enlace/pki
cp /usr/share/doc/enlace/examples/dea-1.toml /etc/enlace/enlaced.toml
cp /usr/share/doc/enlace/examples/dea-1.policy.toml /etc/enlace/
runuser -u enlace -- enlaced --check-config --config /etc/enlace/enlaced.toml \
    || fail "enlaced --check-config from the package, as the enlace user"
# setpriv execs the node (runuser would stay its parent and turn SIGTERM into 143).
setpriv --reuid=enlace --regid=enlace --init-groups \
    enlaced --config /etc/enlace/enlaced.toml 2>/tmp/enlace-deb-node.log &
node_pid=$!
ready=
for _ in $(seq 1 100); do
    if enlace health --ready >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ready" ] || { cat /tmp/enlace-deb-node.log >&2; fail "the installed node never became ready"; }
kill -TERM "$node_pid"
status=0
wait "$node_pid" || status=$?
node_pid=
[ "$status" = 0 ] || { cat /tmp/enlace-deb-node.log >&2; fail "enlaced exited $status on SIGTERM"; }
[ "$(stat -c %U /var/lib/enlace/dea-1/store)" = enlace ] || fail "the store is not the node user's"
echo "ok: the installed node ran as enlace, was ready, and stopped cleanly"
dpkg --purge enlace >/dev/null
[ ! -e /usr/bin/enlaced ] || fail "purge left /usr/bin/enlaced"
[ -d /var/lib/enlace/dea-1/store ] || fail "purge removed the node's data"
echo "ok: purged; the node's data was kept"
echo
echo "packaging tests passed"
