//! Splitting a server's output into lines in linear time: only the bytes of
//! each new chunk are searched for a newline, so a 16 MiB line arriving in
//! 64 KiB chunks is scanned once, not once per chunk. A line longer than the
//! limit is dropped (with a warning) as it streams past, never buffered whole.

use bytes::{Bytes, BytesMut};
use tracing::warn;

pub struct LineFramer {
    /// The unfinished line (it holds no newline).
    buffer: BytesMut,
    max: usize,
    /// Inside an over-long line: everything up to its newline is dropped.
    discarding: bool,
}

impl LineFramer {
    pub fn new(max: usize) -> Self {
        Self::with_capacity(0, max)
    }

    pub fn with_capacity(initial: usize, max: usize) -> Self {
        LineFramer {
            buffer: BytesMut::with_capacity(initial.min(max)),
            max,
            discarding: false,
        }
    }

    /// Adds `bytes`; returns the complete lines they finish, without their `\n`.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Bytes> {
        let mut lines = vec![];
        while !bytes.is_empty() {
            let newline = memchr(bytes);
            if self.discarding {
                match newline {
                    Some(at) => {
                        self.discarding = false;
                        bytes = &bytes[at + 1..];
                    }
                    None => return lines,
                }
                continue;
            }
            match newline {
                Some(at) => {
                    self.buffer.extend_from_slice(&bytes[..at]);
                    bytes = &bytes[at + 1..];
                    let line = self.buffer.split().freeze();
                    if line.len() <= self.max {
                        lines.push(line);
                    } else {
                        warn!(max = self.max, "message longer than the limit; discarded");
                    }
                }
                None => {
                    self.buffer.extend_from_slice(bytes);
                    if self.buffer.len() > self.max {
                        warn!(max = self.max, "message longer than the limit; discarded");
                        self.buffer.clear();
                        self.discarding = true;
                    }
                    return lines;
                }
            }
        }
        lines
    }

    /// Bytes held for an unfinished line.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_and_bounds() {
        let mut framer = LineFramer::new(10);
        assert!(framer.push(b"{\"a\"").is_empty());
        assert_eq!(
            framer.push(b":1}\n{\"b\":2}\n"),
            vec![
                Bytes::from_static(b"{\"a\":1}"),
                Bytes::from_static(b"{\"b\":2}")
            ]
        );
        assert!(framer.push(b"0123456789abcdef").is_empty());
        assert_eq!(framer.pending(), 0, "an over-long line is not kept");
        assert_eq!(framer.push(b"tail\nok\n"), vec![Bytes::from_static(b"ok")]);
        // Exactly at the limit, split across chunks.
        assert!(framer.push(b"01234").is_empty());
        assert_eq!(
            framer.push(b"56789\n"),
            vec![Bytes::from_static(b"0123456789")]
        );
    }

    #[test]
    fn a_long_line_in_small_chunks_is_scanned_once() {
        let mut framer = LineFramer::new(16 << 20);
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..256 {
            assert!(framer.push(&chunk).is_empty());
        }
        let lines = framer.push(b"\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), 16 << 20);
    }
}
