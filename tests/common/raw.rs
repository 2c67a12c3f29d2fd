//! A raw client of the node protocol, written from its documented wire format and independent of
//! the `enlace` library: rustls and quinn set up directly, frames as a 4-byte big-endian length
//! and a prost-encoded `Frame`, originator signatures with ring over the documented
//! domain-separated bytes, batch proofs as RFC 9162 Merkle paths.
//!
//! For the tests that probe a node as an attacker would: hand-made and malformed frames, forged
//! or tampered envelopes, certificates and TLS settings the client library would never use.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use enlace::pb::{self, frame::Body};
use prost::Message as _;
use quinn::crypto::rustls::QuicClientConfig;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::certs;

/// The ALPN of the node protocol, as documented.
pub const ALPN: &[u8] = b"enlace/1";

/// Largest answer frame read here.
const MAX_ANSWER: u32 = 16 * 1024 * 1024;

/// The ring crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain of `stem` (under certs/test).
pub fn chain(stem: &str) -> Vec<CertificateDer<'static>> {
    let path = certs().join(format!("{stem}.pem"));
    CertificateDer::pem_file_iter(&path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The private key of `stem` (under certs/test).
pub fn key(stem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(certs().join(format!("{stem}.key.pem"))).unwrap()
}

/// The test federation's trust roots.
pub fn roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs().join("ca/root.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// A TLS 1.3 client config presenting `stem`'s certificate, trusting the test root.
pub fn tls_config(stem: &str) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots())
        .with_client_auth_cert(chain(stem), key(stem))
        .unwrap();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg
}

/// A QUIC client config from a rustls one.
pub fn quic(cfg: rustls::ClientConfig) -> quinn::ClientConfig {
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).unwrap()))
}

/// An authorized raw connection: what the node said in `Welcome`, and the open control stream.
pub struct Raw {
    pub conn: quinn::Connection,
    pub welcome: pb::Welcome,
    _control: (quinn::SendStream, quinn::RecvStream),
    _endpoint: quinn::Endpoint,
}

/// Why a raw dial failed: the node's `Refused` frame, or the connection's error in words.
#[derive(Debug)]
pub enum DialError {
    Refused(pb::Refused),
    Failed(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Refused(r) => write!(f, "refused ({:?}): {}", r.code(), r.reason),
            DialError::Failed(e) => f.write_str(e),
        }
    }
}

impl DialError {
    /// The failure in words, with the TLS alert the node sent (RFC 8446 section 6.2) named when
    /// the handshake failed on one, e.g. `"... error 116 ... (TLS alert: certificate required)"`.
    pub fn described(&self) -> String {
        match self.tls_alert() {
            Some(alert) => format!("{self} (TLS alert: {alert})"),
            None => self.to_string(),
        }
    }

    /// The name of the TLS alert that ended the handshake, if it was one. quinn reports a TLS
    /// alert as "the cryptographic handshake failed: error <alert>".
    pub fn tls_alert(&self) -> Option<&'static str> {
        let DialError::Failed(text) = self else {
            return None;
        };
        let (_, rest) = text.split_once("the cryptographic handshake failed: error ")?;
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(match code.parse::<u8>().ok()? {
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
        })
    }
}

/// Connects to `addr` (certificate name `server_name`) with `quic` and sends `Hello` with `role`
/// and the protocol version `version`; waits for `Welcome`.
pub async fn dial_version(
    addr: SocketAddr,
    server_name: &str,
    quic: quinn::ClientConfig,
    role: pb::Role,
    version: u32,
) -> Result<Raw, DialError> {
    let fail = |e: &dyn std::fmt::Display| DialError::Failed(e.to_string());
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let dial = async {
        let conn = endpoint
            .connect_with(quic, addr, server_name)
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| fail(&e))?;
        let hello = Body::Hello(pb::Hello {
            protocol_version: version,
            role: role as i32,
        });
        send.write_all(&frame(hello)).await.map_err(|e| fail(&e))?;
        let (recv, answer) = read_frame(recv, 64 * 1024).await.map_err(|e| fail(&e))?;
        match answer.body {
            Some(Body::Welcome(welcome)) => Ok(Raw {
                conn,
                welcome,
                _control: (send, recv),
                _endpoint: endpoint.clone(),
            }),
            Some(Body::Refused(r)) => Err(DialError::Refused(r)),
            other => Err(DialError::Failed(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), dial).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Failed("no answer within 10 s".into())),
    }
}

/// As [`dial_version`], with the protocol version the node speaks (2).
pub async fn dial(
    addr: SocketAddr,
    server_name: &str,
    quic: quinn::ClientConfig,
    role: pb::Role,
) -> Result<Raw, DialError> {
    dial_version(addr, server_name, quic, role, 2).await
}

/// As [`dial`], for a dial expected to fail: when the node closes the connection after the QUIC
/// handshake (with TLS 1.3 it checks the client's certificate after the client has finished),
/// the error is the reason the connection was closed (a TLS alert, say), not the stream error
/// that noticed it first ("connection lost").
pub async fn dial_explained(
    addr: SocketAddr,
    server_name: &str,
    quic: quinn::ClientConfig,
    role: pb::Role,
) -> Result<Raw, DialError> {
    let fail = |e: &dyn std::fmt::Display| DialError::Failed(e.to_string());
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let dial = async {
        let conn = endpoint
            .connect_with(quic, addr, server_name)
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        // A stream error on a closed connection: report why it was closed.
        let closed = |e: &dyn std::fmt::Display| match conn.close_reason() {
            Some(reason) => fail(&reason),
            None => fail(e),
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
        let hello = Body::Hello(pb::Hello {
            protocol_version: 2,
            role: role as i32,
        });
        send.write_all(&frame(hello))
            .await
            .map_err(|e| closed(&e))?;
        let (recv, answer) = read_frame(recv, 64 * 1024).await.map_err(|e| closed(&e))?;
        match answer.body {
            Some(Body::Welcome(welcome)) => Ok(Raw {
                conn,
                welcome,
                _control: (send, recv),
                _endpoint: endpoint.clone(),
            }),
            Some(Body::Refused(r)) => Err(DialError::Refused(r)),
            other => Err(DialError::Failed(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), dial).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Failed("no answer within 10 s".into())),
    }
}

impl Raw {
    /// Sends raw bytes on a new stream, finishes it, and returns the node's first answer frame.
    pub async fn exchange(&self, bytes: &[u8]) -> pb::Frame {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        read_frame(recv, MAX_ANSWER).await.unwrap().1
    }

    /// As [`Raw::exchange`], with the bytes owned (for requests sent at once).
    pub async fn exchange_owned(&self, bytes: Vec<u8>) -> pb::Frame {
        self.exchange(&bytes).await
    }

    /// Submits a signed envelope on a stream of its own: `Accepted`, or the node's `Refused`.
    pub async fn submit(&self, signed: pb::SignedEnvelope) -> Result<pb::Accepted, pb::Refused> {
        let body = Body::Submit(pb::Submit {
            envelope: Some(signed),
        });
        match self.exchange(&frame(body)).await.body {
            Some(Body::Accepted(a)) => Ok(a),
            Some(Body::Refused(r)) => Err(r),
            other => panic!("expected Accepted or Refused, got {other:?}"),
        }
    }
}

/// A frame on the wire: 4-byte big-endian length, then the encoded `Frame`.
pub fn frame(body: Body) -> Vec<u8> {
    let f = pb::Frame { body: Some(body) };
    let mut buf = BytesMut::with_capacity(4 + f.encoded_len());
    buf.put_u32(f.encoded_len() as u32);
    f.encode(&mut buf).unwrap();
    buf.to_vec()
}

/// Reads one frame of at most `max` bytes; gives the stream back for more.
pub async fn read_frame(
    mut recv: quinn::RecvStream,
    max: u32,
) -> Result<(quinn::RecvStream, pb::Frame), String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(format!("frame of {len} bytes over {max}"));
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    let f = pb::Frame::decode(&body[..]).map_err(|e| e.to_string())?;
    Ok((recv, f))
}

/// The answer frame's `Refused`, or a panic naming what came instead.
pub fn refused(f: pb::Frame) -> pb::Refused {
    match f.body {
        Some(Body::Refused(r)) => r,
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// Signs envelopes as an originator does, from the documented format: Ed25519 over
/// `"enlace/v1 envelope\0" || u64_be(len) || bytes`, or over
/// `"enlace/v1 envelope batch\0" || u64_be(tree_size) || root` for a batch.
pub struct Signer {
    key: Ed25519KeyPair,
    cert_sha256: [u8; 32],
    /// The signer's certificate chain (leaf first), as an originating node attaches it.
    chain: Vec<Bytes>,
}

impl Signer {
    /// The signer holding `stem`'s key and certificate.
    pub fn load(stem: &str) -> Signer {
        let pkcs8 = match key(stem) {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            other => panic!("{stem}: not a PKCS#8 key: {other:?}"),
        };
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();
        let chain: Vec<Bytes> = chain(stem)
            .iter()
            .map(|c| Bytes::copy_from_slice(c))
            .collect();
        let digest = ring::digest::digest(&ring::digest::SHA256, &chain[0]);
        Signer {
            key,
            cert_sha256: digest.as_ref().try_into().unwrap(),
            chain,
        }
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// A plain Ed25519 signature over `message` (a signed note's text, for instance).
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).as_ref().to_vec()
    }

    /// A single-envelope signature over `envelope`.
    pub fn sign(&self, envelope: &[u8]) -> pb::Signature {
        let mut m = b"enlace/v1 envelope\0".to_vec();
        m.extend_from_slice(&(envelope.len() as u64).to_be_bytes());
        m.extend_from_slice(envelope);
        pb::Signature {
            algorithm: "ed25519".into(),
            signer_certificate_sha256: Bytes::copy_from_slice(&self.cert_sha256),
            signature: Bytes::copy_from_slice(self.key.sign(&m).as_ref()),
            batch: None,
        }
    }

    /// Encodes `env` and signs its bytes.
    pub fn seal(&self, env: &pb::Envelope) -> pb::SignedEnvelope {
        let bytes = Bytes::from(env.encode_to_vec());
        pb::SignedEnvelope {
            signature: Some(self.sign(&bytes)),
            envelope: bytes,
            hops: Vec::new(),
            route_to: Vec::new(),
            signer_chain: Vec::new(),
        }
    }

    /// The signer's certificate chain (leaf first).
    pub fn chain(&self) -> Vec<Bytes> {
        self.chain.clone()
    }

    /// One signature over the RFC 9162 Merkle root of `envelopes` (at least two), with each
    /// envelope's inclusion proof.
    pub fn sign_batch(&self, envelopes: &[&[u8]]) -> Vec<pb::Signature> {
        let leaves: Vec<[u8; 32]> = envelopes.iter().map(|e| leaf_hash(e)).collect();
        let root = mth(&leaves);
        let mut m = b"enlace/v1 envelope batch\0".to_vec();
        m.extend_from_slice(&(leaves.len() as u64).to_be_bytes());
        m.extend_from_slice(&root);
        let sig = Bytes::copy_from_slice(self.key.sign(&m).as_ref());
        (0..leaves.len())
            .map(|i| pb::Signature {
                algorithm: "ed25519".into(),
                signer_certificate_sha256: Bytes::copy_from_slice(&self.cert_sha256),
                signature: sig.clone(),
                batch: Some(pb::BatchProof {
                    leaf_index: i as u64,
                    tree_size: leaves.len() as u64,
                    path: path(i, &leaves)
                        .into_iter()
                        .map(|h| Bytes::copy_from_slice(&h))
                        .collect(),
                }),
            })
            .collect()
    }

    /// Whether `sig` is this signer's single-envelope signature over `envelope`.
    pub fn verify(&self, envelope: &[u8], sig: &pb::Signature) -> bool {
        let mut m = b"enlace/v1 envelope\0".to_vec();
        m.extend_from_slice(&(envelope.len() as u64).to_be_bytes());
        m.extend_from_slice(envelope);
        sig.signer_certificate_sha256.as_ref() == self.cert_sha256
            && ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.public_key())
                .verify(&m, &sig.signature)
                .is_ok()
    }
}

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().try_into().unwrap()
}

fn leaf_hash(d: &[u8]) -> [u8; 32] {
    sha(&[&[0], d])
}

/// RFC 9162 section 2.1.1: the largest power of two smaller than `n`.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The Merkle tree hash of `leaves` (RFC 9162, recursively).
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        1 => leaves[0],
        n => {
            let k = split(n);
            sha(&[&[1], &mth(&leaves[..k]), &mth(&leaves[k..])])
        }
    }
}

/// The inclusion proof of leaf `m` (RFC 9162 section 2.1.3.1), leaf first.
fn path(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// An envelope as a client would write it (UUIDv7 id, the given times), addressed to `to`, for
/// hand-made submissions. `payload` is a `LiaisonMessage` body.
pub fn envelope(
    originator: (&str, &str, &str),
    to: &[&str],
    precedence: pb::Precedence,
    created: std::time::SystemTime,
    lifetime: Duration,
    body: &str,
) -> pb::Envelope {
    let (agency, node, client) = originator;
    let payload = pb::LiaisonMessage {
        body: Some(pb::LocalizedText {
            language: "en".into(),
            text: body.into(),
            translations: Vec::new(),
        }),
        ..Default::default()
    };
    let ms = created
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    id[6] = (id[6] & 0x0f) | 0x70;
    id[8] = (id[8] & 0x3f) | 0x80;
    let ts = |t: std::time::SystemTime| {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    };
    pb::Envelope {
        message_id: Bytes::copy_from_slice(&id),
        originator: Some(pb::Originator {
            agency: agency.into(),
            node: node.into(),
            client: client.into(),
        }),
        addressees: to
            .iter()
            .map(|a| {
                let (agency, unit) = a.split_once('/').unwrap_or((a, ""));
                pb::Addressee {
                    agency: agency.into(),
                    unit: unit.into(),
                    copy_type: pb::CopyType::Action as i32,
                }
            })
            .collect(),
        precedence: precedence as i32,
        status: pb::Status::Actual as i32,
        kind: pb::MessageKind::Original as i32,
        created_at: Some(ts(created)),
        expires_at: Some(ts(created + lifetime)),
        payload_type: "enlace.v1.LiaisonMessage".into(),
        payload: payload.encode_to_vec().into(),
        ..Default::default()
    }
}
