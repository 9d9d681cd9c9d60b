//! The relay's bytes-per-second limit: every byte a relaying node carries
//! for others draws from one token bucket, so a laptop that relays for its
//! team never gives it more than `[network.relay_limits] max_bytes_per_sec`.
//!
//! libp2p's relay copies a circuit's bytes between two substreams (the
//! source's `hop` stream, the destination's `stop` stream) as fast as both
//! ends take them, and has no rate of its own. So the limit sits one layer
//! below, on the connections' substreams: each substream reads the protocol
//! it negotiates as it passes (multistream-select names it in the clear
//! inside the encrypted connection), and a substream that is the relay end
//! of a circuit — an inbound `hop` or an outbound `stop` — has its reads
//! paced by the bucket. Pacing the reads paces the relay: it writes only
//! what it read, and yamux's flow control makes the sender wait, so nothing
//! is dropped and no buffer grows. This node's own traffic (its sync, and
//! circuits it uses through other relays: outbound `hop`, inbound `stop`)
//! is never paced.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

use crate::metrics::Metrics;

const HOP: &[u8] = b"/libp2p/circuit/relay/0.2.0/hop";
const STOP: &[u8] = b"/libp2p/circuit/relay/0.2.0/stop";
/// Bytes a substream's protocol must appear within (multistream-select's
/// header and the protocol line come first).
const SNIFF_BYTES: usize = 96;

/// Bytes per second shared by every relayed circuit, with one second's
/// worth of burst.
pub struct Bucket {
    rate: u64,
    state: Mutex<(f64, Instant)>,
    metrics: Arc<Metrics>,
}

impl Bucket {
    /// A bucket of `rate` bytes per second (0: no limit, `None`).
    pub fn new(rate: u64, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        (rate > 0).then(|| {
            Arc::new(Self {
                rate,
                state: Mutex::new((rate as f64, Instant::now())),
                metrics,
            })
        })
    }

    /// Bytes that may be read now (at most `want`), taken from the bucket;
    /// or how long until some may.
    fn take(&self, want: usize) -> Result<usize, Duration> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(want);
        };
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate as f64)
            .min(self.rate as f64);
        if tokens >= 1.0 {
            let n = (tokens as usize).min(want);
            *state = (tokens - n as f64, now);
            Ok(n)
        } else {
            *state = (tokens, now);
            // Wait for a useful amount, not for one byte at a time.
            let need = (want as f64).min(self.rate as f64 / 20.0).max(1.0) - tokens;
            Err(Duration::from_secs_f64(need / self.rate as f64))
        }
    }
}

/// A connection whose relay substreams draw from the bucket.
pub struct Throttled<M> {
    inner: M,
    bucket: Option<Arc<Bucket>>,
}

impl<M> Throttled<M> {
    pub fn new(inner: M, bucket: Option<Arc<Bucket>>) -> Self {
        Self { inner, bucket }
    }
}

impl<M> StreamMuxer for Throttled<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = Paced<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_inbound(cx)
            .map_ok(|s| Paced::new(s, this.bucket.clone(), Side::Inbound))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_outbound(cx)
            .map_ok(|s| Paced::new(s, this.bucket.clone(), Side::Outbound))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Inbound,
    Outbound,
}

/// What is known of a substream's protocol.
enum Kind {
    /// Still looking at its first bytes (kept here).
    Sniffing(Vec<u8>),
    /// The relay end of a circuit: reads are paced.
    Relay,
    /// Anything else: passed through.
    Other,
}

/// A substream that may turn out to be the relay end of a circuit.
pub struct Paced<S> {
    inner: S,
    bucket: Option<Arc<Bucket>>,
    side: Side,
    kind: Kind,
    wait: Option<futures_timer::Delay>,
}

impl<S> Paced<S> {
    fn new(inner: S, bucket: Option<Arc<Bucket>>, side: Side) -> Self {
        let kind = if bucket.is_some() {
            Kind::Sniffing(Vec::new())
        } else {
            Kind::Other
        };
        Self {
            inner,
            bucket,
            side,
            kind,
            wait: None,
        }
    }

    /// Looks for the relay's protocol in bytes passing `side`-wards: an
    /// inbound substream's reads name `hop` when a source asks this relay
    /// for a circuit; an outbound substream's writes name `stop` when this
    /// relay opens the circuit to its destination.
    fn sniff(&mut self, bytes: &[u8], reading: bool) {
        let Kind::Sniffing(seen) = &mut self.kind else {
            return;
        };
        let wanted = match (self.side, reading) {
            (Side::Inbound, true) => HOP,
            (Side::Outbound, false) => STOP,
            _ => return,
        };
        let room = SNIFF_BYTES.saturating_sub(seen.len());
        seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if seen.windows(wanted.len()).any(|w| w == wanted) {
            self.kind = Kind::Relay;
        } else if seen.len() >= SNIFF_BYTES {
            self.kind = Kind::Other;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let mut len = buf.len();
        if let (Kind::Relay, Some(bucket)) = (&this.kind, &this.bucket) {
            if let Some(wait) = &mut this.wait {
                if wait.poll_unpin(cx).is_pending() {
                    return Poll::Pending;
                }
                this.wait = None;
            }
            match bucket.take(len) {
                Ok(n) => len = n,
                Err(after) => {
                    bucket.metrics.relay_paced();
                    let mut wait = futures_timer::Delay::new(after);
                    // Registers the waker; always pending on first poll.
                    let _ = wait.poll_unpin(cx);
                    this.wait = Some(wait);
                    return Poll::Pending;
                }
            }
        }
        let read = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..len]);
        if let Poll::Ready(Ok(n)) = &read {
            let n = *n;
            match &this.kind {
                Kind::Relay => {
                    if let Some(bucket) = &this.bucket {
                        // Taken `len`, read `n`: the rest goes back.
                        bucket.give_back(len - n);
                        bucket.metrics.relay_bytes(n as u64);
                    }
                }
                Kind::Sniffing(_) => this.sniff(&buf[..n], true),
                Kind::Other => {}
            }
        } else if let Kind::Relay = this.kind
            && let Some(bucket) = &this.bucket
        {
            bucket.give_back(len);
        }
        read
    }
}

impl Bucket {
    /// Returns tokens taken for a read that brought fewer bytes.
    fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        if let Ok(mut state) = self.state.lock() {
            state.0 = (state.0 + n as f64).min(self.rate as f64);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.sniff(&buf[..*n], false);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new().expect("metrics"))
    }

    #[test]
    fn the_bucket_gives_its_rate_then_makes_readers_wait() {
        let bucket = Bucket::new(1000, metrics()).expect("limited");
        assert_eq!(bucket.take(600), Ok(600));
        assert_eq!(bucket.take(600), Ok(400));
        let wait = bucket.take(600).expect_err("empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(60),
            "{wait:?}"
        );
        bucket.give_back(100);
        assert_eq!(bucket.take(600), Ok(100));
        assert!(Bucket::new(0, metrics()).is_none(), "0 is no limit");
    }

    #[test]
    fn only_the_relay_ends_of_circuits_are_recognised() {
        let bucket = Bucket::new(1000, metrics());
        let header = |p: &[u8]| {
            let mut b = vec![19];
            b.extend_from_slice(b"/multistream/1.0.0\n");
            b.push(p.len() as u8 + 1);
            b.extend_from_slice(p);
            b.push(b'\n');
            b
        };
        let cases = [
            (Side::Inbound, true, HOP, true),
            (Side::Outbound, false, STOP, true),
            // This node's own use of a relay is not paced.
            (Side::Outbound, false, HOP, false),
            (Side::Inbound, true, STOP, false),
            (Side::Inbound, true, b"/xencode/sync/2".as_slice(), false),
        ];
        for (side, reading, proto, relay) in cases {
            let mut s = Paced::new((), bucket.clone(), side);
            let bytes = header(proto);
            // Split across two reads or writes.
            let (a, b) = bytes.split_at(10);
            s.sniff(a, reading);
            s.sniff(b, reading);
            s.sniff(&[0; SNIFF_BYTES], reading);
            assert_eq!(
                matches!(s.kind, Kind::Relay),
                relay,
                "{side_name} {}",
                String::from_utf8_lossy(proto),
                side_name = side == Side::Inbound
            );
        }
        let s = Paced::new((), None, Side::Inbound);
        assert!(matches!(s.kind, Kind::Other), "no limit: nothing sniffed");
    }
}
