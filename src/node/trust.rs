//! The node's TLS material at run time: loaded and checked at start, reloaded without a restart
//! (CRLs, and the node's own certificate and key), revocation that reaches live connections,
//! and warnings about what will soon stop working.
//!
//! The policy file (`rules`) is reloaded by the same watcher: on SIGHUP, on a requested reload,
//! and when it changes.
//!
//! A reload happens on SIGHUP, on [`RunningNode::reload`](super::RunningNode::reload), and when
//! the CRL files (or the certificate, key and trust bundle) change on disk: the node looks every
//! [`POLL`]. It rebuilds everything from the files, and if anything is wrong keeps what it had
//! (and says why). Otherwise new handshakes use the new material at once, the cache of verified
//! signers starts afresh, and every live connection whose certificate no longer verifies (client
//! or peer node) is refused new requests and closed after [`REVOKED_GRACE`], so that its
//! requests in flight are answered first; what was accepted stays accepted, what was delivered
//! and not acknowledged goes back to its queue. Connections stay up across a rotation of the
//! node's own certificate: only new handshakes present the new one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;

use super::events::Event;
use super::runtime::NodeError;
use super::state::Node;
use crate::config::{Config, CrlExpired, scan_crls};
use crate::identity::{self, PeerCert};
use crate::signature::Signer;
use crate::tls::{self, TlsMaterial};

/// How often the node looks at its TLS files for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// How long a connection whose certificate was revoked has to get its answers before it is
/// closed.
pub const REVOKED_GRACE: Duration = Duration::from_secs(1);

/// Certificates expiring within this are warned about, at start and daily.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Application close code for a connection whose certificate was revoked.
pub(super) const CLOSE_REVOKED: u32 = 0x12;

/// The node's own TLS material, identity and signing key, replaced as a whole on a reload.
pub(super) struct Own {
    pub tls: TlsMaterial,
    pub me: PeerCert,
    /// Signs the node's own SYSTEM messages.
    pub signer: Signer,
    /// Its certificate chain, as its SYSTEM messages carry it.
    pub chain: Arc<[Bytes]>,
}

/// Loads the node's TLS material from the files `config` names (scanning `tls.crl_dir` again)
/// and checks its certificate against the config.
///
/// # Errors
/// [`NodeError::Tls`] for unreadable material, [`NodeError::OwnCertificate`] for a certificate
/// of another node or a key that does not match it.
pub(super) fn load(config: &Config) -> Result<Own, NodeError> {
    let crls = match &config.tls.crl_dir {
        Some(dir) => scan_crls(dir).map_err(|e| NodeError::Tls(tls::TlsError::Verifier(e)))?,
        None => config.tls.crls.clone(),
    };
    let tls = TlsMaterial::load(&config.tls.cert, &config.tls.key, &config.tls.ca, &crls)?
        .crl_expiry_enforced(config.tls.crl_expired == CrlExpired::Refuse);
    let me = identity::from_certificate(&tls.chain[0], &config.trust_domain)
        .map_err(|e| NodeError::OwnCertificate(e.to_string()))?;
    if me.identity.role != identity::Role::Node
        || me.identity.agency != config.agency
        || me.identity.name != config.name
    {
        return Err(NodeError::OwnCertificate(format!(
            "certificate is {} but the config says node {}/{}",
            me.identity, config.agency, config.name
        )));
    }
    // Building the server config also checks that the key matches the certificate.
    tls.server_config()?;
    let signer = Signer::from_pkcs8(tls.key_der(), tls.leaf_sha256())
        .map_err(|e| NodeError::OwnCertificate(e.to_string()))?;
    let chain = tls
        .chain
        .iter()
        .map(|c| Bytes::copy_from_slice(c))
        .collect();
    Ok(Own {
        tls,
        me,
        signer,
        chain,
    })
}

/// Names with an expiry time: a certificate's subject and notAfter, a CRL's issuer and
/// nextUpdate.
pub(super) type Expiries = Vec<(String, SystemTime)>;

/// For the metrics: the subject and notAfter of each certificate of the node's own chain, and
/// the issuer and nextUpdate of each CRL in force (ones that do not parse, or have no
/// nextUpdate, left out).
pub(super) fn expiries(tls: &TlsMaterial) -> (Expiries, Expiries) {
    let unix = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let certificates = tls
        .chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| {
            (
                c.subject().to_string(),
                unix(c.validity().not_after.timestamp()),
            )
        })
        .collect();
    let crls = tls
        .crls
        .iter()
        .filter_map(|der| x509_parser::parse_x509_crl(der).ok())
        .filter_map(|(_, c)| Some((c.issuer().to_string(), unix(c.next_update()?.timestamp()))))
        .collect();
    (certificates, crls)
}

/// What an operator should know about the material: no CRLs (revocation unchecked), CRLs past
/// their nextUpdate, certificates (the node's own, the trust bundle's) expiring within
/// [`EXPIRY_WARNING`] or expired.
pub(super) fn warnings(config: &Config, tls: &TlsMaterial, now: SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    if tls.crls.is_empty() {
        out.push(
            "no CRLs (tls.crl_dir is not set or holds no *.crl.pem file): revoked certificates \
             are not detected"
                .to_owned(),
        );
    }
    let unix = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    for crl in &tls.crls {
        let Ok((_, parsed)) = x509_parser::parse_x509_crl(crl) else {
            out.push("a CRL does not parse".to_owned());
            continue;
        };
        let Some(next) = parsed.next_update() else {
            continue;
        };
        if unix(next.timestamp()) <= now {
            let effect = match config.tls.crl_expired {
                CrlExpired::Refuse => {
                    "certificates of that CA are refused until a fresh CRL is \
                                       installed"
                }
                CrlExpired::Warn => "accepted anyway (tls.crl_expired = \"warn\")",
            };
            out.push(format!(
                "the CRL of {} is past its nextUpdate ({}): {effect}",
                parsed.issuer(),
                crate::message::rfc3339(unix(next.timestamp()))
            ));
        }
    }
    let certs = tls
        .chain
        .iter()
        .map(|c| ("the node's certificate chain", c))
        .chain(
            tls.roots_der
                .iter()
                .map(|c| ("the trust bundle (tls.ca)", c)),
        );
    for (what, der) in certs {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        let not_after = unix(cert.validity().not_after.timestamp());
        let subject = cert.subject().to_string();
        match not_after.duration_since(now) {
            Err(_) => out.push(format!(
                "{subject} in {what} expired on {}",
                crate::message::rfc3339(not_after)
            )),
            Ok(left) if left < EXPIRY_WARNING => out.push(format!(
                "{subject} in {what} expires on {} (in {} days): renew it",
                crate::message::rfc3339(not_after),
                left.as_secs() / 86_400
            )),
            Ok(_) => {}
        }
    }
    out
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// CRL files in force.
    pub crls: usize,
    /// Live connections whose certificate no longer verifies, now being closed.
    pub revoked: usize,
}

/// Reloads the node's TLS material (see the module docs). On failure the node keeps what it
/// had, and the reason is returned (and logged).
pub(super) fn reload(
    node: &Arc<Node>,
    endpoint: &quinn::Endpoint,
    why: &str,
) -> Result<Reloaded, String> {
    let result = reload_material(node, endpoint);
    match &result {
        Ok(r) => node.events().record(Event::Reloaded {
            what: "tls".into(),
            detail: format!(
                "{why}: {} CRL file(s); {} connection(s) with a certificate that no longer \
                 verifies closing",
                r.crls, r.revoked
            ),
        }),
        Err(e) => tracing::error!(
            node = %node.config.name, %why, error = %e,
            "TLS reload refused; the material in force stays"
        ),
    }
    result
}

fn reload_material(node: &Arc<Node>, endpoint: &quinn::Endpoint) -> Result<Reloaded, String> {
    let own = load(&node.config).map_err(|e| e.to_string())?;
    let server = own
        .tls
        .server_config()
        .and_then(tls::quic_server_config)
        .map_err(|e| e.to_string())?;
    let verifier = own.tls.signer_verifier().map_err(|e| e.to_string())?;
    for w in warnings(&node.config, &own.tls, SystemTime::now()) {
        tracing::warn!(node = %node.config.name, "{w}");
    }
    let crls = own.tls.crls.len();
    endpoint.set_server_config(Some(server));
    node.signers.reload(verifier.clone());
    node.signers.trusted(own.me.clone(), own.tls.chain.clone());
    node.set_own(own);
    let now = rustls_pki_types::UnixTime::now();
    let revoked = node.registry.revoke_where(|live| {
        let (leaf, intermediates) = live.chain.split_first().ok_or("no certificate")?;
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let n = revoked.len();
    for r in revoked {
        tracing::warn!(
            node = %node.config.name, who = %r.who.identity, reason = %r.reason,
            "certificate no longer valid: closing its connection"
        );
        tokio::spawn(async move {
            // Its requests in flight get their answers; new ones are refused meanwhile.
            tokio::time::sleep(REVOKED_GRACE).await;
            let reason = format!("certificate no longer valid: {}", r.reason);
            r.closing.close(&r.conn, CLOSE_REVOKED, reason);
        });
    }
    Ok(Reloaded { crls, revoked: n })
}

/// A fingerprint of the TLS files (names, sizes and modification times): a change means a
/// reload.
fn fingerprint(config: &Config) -> Vec<(std::path::PathBuf, u64, Option<SystemTime>)> {
    let mut files = vec![
        config.tls.cert.clone(),
        config.tls.key.clone(),
        config.tls.ca.clone(),
    ];
    match &config.tls.crl_dir {
        Some(dir) => files.extend(scan_crls(dir).unwrap_or_default()),
        None => files.extend(config.tls.crls.iter().cloned()),
    }
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Reloads on SIGHUP, on `trigger`, and when the TLS files change; warns daily about what is
/// expiring. Runs until aborted.
pub(super) async fn watch(node: Arc<Node>, endpoint: quinn::Endpoint, trigger: Arc<Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    // Without a handler, SIGHUP would terminate the process.
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP"))
        .ok();
    let hangup = async |hup: &mut Option<tokio::signal::unix::Signal>| match hup {
        Some(h) => {
            h.recv().await;
        }
        None => std::future::pending().await,
    };
    let mut seen = fingerprint(&node.config);
    let mut seen_policy = super::rules::fingerprint(&node.config);
    let mut poll = tokio::time::interval(POLL);
    let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
    // The first tick of each is immediate: the start-up warnings are logged by the runtime.
    poll.tick().await;
    daily.tick().await;
    loop {
        let why = tokio::select! {
            _ = hangup(&mut hup) => "SIGHUP",
            _ = trigger.notified() => "reload requested",
            _ = poll.tick() => {
                let policy = super::rules::fingerprint(&node.config);
                if policy != seen_policy {
                    seen_policy = policy;
                    let _ = super::rules::reload(&node, "policy file changed");
                }
                let now = fingerprint(&node.config);
                if now == seen {
                    continue;
                }
                "TLS files changed"
            }
            _ = daily.tick() => {
                for w in warnings(&node.config, &node.own().tls, SystemTime::now()) {
                    tracing::warn!(node = %node.config.name, "{w}");
                }
                continue;
            }
        };
        seen = fingerprint(&node.config);
        if why != "TLS files changed" {
            seen_policy = super::rules::fingerprint(&node.config);
            let _ = super::rules::reload(&node, why);
        }
        let _ = reload(&node, &endpoint, why);
    }
}
