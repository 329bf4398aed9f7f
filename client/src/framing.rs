//! NDJSON framing shared by the daemon and the client: one JSON message per
//! line, bounded in length, read without ever buffering more than the bound.

use std::io;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What reading one line produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole line is in the buffer (without its `\n`).
    Line,
    /// The peer closed the connection between lines.
    Eof,
    /// The line exceeded the bound; the buffer holds a truncated prefix and
    /// the stream is mid-line, so the connection must be closed.
    TooLong,
}

/// Appends bytes from `chunk` to `buf` up to a newline. Returns how many
/// bytes of `chunk` to consume and, when the line ended or overflowed, the outcome.
fn take(chunk: &[u8], buf: &mut Vec<u8>, max: usize) -> (usize, Option<Frame>) {
    match chunk.iter().position(|&b| b == b'\n') {
        Some(i) if buf.len() + i <= max => {
            buf.extend_from_slice(&chunk[..i]);
            (i + 1, Some(Frame::Line))
        }
        Some(_) => (0, Some(Frame::TooLong)),
        None if buf.len() + chunk.len() > max => (0, Some(Frame::TooLong)),
        None => {
            buf.extend_from_slice(chunk);
            (chunk.len(), None)
        }
    }
}

/// Reads one line of at most `max` bytes into `buf` (cleared first).
///
/// A connection closed in the middle of a line is an `UnexpectedEof` error.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Frame> {
    buf.clear();
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return eof(buf);
        }
        let (used, outcome) = take(chunk, buf, max);
        reader.consume(used);
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
}

/// Blocking twin of [`read_frame`].
pub fn read_frame_blocking<R: io::BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Frame> {
    buf.clear();
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return eof(buf);
        }
        let (used, outcome) = take(chunk, buf, max);
        reader.consume(used);
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
}

fn eof(buf: &[u8]) -> io::Result<Frame> {
    if buf.is_empty() {
        Ok(Frame::Eof)
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a message",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        input: &[u8],
        max: usize,
        cap: usize,
    ) -> Vec<Result<(Frame, Vec<u8>), io::ErrorKind>> {
        let mut reader = io::BufReader::with_capacity(cap, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match read_frame_blocking(&mut reader, &mut buf, max) {
                Ok(Frame::Eof) => return out,
                Ok(f) => {
                    out.push(Ok((f, buf.clone())));
                    if f == Frame::TooLong {
                        return out;
                    }
                }
                Err(e) => {
                    out.push(Err(e.kind()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn frames_are_split_on_newlines_whatever_the_buffer_size() {
        for cap in [1, 2, 3, 7, 64] {
            let got = read_all(b"{\"a\":1}\n{}\n", 16, cap);
            assert_eq!(
                got,
                vec![
                    Ok((Frame::Line, b"{\"a\":1}".to_vec())),
                    Ok((Frame::Line, b"{}".to_vec()))
                ],
                "capacity {cap}"
            );
        }
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_over_is_refused() {
        assert_eq!(
            read_all(b"1234\n", 4, 2),
            vec![Ok((Frame::Line, b"1234".to_vec()))]
        );
        let got = read_all(b"12345\n", 4, 2);
        assert!(matches!(got[0], Ok((Frame::TooLong, _))));
        let got = read_all(&vec![b'x'; 1 << 20], 64 * 1024, 8192);
        assert!(matches!(&got[0], Ok((Frame::TooLong, b)) if b.len() <= 64 * 1024));
    }

    #[test]
    fn a_half_written_frame_is_an_error() {
        assert_eq!(
            read_all(b"{}\n{\"half", 64, 4),
            vec![
                Ok((Frame::Line, b"{}".to_vec())),
                Err(io::ErrorKind::UnexpectedEof)
            ]
        );
    }
}
