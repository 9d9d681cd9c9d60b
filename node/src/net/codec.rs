//! The `/xencode/sync/2` stream codec: a request is one or more
//! length-prefixed frames in order (u32 big-endian length each, at most
//! `MAX_FRAME_BYTES` each and `MAX_FRAME_BYTES` together, at most
//! [`MAX_BATCH_FRAMES`]), ended by the end of the stream; the response a
//! single acknowledgement byte. Batching lets a burst (a `git checkout` of
//! hundreds of files, each its own document) cross in a few round trips
//! instead of one per frame. Frames are decoded by the caller, so a
//! malformed one is counted against its sender rather than lost in the
//! codec. An oversize length prefix (or batch) is reported as
//! [`RawFrame::Oversize`], not as a read error: request-response drops read
//! errors without an event, and the node must see the violation to count it
//! and strike the peer.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use xencode_protocol::wire::MAX_FRAME_BYTES;

/// Frames one request may carry.
pub const MAX_BATCH_FRAMES: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// A request on the wire: frames' bytes (undecoded), in order, or the
/// length a peer declared past the limits (whose bytes were never read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    Frames(Vec<Vec<u8>>),
    Oversize(usize),
}

/// Reads a length prefix; `None` at a clean end of the stream.
async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = io.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a length prefix",
                ))
            };
        }
        got += n;
    }
    Ok(Some(u32::from_be_bytes(len) as usize))
}

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = RawFrame;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut frames = Vec::new();
        let mut total = 0usize;
        while let Some(len) = read_len(io).await? {
            total = total.saturating_add(len);
            if len > MAX_FRAME_BYTES || total > MAX_FRAME_BYTES || frames.len() >= MAX_BATCH_FRAMES
            {
                return Ok(RawFrame::Oversize(total));
            }
            // Grow with the bytes that actually arrive: a length prefix
            // alone must not make the node allocate megabytes.
            let mut buf = Vec::with_capacity(len.min(64 * 1024));
            (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
            if buf.len() != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame ended after {} of {len} bytes", buf.len()),
                ));
            }
            frames.push(buf);
        }
        if frames.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a request with no frame",
            ));
        }
        Ok(RawFrame::Frames(frames))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await?;
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RawFrame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let RawFrame::Frames(frames) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an oversize marker is never sent",
            ));
        };
        let total: usize = frames.iter().map(Vec::len).sum();
        if frames.is_empty() || frames.len() > MAX_BATCH_FRAMES || total > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a batch of frames over the limits",
            ));
        }
        for f in &frames {
            let len = u32::try_from(f.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
            io.write_all(&len.to_be_bytes()).await?;
            io.write_all(f).await?;
        }
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[0]).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests;
