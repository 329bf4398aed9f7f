//! NDJSON framing shared by the daemon and the client: one JSON message per
//! line, bounded in length, read without ever buffering more than the bound.
//!
//! Lines carry passphrases, client secrets and access tokens, so the
//! buffers they pass through are wiped: [`SecretBuf`] (a line being read or
//! written) zeroizes on clear and drop and never frees an old allocation
//! unwiped when it grows; [`ZeroizingReader`] (the socket's read buffer)
//! wipes what was consumed as soon as all of it is, and itself on drop.

use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, ReadBuf};
use zeroize::Zeroize;

/// 8 KiB: a connection's read buffer (std's and tokio's default); a
/// request line, under 2 KiB as a rule, arrives in one read.
pub const READ_BUFFER: usize = 8 * 1024;

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

/// Bytes of a request or reply line: zeroized when cleared, truncated or
/// dropped, and grown by copying into a larger allocation and zeroizing
/// the old one (a `Vec` growing by itself frees its old block as it is).
/// Reads as a byte slice; writes through [`io::Write`] (`serde_json::to_writer`).
///
/// Bytes are only ever appended at the end and every way of shortening
/// wipes what it drops, so nothing of ours lies past the length: wiping
/// the first `len` bytes wipes all we wrote. A buffer is reused for every
/// line of a connection, so wiping its whole capacity (what zeroize does
/// for a `Vec`, one volatile store per byte) would cost a kilobyte of
/// stores per short line.
#[derive(Default)]
pub struct SecretBuf {
    bytes: Vec<u8>,
}

impl SecretBuf {
    /// An empty buffer; allocates on first write.
    pub fn new() -> SecretBuf {
        SecretBuf::default()
    }

    /// An empty buffer with room for `capacity` bytes before it must grow.
    pub fn with_capacity(capacity: usize) -> SecretBuf {
        SecretBuf {
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// Bytes it can hold before it must grow.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Appends `more`, growing (see the type's docs) when it does not fit.
    /// Inline: serializers write a line in many small pieces.
    #[inline]
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        if self.bytes.capacity() - self.bytes.len() < more.len() {
            self.grow(more.len());
        }
        self.bytes.extend_from_slice(more);
    }

    /// Appends one byte.
    #[inline]
    pub fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    /// Zeroizes everything after the first `len` bytes and drops it.
    pub fn truncate(&mut self, len: usize) {
        if len < self.bytes.len() {
            self.bytes[len..].zeroize();
            self.bytes.truncate(len);
        }
    }

    /// Zeroizes the contents and empties the buffer; the capacity stays.
    #[inline]
    pub fn clear(&mut self) {
        // Only the bytes written: nothing of ours lies past them (see the
        // type's docs).
        self.bytes.as_mut_slice().zeroize();
        self.bytes.clear();
    }

    /// Makes room for `additional` more bytes: doubles the capacity (at
    /// least), copies into the new allocation and zeroizes the old one.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, additional: usize) {
        let needed = self
            .bytes
            .len()
            .checked_add(additional)
            .expect("a line's length fits in memory");
        let capacity = needed.max(self.bytes.capacity() * 2).max(64);
        let mut bigger = Vec::with_capacity(capacity);
        bigger.extend_from_slice(&self.bytes);
        self.clear();
        self.bytes = bigger;
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Deref for SecretBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Only as a slice: a `&mut Vec` would let it grow unwiped.
impl DerefMut for SecretBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl io::Write for SecretBuf {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Never the contents: they may be a secret.
impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.bytes.len())
    }
}

/// A buffered reader (sync over [`io::Read`], async over tokio's
/// [`AsyncRead`]) whose buffer is zeroized once everything in it was
/// consumed, and on drop: a connection idle between requests holds none of
/// the last one, and a closed one leaves nothing in freed memory.
pub struct ZeroizingReader<R> {
    inner: R,
    buf: Box<[u8]>,
    /// The next unconsumed byte of `buf`.
    pos: usize,
    /// The end of the bytes read into `buf`.
    filled: usize,
}

impl<R> ZeroizingReader<R> {
    /// Reads `inner` through a buffer of `capacity` bytes (at least one).
    pub fn with_capacity(capacity: usize, inner: R) -> ZeroizingReader<R> {
        ZeroizingReader {
            inner,
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            pos: 0,
            filled: 0,
        }
    }

    /// The underlying stream (to write replies, set timeouts).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Whether bytes read from the stream wait here unconsumed.
    pub fn has_buffered(&self) -> bool {
        self.pos < self.filled
    }

    /// Whether a whole line (up to its `\n`) waits here unconsumed: a peer
    /// that sent several requests at once.
    pub fn has_buffered_line(&self) -> bool {
        self.buf[self.pos..self.filled].contains(&b'\n')
    }

    fn advance(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.filled);
        if self.pos == self.filled {
            self.buf[..self.filled].zeroize();
            self.pos = 0;
            self.filled = 0;
        }
    }
}

impl<R> Drop for ZeroizingReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl<R: io::Read> io::BufRead for ZeroizingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.filled = self.inner.read(&mut self.buf)?;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amount: usize) {
        self.advance(amount);
    }
}

impl<R: io::Read> io::Read for ZeroizingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let chunk = io::BufRead::fill_buf(self)?;
        let n = chunk.len().min(out.len());
        out[..n].copy_from_slice(&chunk[..n]);
        self.advance(n);
        Ok(n)
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for ZeroizingReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            this.filled = read.filled().len();
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.filled]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        self.get_mut().advance(amount);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ZeroizingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let chunk = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = chunk.len().min(out.remaining());
        out.put_slice(&chunk[..n]);
        self.get_mut().advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Appends bytes from `chunk` to `buf` up to a newline. Returns how many
/// bytes of `chunk` to consume and, when the line ended or overflowed, the outcome.
fn take(chunk: &[u8], buf: &mut SecretBuf, max: usize) -> (usize, Option<Frame>) {
    match find_newline(chunk) {
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

/// The position of the first `\n` in `bytes`. Every request and reply is
/// searched so, byte by byte a hundred or two a line: this tests 16 bytes
/// at a time (a loop with no early exit, which the compiler turns into
/// vector compares) before looking for the byte within the block.
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let mut blocks = bytes.chunks_exact(BLOCK);
    for (n, block) in (&mut blocks).enumerate() {
        if block.iter().fold(false, |seen, &b| seen | (b == b'\n')) {
            return block
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| n * BLOCK + i);
        }
    }
    let tail = bytes.len() - blocks.remainder().len();
    blocks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| tail + i)
}

/// Reads one line of at most `max` bytes into `buf` (cleared first).
///
/// A connection closed in the middle of a line is an `UnexpectedEof` error.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut SecretBuf,
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
    buf: &mut SecretBuf,
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
        let mut buf = SecretBuf::new();
        loop {
            match read_frame_blocking(&mut reader, &mut buf, max) {
                Ok(Frame::Eof) => return out,
                Ok(f) => {
                    out.push(Ok((f, buf.to_vec())));
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
    fn the_newline_search_finds_the_first_one_anywhere() {
        for len in 0..70 {
            let mut bytes = vec![b'x'; len];
            assert_eq!(find_newline(&bytes), None, "{len}");
            for at in 0..len {
                bytes[at] = b'\n';
                assert_eq!(find_newline(&bytes), Some(at), "{len} {at}");
                if at + 1 < len {
                    bytes[len - 1] = b'\n';
                    assert_eq!(find_newline(&bytes), Some(at), "{len} {at}, two");
                    bytes[len - 1] = b'x';
                }
                bytes[at] = b'x';
            }
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
    fn a_secret_buf_keeps_its_bytes_as_it_grows_and_wipes_on_clear() {
        let mut buf = SecretBuf::new();
        let mut want = Vec::new();
        for i in 0..5000u32 {
            let byte = (i % 251) as u8;
            buf.push(byte);
            want.push(byte);
        }
        assert_eq!(&buf[..], &want[..]);
        let capacity = buf.capacity();
        buf.truncate(10);
        assert_eq!(&buf[..], &want[..10]);
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.capacity(), capacity, "clear keeps the allocation");
        // The wiped allocation reads back as zeros once re-filled from it.
        // SAFETY: `capacity` bytes are allocated; all were initialized by
        // the pushes above and zeroized since.
        let spare = unsafe { std::slice::from_raw_parts(buf.bytes.as_ptr(), capacity) };
        assert!(spare[..5000].iter().all(|&b| b == 0));
        let mut json = SecretBuf::with_capacity(1);
        serde_json::to_writer(&mut json, &serde_json::json!({"k": "v".repeat(300)})).unwrap();
        assert_eq!(json.len(), 308);
        assert_eq!(format!("{json:?}"), "SecretBuf(308 bytes)");
    }

    #[test]
    fn the_reader_wipes_its_buffer_once_everything_was_consumed() {
        let input = b"{\"passphrase\":\"hunter2\"}\n{}\n".to_vec();
        let mut reader = ZeroizingReader::with_capacity(64, &input[..]);
        let mut line = SecretBuf::new();
        assert_eq!(
            read_frame_blocking(&mut reader, &mut line, 64).unwrap(),
            Frame::Line
        );
        assert!(
            reader.buf.iter().any(|&b| b != 0),
            "the second line is still buffered"
        );
        assert_eq!(
            read_frame_blocking(&mut reader, &mut line, 64).unwrap(),
            Frame::Line
        );
        assert!(reader.buf.iter().all(|&b| b == 0), "all consumed: wiped");
        assert_eq!(
            read_frame_blocking(&mut reader, &mut line, 64).unwrap(),
            Frame::Eof
        );
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
