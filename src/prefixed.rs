//! The client side of a connection as moat reads it: the bytes sniffed so far are replayed
//! first, and small reads are served from one large read-ahead.
//!
//! rustls reads its records 4 KiB at a time, so an upload through TLS would cost a syscall
//! per 4 KiB; reading up to 64 KiB at once into a pooled buffer and handing rustls slices
//! of it cuts those syscalls about sixteenfold. The buffer is borrowed from the per-thread
//! pool only while it holds unread bytes, so an idle connection owns none. A reader that
//! brings a buffer at least as large as the pool's (the plaintext copy loop) reads
//! straight into it, with no extra copy.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::bufpool::{PoolBuf, BUF_SIZE};

/// Bytes read from the stream but not yet handed to the reader.
#[derive(Default)]
enum Pending {
    #[default]
    Empty,
    /// What sniffing read: replayed first, then freed.
    Sniffed { bytes: Vec<u8>, pos: usize },
    /// A read-ahead: `buf[pos..end]` is unread.
    Ahead {
        buf: PoolBuf,
        pos: usize,
        end: usize,
    },
}

/// A stream whose first bytes were already read (to sniff the protocol) and are replayed
/// to the next reader before the stream's own bytes, with read-ahead for small reads.
pub struct Prefixed<T> {
    pending: Pending,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        let pending = if prefix.is_empty() {
            Pending::Empty
        } else {
            Pending::Sniffed {
                bytes: prefix,
                pos: 0,
            }
        };
        Prefixed { pending, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether bytes read from the stream still wait for the reader.
    pub fn has_pending(&self) -> bool {
        !matches!(self.pending, Pending::Empty)
    }
}

/// Copies what fits of `src[*pos..end]` into `out`; true when all of it has been taken.
fn serve(src: &[u8], pos: &mut usize, end: usize, out: &mut ReadBuf<'_>) -> bool {
    let n = (end - *pos).min(out.remaining());
    out.put_slice(&src[*pos..*pos + n]);
    *pos += n;
    *pos == end
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let drained = match &mut this.pending {
            Pending::Sniffed { bytes, pos } => {
                let end = bytes.len();
                Some(serve(bytes, pos, end, out))
            }
            Pending::Ahead { buf, pos, end } => Some(serve(buf, pos, *end, out)),
            Pending::Empty => None,
        };
        match drained {
            Some(true) => {
                this.pending = Pending::Empty;
                return Poll::Ready(Ok(()));
            }
            Some(false) => return Poll::Ready(Ok(())),
            None => {}
        }
        if out.remaining() >= BUF_SIZE {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        // A small read: fill a pooled buffer once, serve this and the next reads from it.
        let mut buf = PoolBuf::take();
        let mut ahead = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let end = ahead.filled().len();
        let mut pos = 0;
        if !serve(&buf, &mut pos, end, out) {
            this.pending = Pending::Ahead { buf, pos, end };
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_prefix_then_inner() {
        let inner: &[u8] = b" world";
        let mut p = Prefixed::new(b"hello".to_vec(), inner);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        assert!(!p.has_pending(), "the replay buffer is freed");
    }

    #[tokio::test]
    async fn small_reads_split_the_prefix() {
        let inner: &[u8] = b"";
        let mut p = Prefixed::new(b"abc".to_vec(), inner);
        let mut b = [0u8; 2];
        assert_eq!(p.read(&mut b).await.unwrap(), 2);
        assert_eq!(&b, b"ab");
        assert_eq!(p.read(&mut b).await.unwrap(), 1);
        assert_eq!(b[0], b'c');
        assert_eq!(p.read(&mut b).await.unwrap(), 0);
    }

    /// Hands out `data` in reads of at most `chunk` bytes, counting them.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        reads: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = (self.data.len() - self.pos)
                .min(self.chunk)
                .min(out.remaining());
            let pos = self.pos;
            out.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_ahead() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let inner = Chunked {
            data: data.clone(),
            pos: 0,
            chunk: usize::MAX,
            reads: 0,
        };
        let mut p = Prefixed::new(b"sniffed".to_vec(), inner);
        let mut got = Vec::new();
        let mut four_k = [0u8; 4096];
        loop {
            let n = p.read(&mut four_k).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&four_k[..n]);
        }
        assert_eq!(&got[..7], b"sniffed");
        assert!(got[7..] == data[..], "bytes in order, none lost");
        // 200,000 bytes in 4 KiB reads: 49 reads of rustls' size, 4 of the stream's.
        assert_eq!(p.get_ref().reads, 200_000usize.div_ceil(BUF_SIZE) + 1);
        assert!(!p.has_pending(), "drained: no buffer held");
    }

    #[tokio::test]
    async fn a_reader_with_a_large_buffer_reads_straight_through() {
        let inner = Chunked {
            data: vec![7u8; 100_000],
            pos: 0,
            chunk: usize::MAX,
            reads: 0,
        };
        let mut p = Prefixed::new(Vec::new(), inner);
        let mut big = vec![0u8; BUF_SIZE];
        assert_eq!(p.read(&mut big).await.unwrap(), BUF_SIZE);
        assert!(!p.has_pending(), "nothing buffered on the side");
    }
}
