//! The `/xencode/sync/1` stream codec: a request is one length-prefixed
//! frame (u32 big-endian length, at most `MAX_FRAME_BYTES`), the response a
//! single acknowledgement byte. Frames are decoded by the caller, so a
//! malformed one is counted against its sender rather than lost in the codec.
//! An oversize length prefix is reported as [`RawFrame::Oversize`], not as a
//! read error: request-response drops read errors without an event, and the
//! node must see the violation to count it and strike the peer.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use xencode_protocol::wire::MAX_FRAME_BYTES;

#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// A request on the wire: a frame's bytes (undecoded), or the length a peer
/// declared for a frame over the limit (whose bytes were never read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    Frame(Vec<u8>),
    Oversize(usize),
}

impl Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = RawFrame;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawFrame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME_BYTES {
            return Ok(RawFrame::Oversize(len));
        }
        // Grow with the bytes that actually arrive: a length prefix alone
        // must not make the node allocate megabytes.
        let mut buf = Vec::with_capacity(len.min(64 * 1024));
        (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
        if buf.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("frame ended after {} of {len} bytes", buf.len()),
            ));
        }
        Ok(RawFrame::Frame(buf))
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
        let RawFrame::Frame(req) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an oversize marker is never sent",
            ));
        };
        let len = u32::try_from(req.len())
            .ok()
            .filter(|l| *l as usize <= MAX_FRAME_BYTES)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&req).await?;
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
