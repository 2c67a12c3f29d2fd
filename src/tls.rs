//! TLS and QUIC endpoint setup: TLS 1.3 only, ring only, client certificates always required.
//!
//! Deliberately absent: TLS 1.2 (not compiled in), 0-RTT, and session resumption on both sides.
//! Resumption would let a client whose certificate was revoked after its first handshake come
//! back without the verifier running again, so the server stores no sessions and issues no
//! tickets, and the client never offers one. Trust roots and CRLs are loaded once per config; a
//! hot reload builds a new config (see ARCHITECTURE.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::wire::ALPN;

/// Why TLS material could not be loaded or a configuration built.
///
/// Returned by [`Client::connect`](crate::Client::connect) (as [`ClientError::Tls`]) and by a
/// starting node (as [`NodeError::Tls`]); every variant is a local problem, found before anything
/// is sent, so retrying without changing the files or the address gets the same error.
///
/// [`ClientError::Tls`]: crate::ClientError::Tls
/// [`NodeError::Tls`]: crate::NodeError::Tls
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key, trust bundle or CRL file could not be read or is not valid PEM:
    /// check the path and the file's permissions and contents.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed: the I/O error or the PEM parser's complaint.
        reason: String,
    },
    /// A certificate file (the chain, or the trust bundle) holds no `CERTIFICATE` block: it may
    /// be the key, or empty.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the material: e.g. a key that does not match the certificate, a trust
    /// bundle certificate it cannot use, or a key type it does not support.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifier or QUIC configuration could not be built from the trust bundle
    /// and CRLs (e.g. a CRL that does not parse); holds the reason.
    #[error("invalid client certificate verifier: {0}")]
    Verifier(String),
    /// The UDP socket could not be bound: the address is in use, not local, or not permitted.
    /// Choose another address (a node's `node.listen`) or stop what holds it.
    #[error("cannot bind UDP socket on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        reason: String,
        /// Its kind (`AddrInUse` when another socket holds the address).
        kind: std::io::ErrorKind,
    },
}

/// The crypto provider: ring, always passed explicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates and key that identify this endpoint, plus what it trusts.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Leaf first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub roots: Arc<RootCertStore>,
    /// The trust bundle's certificates as loaded (to warn before they expire).
    pub roots_der: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Whether a CRL past its nextUpdate makes the certificates of its CA unverifiable (the
    /// default for nodes; `tls.crl_expired = "warn"` turns it off for labs).
    pub enforce_crl_expiry: bool,
}

impl TlsMaterial {
    /// Loads a certificate chain, its key, a CA bundle and any CRLs (PEM files).
    pub fn load(cert: &Path, key: &Path, ca: &Path, crls: &[PathBuf]) -> Result<Self, TlsError> {
        let chain = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        let roots_der = load_certs(ca)?;
        for c in &roots_der {
            roots.add(c.clone())?;
        }
        let crls = crls
            .iter()
            .map(|p| {
                CertificateRevocationListDer::from_pem_file(p).map_err(|e| TlsError::Read {
                    path: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(TlsMaterial {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            roots_der,
            crls,
            enforce_crl_expiry: false,
        })
    }

    /// This material, refusing certificates whose CA's CRL is past its nextUpdate (`true`) or
    /// not.
    pub fn crl_expiry_enforced(mut self, enforce: bool) -> TlsMaterial {
        self.enforce_crl_expiry = enforce;
        self
    }

    fn client_cert_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let mut b = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone());
        if self.enforce_crl_expiry {
            b = b.enforce_revocation_expiration();
        }
        b.build().map_err(|e| TlsError::Verifier(e.to_string()))
    }

    /// The PKCS#8 DER of the private key, for signing envelopes.
    pub fn key_der(&self) -> &[u8] {
        self.key.secret_der()
    }

    /// SHA-256 of the leaf certificate's DER.
    pub fn leaf_sha256(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.chain[0]).as_ref());
        out
    }

    /// The verifier of originators' certificate chains (see `signers`): the federation's roots
    /// and this material's CRLs, as for client certificates at the handshake. Node certificates
    /// carry clientAuth too, so a node's own SYSTEM messages verify the same way.
    pub fn signer_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        self.client_cert_verifier()
    }

    /// A server config that requires and verifies client certificates (TLS 1.3, no resumption,
    /// no early data).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = self.client_cert_verifier()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }

    /// A client config that presents this endpoint's certificate (TLS 1.3, no resumption, no
    /// early data) and verifies the server against the roots and CRLs.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut b = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone());
        if self.enforce_crl_expiry {
            b = b.enforce_revocation_expiration();
        }
        let verifier = b.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.enable_early_data = false;
        Ok(cfg)
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// QUIC transport settings shared by nodes and clients.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1024u32.into());
    t.max_concurrent_uni_streams(64u32.into());
    // Every second: an idle client or peer of a node that restarted learns it with its next
    // packet (the node's stateless reset, see `endpoint`), so within about a second.
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // Infallible for values below 2^62 ms.
    t.max_idle_timeout(Some(
        Duration::from_secs(30).try_into().expect("small duration"),
    ));
    t
}

/// Builds a quinn server config from a rustls one.
pub fn quic_server_config(cfg: rustls::ServerConfig) -> Result<quinn::ServerConfig, TlsError> {
    let quic = QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Verifier(format!("no QUIC-capable cipher suite: {e}")))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(Arc::new(transport_config()));
    Ok(sc)
}

/// Builds a quinn client config from a rustls one.
pub fn quic_client_config(cfg: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let quic = QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Verifier(format!("no QUIC-capable cipher suite: {e}")))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(Arc::new(transport_config()));
    Ok(cc)
}

/// Socket buffer size requested for every endpoint: loopback and LAN bulk transfer loses packets
/// with the kernel's default buffers (see the tech notes).
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds a UDP socket with enlarged buffers and makes a quinn endpoint on it. With
/// `reset_key`, the endpoint derives its stateless-reset tokens from that secret rather than a
/// fresh random one: a node that keeps it across restarts answers packets of its previous
/// life's connections with a reset the other side recognises, so clients and peers notice the
/// restart at once instead of after the idle timeout (RFC 9000, section 10.3).
///
/// Logs the effective buffer sizes, which the kernel may cap (`net.core.rmem_max`).
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    reset_key: Option<&[u8; 32]>,
) -> Result<quinn::Endpoint, TlsError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |e: std::io::Error| TlsError::Bind {
        addr,
        reason: e.to_string(),
        kind: e.kind(),
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    // Best effort: the effective size is logged below, whatever the kernel granted.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into()).map_err(bind_err)?;
    tracing::info!(
        %addr,
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    let std_socket: std::net::UdpSocket = socket.into();
    let config = match reset_key {
        Some(secret) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            // The connection ids carry a check keyed from the same secret, so the restarted
            // endpoint takes its previous life's ids for its own and answers them with a
            // reset, rather than dropping them as forged.
            let tag = ring::hmac::sign(&key, b"enlace connection id key");
            let cid_key = u64::from_le_bytes(tag.as_ref()[..8].try_into().expect("8 bytes"));
            let mut config = quinn::EndpointConfig::new(Arc::new(key));
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(config, server, std_socket, Arc::new(quinn::TokioRuntime))
        .map_err(bind_err)
}

/// Describes a connection error in words a user can act on (TLS alerts in particular).
pub fn describe_connection_error(e: &quinn::ConnectionError) -> String {
    match close_code(e) {
        Some(code) if (0x100..0x200).contains(&code) => {
            let alert = (code - 0x100) as u8;
            let what = match alert {
                42 => "bad certificate",
                43 => "unsupported certificate",
                44 => "certificate revoked",
                45 => "certificate expired",
                46 => "certificate unknown",
                48 => "unknown certificate authority",
                49 => "access denied",
                116 => "certificate required",
                120 => "no application protocol",
                _ => "handshake failure",
            };
            format!("TLS handshake refused: {what} (alert {alert}): {e}")
        }
        _ => e.to_string(),
    }
}

fn close_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
        quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(stem: &str) -> TlsMaterial {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test");
        TlsMaterial::load(
            &base.join(format!("{stem}.pem")),
            &base.join(format!("{stem}.key.pem")),
            &base.join("ca/root.pem"),
            &[base.join("crl/dea.crl.pem"), base.join("crl/root.crl.pem")],
        )
        .unwrap()
    }

    #[test]
    fn server_never_resumes_and_never_accepts_early_data() {
        let cfg = fixture("nodes/dea/dea-1").server_config().unwrap();
        assert_eq!(cfg.send_tls13_tickets, 0);
        assert_eq!(cfg.max_early_data_size, 0);
        assert!(!cfg.session_storage.can_cache());
        assert_eq!(cfg.alpn_protocols, vec![ALPN.to_vec()]);
    }

    #[test]
    fn client_never_resumes_and_never_sends_early_data() {
        let cfg = fixture("clients/dea/duty-desk").client_config().unwrap();
        assert!(!cfg.enable_early_data);
        assert_eq!(cfg.alpn_protocols, vec![ALPN.to_vec()]);
        // rustls exposes no accessor; its Debug form names the session store.
        let r = format!("{:?}", cfg.resumption);
        assert!(r.contains("store: NoClientSessionStorage"), "{r}");
    }

    #[test]
    fn only_tls13_suites_are_offered() {
        let cfg = fixture("clients/dea/duty-desk").client_config().unwrap();
        let suites = &cfg.crypto_provider().cipher_suites;
        assert!(!suites.is_empty());
        assert!(
            suites
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13)
        );
    }
}
