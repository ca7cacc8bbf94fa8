//! Cutting a byte stream into whole messages for inspection, without holding up the
//! stream: bytes are copied aside only while a message is split across reads, and a
//! message that arrives whole is parsed where it lies.

use super::header::{Header, WireError, HEADER_LEN};

/// Why framing stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A message larger than the inspection limit: not a handshake message.
    TooLarge(usize),
    /// The bytes are not MongoDB messages.
    Invalid(String),
}

/// Accumulates one direction's bytes into whole messages.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Feeds `bytes`, calling `each` with every whole message. Returns `Ok(false)` when
    /// `each` asked to stop.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        limit: usize,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, Stop> {
        let length = |b: &[u8]| match Header::parse(b) {
            Ok(h) if h.length > limit => Err(Stop::TooLarge(h.length)),
            Ok(h) => Ok(h.length),
            Err(WireError::Invalid(why)) => Err(Stop::Invalid(why)),
            Err(WireError::Incomplete { .. }) => Ok(usize::MAX),
        };
        while !bytes.is_empty() {
            if self.buf.is_empty() && bytes.len() >= HEADER_LEN {
                let len = length(bytes)?;
                if bytes.len() >= len {
                    if !each(&bytes[..len]) {
                        return Ok(false);
                    }
                    bytes = &bytes[len..];
                    continue;
                }
            }
            let need = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                length(&self.buf)?
            };
            let take = (need - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == HEADER_LEN {
                length(&self.buf)?; // checks the header as soon as it is whole
            }
            if self.buf.len() >= HEADER_LEN && self.buf.len() == length(&self.buf)? {
                let keep = each(&self.buf);
                self.buf.clear();
                if !keep {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8, len: usize) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [len as i32, n as i32, 0, 2013] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.resize(len, n);
        m
    }

    fn feed_in_chunks(stream: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut f = Framer::default();
        let mut got = Vec::new();
        for c in stream.chunks(chunk) {
            assert!(f
                .feed(c, 1 << 20, |m| {
                    got.push(m.to_vec());
                    true
                })
                .unwrap());
        }
        got
    }

    #[test]
    fn messages_come_out_whole_however_the_stream_is_cut() {
        let stream = [msg(1, 40), msg(2, 16), msg(3, 300)].concat();
        for chunk in [1, 3, 15, 16, 17, 39, 100, 1000] {
            let got = feed_in_chunks(&stream, chunk);
            assert_eq!(
                got,
                vec![msg(1, 40), msg(2, 16), msg(3, 300)],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_bad_header_or_an_oversized_message_stops_framing() {
        let mut f = Framer::default();
        let bad = [0xffu8; 16];
        assert!(matches!(
            f.feed(&bad, 1024, |_| true),
            Err(Stop::Invalid(_))
        ));
        let mut f = Framer::default();
        assert_eq!(
            f.feed(&msg(1, 2000)[..20], 1024, |_| true),
            Err(Stop::TooLarge(2000))
        );
        // Found once the header is complete, even when it arrives byte by byte.
        let mut f = Framer::default();
        let big = msg(1, 2000);
        let r: Vec<_> = big[..16]
            .iter()
            .map(|b| f.feed(&[*b], 1024, |_| true))
            .collect();
        assert_eq!(r.last(), Some(&Err(Stop::TooLarge(2000))));
    }

    #[test]
    fn the_callback_can_stop_early() {
        let mut f = Framer::default();
        let stream = [msg(1, 20), msg(2, 20)].concat();
        let mut n = 0;
        assert_eq!(
            f.feed(&stream, 1024, |_| {
                n += 1;
                false
            }),
            Ok(false)
        );
        assert_eq!(n, 1);
    }
}
