//! Frames on QUIC streams, for both ends: reading length-prefixed frames and
//! writing queued ones.
//!
//! Both sides batch. A reader takes whole chunks from quinn (one lock of the
//! connection per chunk, not two per frame) and cuts every complete frame out
//! of them; a writer gathers every frame already queued into one stream write,
//! so a burst of replies or events costs one write and as few packets as fit.
//! Neither holds a buffer while the stream is idle, which is what most of a
//! chat server's connections are most of the time.

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::protocol::{FrameError, MAX_FRAME};

/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Reads length-prefixed frames from a QUIC stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The next frame body; `Ok(None)` at a clean end of the stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(len) = self.fill().await? else {
            return Ok(None);
        };
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        if self.buf.is_empty() {
            // Let go of the chunk's memory while idle.
            self.buf = BytesMut::new();
        }
        Ok(Some(body))
    }

    /// The next frame body without taking it: the next [`FrameReader::next`]
    /// returns it again. Tells a data stream from the event stream.
    pub async fn peek(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let Some(len) = self.fill().await? else {
            return Ok(None);
        };
        Ok(Some(&self.buf[4..4 + len]))
    }

    /// The stream and what was read off it but not yet taken as frames:
    /// for a stream whose header frame is followed by raw bytes.
    pub fn into_parts(self) -> (quinn::RecvStream, Bytes) {
        (self.recv, self.buf.freeze())
    }

    /// Reads until a whole frame is buffered; its body length, or `None` at
    /// a clean end of the stream.
    async fn fill(&mut self) -> Result<Option<usize>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(FrameError::TooLarge(len));
                }
                if self.buf.len() >= 4 + len {
                    return Ok(Some(len));
                }
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => return Err(FrameError::Truncated),
                Err(e) => return Err(FrameError::Io(e.into())),
            }
        }
    }
}

/// Writes frames from `frames` to `stream` until the channel closes (true) or
/// a write fails (false). Frames queued meanwhile go out in one write.
pub async fn write_frames<F: AsRef<[u8]>>(
    stream: &mut quinn::SendStream,
    frames: &mut mpsc::Receiver<F>,
) -> bool {
    while let Some(first) = frames.recv().await {
        let first = first.as_ref();
        let result = match frames.try_recv() {
            // The common case when idle-ish: one frame, written without a copy.
            Err(_) => stream.write_all(first).await,
            Ok(second) => {
                // A fresh buffer per burst: an idle stream holds none.
                let mut batch = Vec::with_capacity(first.len() * 4);
                batch.extend_from_slice(first);
                batch.extend_from_slice(second.as_ref());
                while batch.len() < WRITE_BATCH {
                    match frames.try_recv() {
                        Ok(next) => batch.extend_from_slice(next.as_ref()),
                        Err(_) => break,
                    }
                }
                stream.write_all(&batch).await
            }
        };
        if result.is_err() {
            return false;
        }
    }
    true
}
