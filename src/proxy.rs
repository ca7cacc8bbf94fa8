//! Byte copying between the client and the upstream, both directions in one task.
//!
//! Buffers come from a small per-thread pool and are held only while data is in flight:
//! a connection waiting for its next request owns no copy buffer, so idle connections
//! cost only their sockets and TLS state. A read that finds nothing returns its buffer at
//! once; a write that cannot finish keeps it until the peer drains it.
//!
//! Half-close is passed through: when one side finishes sending (FIN, or TLS close_notify),
//! the other side's write half is shut down after the buffered bytes are written, and
//! copying continues the other way until that side finishes too.
//!
//! An idle timeout costs no timer work per read: the copy notes the time when bytes moved
//! in a wakeup, and one sleep, when it fires, either ends the copy or is moved to the last
//! activity plus the timeout.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Instant};

use crate::bufpool::PoolBuf;
use crate::registry::ByteSink;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

/// Sees the bytes of both directions as they are copied, until it says it has seen
/// enough; from then on the copy does no extra work (the tap is dropped).
pub trait Tap: Send {
    /// Returns whether to keep tapping.
    fn observe(&mut self, dir: Direction, bytes: &[u8]) -> bool;
}

/// A tap, while it is wanted.
pub type TapSlot<'a> = Option<Box<dyn Tap + 'a>>;

/// One direction of the copy.
#[derive(Default)]
struct Pipe {
    /// Bytes read but not yet written: `buf[start..end]`.
    buf: Option<PoolBuf>,
    start: usize,
    end: usize,
    /// The writer has unflushed data (TLS records buffered in rustls).
    need_flush: bool,
    read_eof: bool,
    done: bool,
    bytes: u64,
}

impl Pipe {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        tap: &mut TapSlot<'_>,
        dir: Direction,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if let Some(buf) = &self.buf {
                while self.start < self.end {
                    let n = ready!(w.as_mut().poll_write(cx, &buf[self.start..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.start += n;
                    self.need_flush = true;
                }
                self.buf = None;
            }
            if self.read_eof {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut buf = PoolBuf::take();
            let mut rb = ReadBuf::new(&mut buf);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    drop(buf);
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                // A TLS peer that closes the socket without close_notify: MongoDB messages
                // carry their own length, so a cut is seen by mongod; treat it as EOF.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.read_eof = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.read_eof = true;
                    } else {
                        if let Some(t) = tap {
                            if !t.observe(dir, &buf[..n]) {
                                *tap = None;
                            }
                        }
                        self.bytes += n as u64;
                        self.start = 0;
                        self.end = n;
                        self.buf = Some(buf);
                    }
                }
            }
        }
    }
}

/// Bytes copied each way over a connection's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
}

/// Why a copy ended before both directions finished.
#[derive(Debug)]
pub enum CopyError {
    Io(io::Error),
    /// No byte moved either way for this long.
    Idle(Duration),
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::Io(e) => e.fmt(f),
            CopyError::Idle(d) => write!(
                f,
                "no bytes either way for {}",
                humantime::format_duration(*d)
            ),
        }
    }
}

/// Copies both ways until both directions have finished, or either fails, or (with
/// `idle`) no byte has moved for that long. The running totals are published to
/// `bytes_in` (client → upstream) and `bytes_out` as they grow, and the final ones
/// however the copy ends. `tap` sees the bytes until it has seen enough. On error, the
/// totals so far are returned with it.
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    bytes_in: &(impl ByteSink + ?Sized),
    bytes_out: &(impl ByteSink + ?Sized),
    mut tap: TapSlot<'_>,
    idle: Option<Duration>,
) -> Result<Totals, (CopyError, Totals)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Pipe::default();
    let mut down = Pipe::default();
    let mut idle = idle.map(IdleTimer::new);
    let result = poll_fn(|cx| {
        let a = if up.done {
            Poll::Ready(Ok(()))
        } else {
            up.poll_copy(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *upstream),
                &mut tap,
                Direction::ClientToUpstream,
            )
        };
        if let Poll::Ready(Err(e)) = a {
            return Poll::Ready(Err(CopyError::Io(e)));
        }
        let b = if down.done {
            Poll::Ready(Ok(()))
        } else {
            down.poll_copy(
                cx,
                Pin::new(&mut *upstream),
                Pin::new(&mut *client),
                &mut tap,
                Direction::UpstreamToClient,
            )
        };
        bytes_in.publish(up.bytes);
        bytes_out.publish(down.bytes);
        match (a, b) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(CopyError::Io(e))),
            (Poll::Ready(_), Poll::Ready(_)) => Poll::Ready(Ok(())),
            _ => match &mut idle {
                Some(t) => t.poll_expired(cx, up.bytes + down.bytes),
                None => Poll::Pending,
            },
        }
    })
    .await;
    // Again here: an error above returns before the stores in the poll.
    bytes_in.publish(up.bytes);
    bytes_out.publish(down.bytes);
    let totals = Totals {
        client_to_upstream: up.bytes,
        upstream_to_client: down.bytes,
    };
    result.map(|()| totals).map_err(|e| (e, totals))
}

/// One sleep for a connection's idle timeout, moved only when it fires.
struct IdleTimer {
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Bytes moved (both ways) when activity was last noted, and when.
    moved: u64,
    last: Instant,
}

impl IdleTimer {
    fn new(limit: Duration) -> IdleTimer {
        let last = Instant::now();
        IdleTimer {
            limit,
            sleep: Box::pin(sleep(limit)),
            moved: 0,
            last,
        }
    }

    /// Notes activity if `moved` grew, and says whether the connection has been idle for
    /// the limit (registering for a wakeup if not).
    fn poll_expired(&mut self, cx: &mut Context<'_>, moved: u64) -> Poll<Result<(), CopyError>> {
        if moved != self.moved {
            self.moved = moved;
            self.last = Instant::now();
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let due = self.last + self.limit;
            if due <= Instant::now() {
                return Poll::Ready(Err(CopyError::Idle(self.limit)));
            }
            self.sleep.as_mut().reset(due);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    static C: AtomicU64 = AtomicU64::new(0);

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (mut client, mut proxy_client_side) = tokio::io::duplex(1024);
        let (mut proxy_upstream_side, mut upstream) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            run(
                &mut proxy_client_side,
                &mut proxy_upstream_side,
                &C,
                &C,
                None,
                None,
            )
            .await
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap(); // half-close: client is done sending
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap(); // sees EOF after the data
        assert_eq!(got, b"ping");
        // The other direction still works after the client's FIN.
        upstream.write_all(b"pong-after-fin").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong-after-fin");
        let totals = task.await.unwrap().unwrap();
        assert_eq!(
            totals,
            Totals {
                client_to_upstream: 4,
                upstream_to_client: 14
            }
        );
    }

    #[tokio::test]
    async fn large_transfer_under_backpressure_arrives_intact() {
        // Small duplex buffers force partial writes and Pending on both sides.
        let (mut client, mut a) = tokio::io::duplex(333);
        let (mut b, mut upstream) = tokio::io::duplex(777);
        let task = tokio::spawn(async move { run(&mut a, &mut b, &C, &C, None, None).await });
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "payload corrupted");
        drop(upstream);
        let _client = writer.await.unwrap();
        let totals = task.await.unwrap().unwrap();
        assert_eq!(totals.client_to_upstream, 1_000_000);
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Direction, Vec<u8>)>>>;

    /// Records what it sees until it has seen `limit` bytes in total.
    struct Recording {
        seen: Seen,
        limit: usize,
        total: usize,
    }

    impl Tap for Recording {
        fn observe(&mut self, dir: Direction, bytes: &[u8]) -> bool {
            self.seen.lock().unwrap().push((dir, bytes.to_vec()));
            self.total += bytes.len();
            self.total < self.limit
        }
    }

    #[tokio::test]
    async fn a_tap_sees_both_directions_until_it_has_seen_enough() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut upstream) = tokio::io::duplex(1024);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tap = Recording {
            seen: seen.clone(),
            limit: 8,
            total: 0,
        };
        let task =
            tokio::spawn(
                async move { run(&mut a, &mut b, &C, &C, Some(Box::new(tap)), None).await },
            );
        let mut buf = [0u8; 4];
        client.write_all(b"ping").await.unwrap();
        upstream.read_exact(&mut buf).await.unwrap();
        upstream.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        client.write_all(b"more").await.unwrap();
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"more", "bytes flow on after the tap is gone");
        drop(client);
        drop(upstream);
        let _ = task.await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![
                (Direction::ClientToUpstream, b"ping".to_vec()),
                (Direction::UpstreamToClient, b"pong".to_vec())
            ]
        );
    }

    /// A client stream whose reads fail once it has delivered its first bytes.
    struct FailsAfterData {
        inner: tokio::io::DuplexStream,
        delivered: bool,
    }

    impl AsyncRead for FailsAfterData {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.delivered {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            self.delivered = buf.filled().len() > before;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for FailsAfterData {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn final_byte_counts_are_published_when_the_client_side_fails() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (mut b, mut upstream) = tokio::io::duplex(1024);
        let mut a = FailsAfterData {
            inner: a,
            delivered: false,
        };
        client.write_all(b"hello").await.unwrap();
        let (bytes_in, bytes_out) = (AtomicU64::new(0), AtomicU64::new(0));
        let (e, totals) = run(&mut a, &mut b, &bytes_in, &bytes_out, None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CopyError::Io(ref e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{e}"
        );
        assert_eq!(totals.client_to_upstream, 5);
        assert_eq!(
            bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            5,
            "published too"
        );
        let mut got = [0u8; 5];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_copy_ends_after_the_timeout_unless_bytes_keep_moving() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut upstream) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(10);
        let started = Instant::now();
        let task =
            tokio::spawn(async move { run(&mut a, &mut b, &C, &C, None, Some(limit)).await });
        // A byte every 6 s, each way in turn, keeps it open well past the limit.
        let mut one = [0u8; 1];
        for i in 0..4 {
            sleep(Duration::from_secs(6)).await;
            if i % 2 == 0 {
                client.write_all(b"x").await.unwrap();
                upstream.read_exact(&mut one).await.unwrap();
            } else {
                upstream.write_all(b"y").await.unwrap();
                client.read_exact(&mut one).await.unwrap();
            }
        }
        assert!(!task.is_finished(), "open while bytes move");
        let (e, totals) = task.await.unwrap().unwrap_err();
        assert!(matches!(e, CopyError::Idle(d) if d == limit), "{e}");
        assert_eq!(e.to_string(), "no bytes either way for 10s");
        assert_eq!(
            totals,
            Totals {
                client_to_upstream: 2,
                upstream_to_client: 2
            }
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(34) && waited < Duration::from_secs(35),
            "closed 10 s after the last byte (at 24 s), not {waited:?}"
        );
        // The client sees the end: the copy no longer holds its side.
        assert_eq!(client.read(&mut one).await.unwrap(), 0);
    }
}
