#!/usr/bin/env bash
# Builds the Debian package of Enlace from this checkout:
#     deploy/deb/build.sh            -> target/deb/enlace_<version>_<arch>.deb
# It holds enlaced and enlace in /usr/bin, the hardened systemd unit (deploy/enlaced.service,
# with the binaries' paths), the shell completions and man pages generated from the CLI
# definitions, the annotated example configs and the runbook; its maintainer scripts create the
# system user `enlace`, /etc/enlace (root:enlace, 0750) and /var/lib/enlace (enlace, 0750).
# Needs dpkg-deb (Debian's dpkg). See deploy/RUNBOOK.md, "Install a node".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cargo build --release --locked --bin enlaced --bin enlace
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
pkg=target/deb/enlace_${version}_${arch}
rm -rf "$pkg" && mkdir -p "$pkg/DEBIAN"
install -d "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/enlace" \
    "$pkg/usr/share/man/man1" "$pkg/usr/share/man/man8" \
    "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
    "$pkg/usr/share/fish/vendor_completions.d" "$pkg/usr/share/doc/enlace/examples"
for bin in enlaced enlace; do
    strip -o "$pkg/usr/bin/$bin" "target/release/$bin"
    chmod 0755 "$pkg/usr/bin/$bin"
done
sed 's|/usr/local/bin/|/usr/bin/|g' deploy/enlaced.service >"$pkg/lib/systemd/system/enlaced.service"
target/release/enlace completions bash >"$pkg/usr/share/bash-completion/completions/enlace"
target/release/enlace completions zsh >"$pkg/usr/share/zsh/vendor-completions/_enlace"
target/release/enlace completions fish >"$pkg/usr/share/fish/vendor_completions.d/enlace.fish"
target/release/enlace manpages "$pkg/usr/share/man/man1"
gzip -9n "$pkg"/usr/share/man/man1/*.1
target/release/enlaced --manpage | gzip -9n >"$pkg/usr/share/man/man8/enlaced.8.gz"
cp deploy/*.toml "$pkg/usr/share/doc/enlace/examples/"
cp deploy/README.md "$pkg/usr/share/doc/enlace/examples/README.md"
cp README.md deploy/RUNBOOK.md "$pkg/usr/share/doc/enlace/"
cat >"$pkg/usr/share/doc/enlace/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: enlace

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

installed_kb=$(du -sk "$pkg" --exclude=DEBIAN | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: enlace
Version: $version
Architecture: $arch
Maintainer: Enlace maintainers <enlace@localhost>
Section: net
Priority: optional
Depends: libc6 (>= 2.34), adduser
Installed-Size: $installed_kb
Description: secure information exchange between law-enforcement agencies
 Enlace carries typed, signed messages between agency nodes over mutually
 authenticated QUIC: time-sensitive alerts ahead of everything else, and a
 durable queue for analytical data, with a tamper-evident delivery log.
 This package holds the node daemon (enlaced), its systemd unit, and the CLI
 (enlace).
CONTROL

cat >"$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    install -d -m 0750 /var/lib/enlace
    if ! getent passwd enlace >/dev/null; then
        adduser --system --group --home /var/lib/enlace --no-create-home \
            --shell /usr/sbin/nologin --gecos "Enlace node" enlace >/dev/null
    fi
    # The node's config and keys: readable by the group, writable by root only.
    chown root:enlace /etc/enlace
    chmod 0750 /etc/enlace
    # The node's store and delivery log: the only path the unit lets it write.
    chown enlace:enlace /var/lib/enlace
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        # A running node (an upgrade) is restarted on the new binary; a new install is not
        # started: it needs /etc/enlace/enlaced.toml and its PKI first (see the runbook).
        if systemctl is-active --quiet enlaced; then
            systemctl restart enlaced
        fi
    fi
fi
exit 0
POSTINST
cat >"$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
# Stopping drains the queues for shutdown_grace_ms; what is still queued stays in
# /var/lib/enlace and goes out after the next start.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop enlaced >/dev/null 2>&1 || true
fi
exit 0
PRERM
cat >"$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
# Purging keeps /var/lib/enlace (messages held for others, and the delivery log auditors may
# ask for) and /etc/enlace (keys): remove them by hand once they are no longer needed.
exit 0
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
find "$pkg" -type d -exec chmod 0755 {} +
dpkg-deb --root-owner-group --build "$pkg" >/dev/null
echo "built $pkg.deb ($(du -h "$pkg.deb" | cut -f1))"
