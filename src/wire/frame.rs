//! Length-prefixed frames on QUIC streams, with the size limit checked before decoding.
//!
//! A frame is a 4-byte big-endian body length followed by an encoded `Frame`. The reader refuses a
//! length over its limit without reading the body; [`FrameReader::skip`] then discards exactly that
//! many bytes so a long-lived stream stays in sync, or the caller resets the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use quinn::{RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use super::pb;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before a frame began.
    #[error("stream ended")]
    End,
    /// The declared length exceeds the receiver's limit; the body has not been read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    /// The body is not a valid `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The frame's last byte did not arrive within the deadline from its first.
    #[error("frame not complete within {0:?} of its first byte")]
    Late(std::time::Duration),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

impl FrameError {
    /// The refusal a node sends back for this error, if the peer deserves one.
    pub fn refusal(&self) -> Option<pb::Refused> {
        let code = match self {
            FrameError::TooLarge { .. } => pb::RefusalCode::TooLarge,
            FrameError::Malformed(_) | FrameError::Truncated | FrameError::Late(_) => {
                pb::RefusalCode::Malformed
            }
            _ => return None,
        };
        Some(pb::Refused {
            code: code as i32,
            reason: self.to_string(),
            ..Default::default()
        })
    }
}

/// Encodes a frame with its length prefix.
pub fn encode(frame: &pb::Frame) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(frame, &mut buf);
    buf.freeze()
}

/// Appends a frame with its length prefix to `buf`.
pub fn encode_into(frame: &pb::Frame, buf: &mut BytesMut) {
    let len = frame.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    frame.encode(buf).expect("capacity reserved");
}

/// Checks a frame's declared length against the reader's limit, before anything is read or
/// allocated for its body.
fn check_len(len: [u8; 4], max: u64) -> Result<u64, FrameError> {
    let len = u64::from(u32::from_be_bytes(len));
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes the frames in `buf` as a [`FrameReader`] reads them from a stream: a 4-byte length
/// checked against `max` before decoding, then the body. For bytes already in memory (tests,
/// fuzzing).
///
/// # Errors
/// The first frame that is too large, malformed or cut short.
#[cfg(any(test, feature = "fuzzing"))]
pub fn decode_all(mut buf: &[u8], max: u64) -> Result<Vec<pb::Frame>, FrameError> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let (len, rest) = buf.split_first_chunk::<4>().ok_or(FrameError::Truncated)?;
        let len = check_len(*len, max)? as usize;
        if rest.len() < len {
            return Err(FrameError::Truncated);
        }
        let (body, rest) = rest.split_at(len);
        frames.push(pb::Frame::decode(body)?);
        buf = rest;
    }
    Ok(frames)
}

/// Writes one frame.
pub async fn write(send: &mut SendStream, frame: &pb::Frame) -> Result<(), FrameError> {
    send.write_all(&encode(frame)).await?;
    Ok(())
}

/// Wraps a body into a frame and writes it.
pub async fn write_body(send: &mut SendStream, body: pb::frame::Body) -> Result<(), FrameError> {
    write(send, &pb::Frame { body: Some(body) }).await
}

/// What reading frames from an untrusted sender may cost: budgets of bytes (the sender's
/// connection's and the whole node's) that a frame's declared length is taken from before its
/// body is allocated, and a deadline from a frame's first byte to its last.
#[derive(Clone)]
pub struct Bounds {
    pub budgets: Vec<Arc<Semaphore>>,
    pub deadline: Duration,
}

/// A frame's share of its [`Bounds`] budgets, given back when dropped (once the request it
/// carried has been answered).
pub struct Held(#[allow(dead_code)] Vec<OwnedSemaphorePermit>);

/// Reads frames from a stream, each at most `max` bytes.
pub struct FrameReader {
    recv: RecvStream,
    max: u64,
    bounds: Option<Bounds>,
}

impl FrameReader {
    pub fn new(recv: RecvStream, max: u64) -> FrameReader {
        FrameReader {
            recv,
            max,
            bounds: None,
        }
    }

    /// A reader for an untrusted sender: see [`Bounds`] and [`FrameReader::read_held`].
    pub fn bounded(recv: RecvStream, max: u64, bounds: Bounds) -> FrameReader {
        FrameReader {
            recv,
            max,
            bounds: Some(bounds),
        }
    }

    /// Reads the next frame within the reader's [`Bounds`]: the body is allocated only once its
    /// length is taken from every budget (waiting for room, which does not count against the
    /// deadline), and the whole frame must arrive within the deadline from its first byte.
    /// The returned [`Held`] keeps the frame's share of the budgets.
    ///
    /// # Errors
    /// As [`FrameReader::read`], and [`FrameError::Late`] past the deadline.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    pub async fn read_held(&mut self) -> Result<(pb::Frame, Held), FrameError> {
        let Some(bounds) = self.bounds.clone() else {
            return Ok((self.read().await?, Held(Vec::new())));
        };
        let mut first = [0u8; 1];
        read_exact(&mut self.recv, &mut first, true).await?;
        let start = Instant::now();
        let late = || FrameError::Late(bounds.deadline);
        let mut len = [first[0], 0, 0, 0];
        timeout_at(
            start + bounds.deadline,
            read_exact(&mut self.recv, &mut len[1..], false),
        )
        .await
        .map_err(|_| late())??;
        let len = u64::from(u32::from_be_bytes(len));
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let waited = Instant::now();
        let mut held = Vec::with_capacity(bounds.budgets.len());
        for b in &bounds.budgets {
            // The semaphores are never closed.
            let permit = b.clone().acquire_many_owned(len as u32).await;
            held.push(permit.expect("frame budgets are never closed"));
        }
        let deadline = start + bounds.deadline + waited.elapsed();
        let mut body = vec![0u8; len as usize];
        timeout_at(deadline, read_exact(&mut self.recv, &mut body, false))
            .await
            .map_err(|_| late())??;
        Ok((pb::Frame::decode(Bytes::from(body))?, Held(held)))
    }

    /// Reads the next frame.
    ///
    /// # Errors
    /// [`FrameError::End`] when the stream finished between frames; [`FrameError::TooLarge`]
    /// when the declared length exceeds the limit (the body is left unread: call
    /// [`FrameReader::skip`] to stay in sync); [`FrameError::Malformed`] for an undecodable body.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled read may leave part of a frame consumed.
    pub async fn read(&mut self) -> Result<pb::Frame, FrameError> {
        let body = self.read_raw().await?;
        Ok(pb::Frame::decode(body)?)
    }

    /// Reads the next frame's body without decoding it.
    pub async fn read_raw(&mut self) -> Result<Bytes, FrameError> {
        let mut len = [0u8; 4];
        read_exact(&mut self.recv, &mut len, true).await?;
        let len = check_len(len, self.max)?;
        let mut body = vec![0u8; len as usize];
        read_exact(&mut self.recv, &mut body, false).await?;
        Ok(Bytes::from(body))
    }

    /// Discards `len` bytes (the body of a frame refused as too large), within the reader's
    /// deadline if it has [`Bounds`].
    pub async fn skip(&mut self, len: u64) -> Result<(), FrameError> {
        match self.bounds.as_ref().map(|b| b.deadline) {
            Some(d) => tokio::time::timeout(d, self.skip_all(len))
                .await
                .map_err(|_| FrameError::Late(d))?,
            None => self.skip_all(len).await,
        }
    }

    async fn skip_all(&mut self, mut len: u64) -> Result<(), FrameError> {
        let mut scratch = [0u8; 16 * 1024];
        while len > 0 {
            let n = (scratch.len() as u64).min(len) as usize;
            match self.recv.read(&mut scratch[..n]).await? {
                Some(read) => len -= read as u64,
                None => return Err(FrameError::Truncated),
            }
        }
        Ok(())
    }

    /// The underlying stream, e.g. to stop it.
    pub fn stream(&mut self) -> &mut RecvStream {
        &mut self.recv
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> RecvStream {
        self.recv
    }
}

/// Fills `buf`; `at_start` says whether a clean end of stream before the first byte is the
/// end of the frames rather than a truncated frame.
async fn read_exact(
    recv: &mut RecvStream,
    buf: &mut [u8],
    at_start: bool,
) -> Result<(), FrameError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(0)) if at_start => Err(FrameError::End),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_prefixes_length() {
        let f = pb::Frame {
            body: Some(pb::frame::Body::Ack(pb::Ack {
                message_id: Bytes::from_static(&[7; 16]),
            })),
        };
        let b = encode(&f);
        let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        assert_eq!(len, b.len() - 4);
        assert_eq!(pb::Frame::decode(&b[4..]).unwrap(), f);
        let two = [b.as_ref(), b.as_ref()].concat();
        assert_eq!(decode_all(&two, 1024).unwrap(), vec![f.clone(), f]);
        assert!(matches!(
            decode_all(&two, 4),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_all(&two[..5], 1024),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode_all(&two[..3], 1024),
            Err(FrameError::Truncated)
        ));
    }
}
