//! Copy buffers, pooled per worker thread: a connection borrows one only while bytes are
//! in flight, so an idle connection owns none, and a busy one does not allocate per read.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Size of one copy buffer: four full TLS records, so a TLS write produces full records
/// and a read of plaintext from TLS takes everything rustls has decrypted.
pub const BUF_SIZE: usize = 64 * 1024;

/// Buffers kept per worker thread for reuse (the rest are freed).
const POOL_MAX: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from this thread's pool; returned to the pool of whichever
/// thread drops it.
pub struct PoolBuf(Option<Box<[u8]>>);

impl PoolBuf {
    pub fn take() -> PoolBuf {
        let b = POOL
            .with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice());
        PoolBuf(Some(b))
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            POOL.with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    if p.len() < POOL_MAX {
                        p.push(b);
                    }
                }
            });
        }
    }
}

impl Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_on_one_thread() {
        let a = PoolBuf::take();
        let ptr = a.as_ptr();
        drop(a);
        let b = PoolBuf::take();
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), BUF_SIZE);
    }
}
