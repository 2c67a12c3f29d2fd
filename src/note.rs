//! Signed notes and checkpoints, as C2SP specifies them (`signed-note`, `tlog-checkpoint`,
//! `tlog-cosignature`): how a node signs the head of its delivery log, and how a peer cosigns
//! it as a witness. Sans-I/O.
//!
//! A note is UTF-8 text ending in a newline, then a blank line, then one signature line per
//! signer: `— <key name> <base64(key id || signature)>`. The key id is the first four bytes of
//! `SHA-256(key name || "\n" || type || public key)`; type `0x01` is an Ed25519 signature over
//! the note's text, type `0x04` a cosignature (`cosignature/v1`), an Ed25519 signature over
//! `"cosignature/v1\ntime <t>\n"` and the text, carrying its time `t` (Unix seconds) in eight
//! bytes before the signature. A checkpoint's text is `<origin>\n<tree size>\n<base64 root>\n`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::merkle::Hash;
use crate::signature::Signer;

const ED25519_TYPE: u8 = 0x01;
const COSIGNATURE_TYPE: u8 = 0x04;
const DASH: &str = "\u{2014} ";

/// Why a note or checkpoint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The text does not have the shape of a signed note.
    #[error("not a signed note: {0}")]
    Malformed(&'static str),
    /// The note's text is not a checkpoint.
    #[error("not a checkpoint: {0}")]
    NotCheckpoint(&'static str),
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine {
    /// The signer's key name.
    pub name: String,
    /// The key id (see the module documentation).
    pub key_id: [u8; 4],
    /// What follows the key id: the signature, or a cosignature's time and signature.
    pub bytes: Vec<u8>,
}

impl SignatureLine {
    /// The line as it is written, with its newline.
    pub fn line(&self) -> String {
        let mut raw = self.key_id.to_vec();
        raw.extend_from_slice(&self.bytes);
        format!("{DASH}{} {}\n", self.name, B64.encode(raw))
    }

    fn parse(line: &str) -> Result<SignatureLine, NoteError> {
        let rest = line.strip_prefix(DASH).ok_or(NoteError::Malformed(
            "a signature line must start with an em dash",
        ))?;
        let (name, sig) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "a signature line needs a name and a signature",
        ))?;
        if name.is_empty() || name.contains('+') {
            return Err(NoteError::Malformed(
                "a key name must be non-empty, without '+'",
            ));
        }
        let raw = B64
            .decode(sig)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("a signature is too short"));
        }
        Ok(SignatureLine {
            name: name.to_owned(),
            key_id: raw[..4].try_into().expect("four bytes"),
            bytes: raw[4..].to_vec(),
        })
    }
}

/// A signed note: its text and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<SignatureLine>,
}

impl Note {
    /// Reads a note as written (text, blank line, signature lines).
    pub fn parse(s: &str) -> Result<Note, NoteError> {
        let split = s
            .find("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let text = &s[..split + 1];
        let sigs = &s[split + 2..];
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed("a note must end with a newline"));
        }
        let signatures = sigs
            .lines()
            .map(SignatureLine::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.is_empty() {
            return Err(NoteError::Malformed("a note needs at least one signature"));
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as written.
    pub fn to_text(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }

    /// Whether a signature by `key` verifies.
    pub fn verified_by(&self, key: &VerifierKey) -> bool {
        let id = key.key_id(ED25519_TYPE);
        self.signatures.iter().any(|s| {
            s.name == key.name
                && s.key_id == id
                && UnparsedPublicKey::new(&ED25519, &key.public)
                    .verify(self.text.as_bytes(), &s.bytes)
                    .is_ok()
        })
    }

    /// The time of a cosignature by `key` that verifies, if there is one.
    pub fn cosigned_by(&self, key: &VerifierKey) -> Option<u64> {
        let id = key.key_id(COSIGNATURE_TYPE);
        self.signatures.iter().find_map(|s| {
            if s.name != key.name || s.key_id != id || s.bytes.len() != 72 {
                return None;
            }
            let time = u64::from_be_bytes(s.bytes[..8].try_into().expect("eight bytes"));
            UnparsedPublicKey::new(&ED25519, &key.public)
                .verify(&cosigned_message(&self.text, time), &s.bytes[8..])
                .ok()
                .map(|()| time)
        })
    }
}

fn cosigned_message(text: &str, time: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {time}\n{text}").into_bytes()
}

/// A named Ed25519 public key that verifies notes, written
/// `<name>+<key id hex>+<base64(0x01 || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key name.
    pub name: String,
    /// The raw Ed25519 public key.
    pub public: Vec<u8>,
}

impl VerifierKey {
    /// The key id of this key for a signature type.
    fn key_id(&self, typ: u8) -> [u8; 4] {
        let mut m = self.name.as_bytes().to_vec();
        m.push(b'\n');
        m.push(typ);
        m.extend_from_slice(&self.public);
        digest(&SHA256, &m).as_ref()[..4]
            .try_into()
            .expect("four bytes")
    }

    /// The key in its written form.
    pub fn encode(&self) -> String {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(&self.public);
        let id = self.key_id(ED25519_TYPE);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}+{hex}+{}", self.name, B64.encode(raw))
    }

    /// Reads a key in its written form.
    pub fn decode(s: &str) -> Option<VerifierKey> {
        // The key's base64 may hold '+' itself: only the first two separate.
        let mut parts = s.splitn(3, '+');
        let (name, hex, key) = (parts.next()?, parts.next()?, parts.next()?);
        let raw = B64.decode(key).ok()?;
        if raw.len() != 33 || raw[0] != ED25519_TYPE || name.is_empty() {
            return None;
        }
        let k = VerifierKey {
            name: name.to_owned(),
            public: raw[1..].to_vec(),
        };
        let id: String = k
            .key_id(ED25519_TYPE)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (id == hex).then_some(k)
    }
}

/// Signs `text` as key `name`: the signature line.
pub(crate) fn sign(text: &str, name: &str, signer: &Signer) -> SignatureLine {
    let key = VerifierKey {
        name: name.to_owned(),
        public: signer.public_key().to_vec(),
    };
    SignatureLine {
        name: name.to_owned(),
        key_id: key.key_id(ED25519_TYPE),
        bytes: signer.sign_note(text.as_bytes()).to_vec(),
    }
}

/// Cosigns `text` as witness `name` at `time` (Unix seconds): the signature line.
pub(crate) fn cosign(text: &str, name: &str, signer: &Signer, time: u64) -> SignatureLine {
    let key = VerifierKey {
        name: name.to_owned(),
        public: signer.public_key().to_vec(),
    };
    let mut bytes = time.to_be_bytes().to_vec();
    bytes.extend_from_slice(&signer.sign_note(&cosigned_message(text, time)));
    SignatureLine {
        name: name.to_owned(),
        key_id: key.key_id(COSIGNATURE_TYPE),
        bytes,
    }
}

/// A checkpoint: the head of a log, as its text says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which log (`enlace/<agency>/<node>`).
    pub origin: String,
    /// How many records the tree holds.
    pub size: u64,
    /// The tree's root.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's text.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Reads a checkpoint's text (extension lines after the root are allowed and ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::NotCheckpoint("no origin line"))?;
        let size =
            lines
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(NoteError::NotCheckpoint(
                    "the second line is not a tree size",
                ))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or(NoteError::NotCheckpoint(
                "the third line is not a base64 SHA-256 root",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::Ed25519KeyPair;

    fn signer() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::from_pkcs8(pkcs8.as_ref(), [0; 32]).unwrap()
    }

    fn key(name: &str, s: &Signer) -> VerifierKey {
        VerifierKey {
            name: name.into(),
            public: s.public_key().to_vec(),
        }
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_an_altered_one_does_not() {
        let (node, witness) = (signer(), signer());
        let cp = Checkpoint {
            origin: "enlace/dea/dea-1".into(),
            size: 42,
            root: [9; 32],
        };
        let text = cp.text();
        let mut note = Note {
            text: text.clone(),
            signatures: vec![sign(&text, "dea/node/dea-1", &node)],
        };
        note.signatures
            .push(cosign(&text, "pgr/node/pgr-1", &witness, 1_700_000_000));
        let written = note.to_text();
        let back = Note::parse(&written).unwrap();
        assert_eq!(back, note);
        assert_eq!(Checkpoint::parse(&back.text).unwrap(), cp);
        let (k, w) = (
            key("dea/node/dea-1", &node),
            key("pgr/node/pgr-1", &witness),
        );
        assert!(back.verified_by(&k));
        assert_eq!(back.cosigned_by(&w), Some(1_700_000_000));
        // Keys do not stand in for each other, nor a cosignature for a signature.
        assert!(!back.verified_by(&w));
        assert!(!back.verified_by(&key("dea/node/dea-1", &witness)));
        assert_eq!(back.cosigned_by(&k), None);
        // One byte of the text changed: nothing verifies.
        let forged = written.replacen("42", "43", 1);
        let forged = Note::parse(&forged).unwrap();
        assert!(!forged.verified_by(&k));
        assert_eq!(forged.cosigned_by(&w), None);
        // Keys round-trip in their written form, and a wrong id is refused.
        assert_eq!(VerifierKey::decode(&k.encode()), Some(k.clone()));
        let bad = k.encode().replacen('+', "+0", 1);
        assert_eq!(VerifierKey::decode(&bad), None);
    }

    #[test]
    fn malformed_notes_are_refused() {
        for bad in [
            "",
            "text\n",
            "text\n\n",
            "text\n\n- dea AAAA\n",
            "text\n\n\u{2014} dea !!!\n",
            "text\n\n\u{2014} dea AAAAAAA=",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Checkpoint::parse("o\nx\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n3\nAAAA\n").is_err());
    }
}
