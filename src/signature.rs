//! Originator signatures over the exact envelope bytes.
//!
//! The signed message is domain-separated and length-prefixed:
//! `"enlace/v1 envelope\0" || u64_be(len) || envelope_bytes`, so a signature over an envelope can
//! never be replayed as a signature over anything else. Only Ed25519 (through ring) is supported
//! today; the algorithm name travels in the signature so another can be added beside it.

use bytes::Bytes;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

use crate::wire::pb;

const CONTEXT: &[u8] = b"enlace/v1 envelope\0";

/// The name of the one supported algorithm.
pub const ED25519: &str = "ed25519";

fn signed_bytes(envelope: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 8 + envelope.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(envelope.len() as u64).to_be_bytes());
    m.extend_from_slice(envelope);
    m
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the envelope is not signed")]
    Missing,
    #[error("unsupported signature algorithm {0:?}")]
    Algorithm(String),
    #[error("the signature was made with a different certificate than the sender's")]
    WrongSigner,
    #[error("the signer's certificate has no Ed25519 key")]
    NoKey,
    #[error("the signature does not match the envelope bytes")]
    Mismatch,
    #[error("the private key is not an Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
}

/// Signs envelopes with an originator's private key.
pub struct Signer {
    key: Ed25519KeyPair,
    cert_sha256: [u8; 32],
}

impl Signer {
    /// Loads an Ed25519 PKCS#8 key (DER) and the SHA-256 of the matching certificate.
    pub fn from_pkcs8(pkcs8: &[u8], cert_sha256: [u8; 32]) -> Result<Signer, SignatureError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| SignatureError::BadKey(e.to_string()))?;
        Ok(Signer { key, cert_sha256 })
    }

    /// The raw public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs the exact envelope bytes.
    pub fn sign(&self, envelope: &[u8]) -> pb::Signature {
        pb::Signature {
            algorithm: ED25519.to_owned(),
            signer_certificate_sha256: Bytes::copy_from_slice(&self.cert_sha256),
            signature: Bytes::copy_from_slice(self.key.sign(&signed_bytes(envelope)).as_ref()),
        }
    }
}

/// Verifies that `sig` is a signature over `envelope` by the holder of the certificate with the
/// given SHA-256 and Ed25519 public key.
pub fn verify(
    envelope: &[u8],
    sig: Option<&pb::Signature>,
    cert_sha256: &[u8; 32],
    public_key: Option<&[u8]>,
) -> Result<(), SignatureError> {
    let sig = sig.ok_or(SignatureError::Missing)?;
    if sig.algorithm != ED25519 {
        return Err(SignatureError::Algorithm(sig.algorithm.clone()));
    }
    if sig.signer_certificate_sha256.as_ref() != cert_sha256 {
        return Err(SignatureError::WrongSigner);
    }
    let key = public_key.ok_or(SignatureError::NoKey)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(&signed_bytes(envelope), &sig.signature)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer::from_pkcs8(pkcs8.as_ref(), [9; 32]).unwrap()
    }

    #[test]
    fn sign_and_verify() {
        let s = signer();
        let sig = s.sign(b"envelope");
        let pk = s.public_key().to_vec();
        assert_eq!(verify(b"envelope", Some(&sig), &[9; 32], Some(&pk)), Ok(()));
        assert_eq!(
            verify(b"envelopf", Some(&sig), &[9; 32], Some(&pk)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"envelope", Some(&sig), &[8; 32], Some(&pk)),
            Err(SignatureError::WrongSigner)
        );
        assert_eq!(
            verify(b"envelope", None, &[9; 32], Some(&pk)),
            Err(SignatureError::Missing)
        );
    }
}
