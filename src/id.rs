//! Message ids: 16 bytes, time-ordered UUIDv7 for new messages, UUIDv8 derived from content where
//! a re-run must give the same id. Pure values; `MessageId::new_v7` reads the system random
//! number generator, nothing else.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A message id: 16 bytes, a UUIDv7 (time-ordered) or, for ids derived from content, a UUIDv8.
///
/// Printed and parsed in the canonical hyphenated form:
///
/// ```
/// use enlace::MessageId;
///
/// let id: MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse().unwrap();
/// assert_eq!(id.to_string(), "01a220d3-7886-74d0-99d1-f57d343e1e76");
/// assert!("not-an-id".parse::<MessageId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; 16]);

/// A string that is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a message id (a UUID such as 01a220d3-7886-74d0-99d1-f57d343e1e76)")]
pub struct BadMessageId(pub String);

impl MessageId {
    /// A fresh UUIDv7 for the given time.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use enlace::MessageId;
    ///
    /// let a = MessageId::new_v7(SystemTime::now());
    /// assert_eq!(a.to_string().len(), 36);
    /// ```
    pub fn new_v7(now: SystemTime) -> MessageId {
        let mut rnd = [0u8; 10];
        // The system RNG failing is not recoverable in any meaningful way for id generation.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd)
            .expect("system random number generator");
        let ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&rnd);
        b[6] = (b[6] & 0x0f) | 0x70; // version 7
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
        MessageId(b)
    }

    /// A deterministic id derived from a namespace and a name (UUIDv8 layout, SHA-256 based), for
    /// where a re-run must produce the same id, e.g. bulk sending resumed from a file.
    ///
    /// ```
    /// use enlace::MessageId;
    ///
    /// let a = MessageId::derived(b"/data/records.jsonl", b"line 1");
    /// assert_eq!(a, MessageId::derived(b"/data/records.jsonl", b"line 1"));
    /// assert_ne!(a, MessageId::derived(b"/data/records.jsonl", b"line 2"));
    /// ```
    pub fn derived(namespace: &[u8], name: &[u8]) -> MessageId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"enlace/v1 derived message id\0");
        ctx.update(&(namespace.len() as u64).to_be_bytes());
        ctx.update(namespace);
        ctx.update(name);
        let d = ctx.finish();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_ref()[..16]);
        b[6] = (b[6] & 0x0f) | 0x80; // version 8
        b[8] = (b[8] & 0x3f) | 0x80;
        MessageId(b)
    }

    /// The id in its 16-byte binary form, if `b` is 16 bytes long.
    ///
    /// ```
    /// use enlace::MessageId;
    ///
    /// let id = MessageId::derived(b"feed", b"record 1");
    /// assert_eq!(MessageId::from_slice(id.as_bytes()), Some(id));
    /// assert_eq!(MessageId::from_slice(b"short"), None);
    /// ```
    pub fn from_slice(b: &[u8]) -> Option<MessageId> {
        b.try_into().ok().map(MessageId)
    }

    /// The 16 bytes of the id.
    ///
    /// ```
    /// let id: enlace::MessageId = "01a220d3-7886-74d0-99d1-f57d343e1e76".parse().unwrap();
    /// assert_eq!(id.as_bytes()[..2], [0x01, 0xa2]);
    /// ```
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 16 bytes of the id, as the protobuf fields carry it.
    ///
    /// ```
    /// let id = enlace::MessageId::derived(b"feed", b"record 1");
    /// let request = enlace::pb::DlqShow { message_id: id.to_bytes() };
    /// assert_eq!(request.message_id.len(), 16);
    /// ```
    pub fn to_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }

    /// Whether the id has the layout a node accepts for a new message (UUIDv7 or v8).
    pub(crate) fn is_v7_or_v8(&self) -> bool {
        matches!(self.0[6] >> 4, 7 | 8)
    }
}

impl std::str::FromStr for MessageId {
    type Err = BadMessageId;

    /// Parses the canonical hyphenated form (hyphens optional).
    fn from_str(s: &str) -> Result<MessageId, BadMessageId> {
        let bad = || BadMessageId(s.to_owned());
        let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
        if hex.len() != 32 {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(MessageId(b))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 36];
        let mut n = 0;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[n] = b'-';
                n += 1;
            }
            out[n] = DIGITS[(b >> 4) as usize];
            out[n + 1] = DIGITS[(b & 15) as usize];
            n += 2;
        }
        f.write_str(std::str::from_utf8(&out).expect("hex digits"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn uuid_v7_layout_and_order() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let a = MessageId::new_v7(t);
        let b = MessageId::new_v7(t + Duration::from_millis(1));
        assert_eq!(a.as_bytes()[6] >> 4, 7);
        assert_eq!(a.as_bytes()[8] >> 6, 0b10);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>(), Ok(a));
        assert_eq!(a.to_string().len(), 36);
        assert!("ab".parse::<MessageId>().is_err());
        assert!("zz".repeat(16).parse::<MessageId>().is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = MessageId::derived(b"file", b"1");
        assert_eq!(a, MessageId::derived(b"file", b"1"));
        assert_ne!(a, MessageId::derived(b"file", b"2"));
        assert_ne!(a, MessageId::derived(b"fil", b"e1"));
        assert!(a.is_v7_or_v8());
    }
}
