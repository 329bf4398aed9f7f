//! No copy of a secret is left in freed memory on the socket path: a
//! global allocator that scans every block as it is freed (or moved by
//! `realloc`) for a canary, while a request carrying the canary as its
//! passphrase is framed, sent, read and parsed. Zero blocks may hold it.
//!
//! A control test shows the scanner does see what a plain growing `Vec`
//! and `std::io::BufReader` leave behind.

use latchkey_client::framing::{
    read_frame, read_frame_blocking, Frame, SecretBuf, ZeroizingReader, READ_BUFFER,
};
use latchkey_client::protocol::{UnlockParams, VaultUnlock, MAX_REQUEST_LEN, PROTOCOL_VERSION};
use latchkey_client::Method;
use secrecy::{ExposeSecret, SecretString};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// What the scanner looks for; never printed, so libtest's output buffers
/// cannot hold it.
const CANARY: &[u8] = b"LKCANARY-9d41c7e2";

/// The passphrase every test sends: the canary, then enough to make the
/// buffers grow several times after the canary is in them.
fn passphrase() -> SecretString {
    let mut text = String::with_capacity(2000);
    text.push_str(std::str::from_utf8(CANARY).unwrap());
    for _ in 0..(2000 - CANARY.len()) {
        text.push('p');
    }
    // Exactly full: `into_boxed_str` does not reallocate.
    SecretString::from(text)
}

static SCANNING: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
/// One scanned test at a time: the counter is global.
static SERIAL: Mutex<()> = Mutex::new(());

struct Scanner;

/// Counts `block` if it holds the canary.
///
/// # Safety
/// `ptr` is a live allocation of `len` bytes about to be freed.
unsafe fn scan(ptr: *const u8, len: usize) {
    if !SCANNING.load(Ordering::Relaxed) || len < CANARY.len() {
        return;
    }
    // SAFETY: per the contract; bytes never written may be read here
    // (uninitialized spare capacity), which is what a scanner of freed
    // memory must do: test-only code.
    let block = unsafe { std::slice::from_raw_parts(ptr, len) };
    if block.windows(CANARY.len()).any(|w| w == CANARY) {
        HITS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the layouts it was given;
// `realloc` always moves (alloc, copy, free) so the old block is scanned.
unsafe impl GlobalAlloc for Scanner {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is live with `layout` until the next line.
        unsafe {
            scan(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` forms a valid layout with
        // the same alignment; the old block is live until freed here.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = System.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                scan(ptr, layout.size());
                System.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static ALLOCATOR: Scanner = Scanner;

/// Runs `f` with the scanner on and returns how many freed blocks held the
/// canary (everything `f` made is dropped inside it).
fn freed_copies(f: impl FnOnce()) -> usize {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    HITS.store(0, Ordering::Relaxed);
    SCANNING.store(true, Ordering::Relaxed);
    f();
    SCANNING.store(false, Ordering::Relaxed);
    HITS.load(Ordering::Relaxed)
}

/// `{"jsonrpc":"2.0","id":1,"method":"vault.unlock","params":{"passphrase":"…"}}\n`
/// in a buffer reserved up front and zeroized on drop.
fn request_line(passphrase: &SecretString) -> Zeroizing<Vec<u8>> {
    let head = br#"{"jsonrpc":"2.0","id":1,"method":"vault.unlock","params":{"passphrase":""#;
    let tail = b"\"}}\n";
    let secret = passphrase.expose_secret().as_bytes();
    let mut line = Zeroizing::new(Vec::with_capacity(head.len() + secret.len() + tail.len()));
    line.extend_from_slice(head);
    line.extend_from_slice(secret);
    line.extend_from_slice(tail);
    line
}

#[test]
fn the_scanner_sees_what_a_growing_vec_leaves_behind() {
    let hits = freed_copies(|| {
        let pass = passphrase();
        let input = request_line(&pass);
        let mut reader = std::io::BufReader::with_capacity(64, &input[..]);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).unwrap();
        assert!(line.windows(CANARY.len()).any(|w| w == CANARY));
    });
    assert!(
        hits > 0,
        "the scanner found no copy left by a plain Vec: it is not scanning"
    );
}

#[test]
fn a_request_framed_through_many_reallocations_leaves_no_copy() {
    // The daemon's sizes, and tiny ones that make every buffer grow often.
    for (reader_capacity, line_capacity) in [(READ_BUFFER, 1024), (64, 0), (7, 16)] {
        let hits = freed_copies(|| {
            let pass = passphrase();
            let input = request_line(&pass);
            let mut reader = ZeroizingReader::with_capacity(reader_capacity, &input[..]);
            let mut line = SecretBuf::with_capacity(line_capacity);
            let frame = read_frame_blocking(&mut reader, &mut line, MAX_REQUEST_LEN).unwrap();
            assert_eq!(frame, Frame::Line);
            assert!(line.capacity() > line_capacity, "the line grew");
            assert!(line.windows(CANARY.len()).any(|w| w == CANARY));
            // Read the whole request as the daemon does: parse the params.
            let params: UnlockParams = parse_params(&line);
            assert_eq!(
                params.passphrase.as_ref().map(|p| p.expose_secret().len()),
                Some(2000)
            );
        });
        assert_eq!(
            hits, 0,
            "reader {reader_capacity} B, line {line_capacity} B: freed blocks held the passphrase"
        );
    }
}

#[test]
fn the_async_reader_leaves_no_copy() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let hits = freed_copies(|| {
        runtime.block_on(async {
            let pass = passphrase();
            let input = request_line(&pass);
            let mut reader = ZeroizingReader::with_capacity(100, &input[..]);
            let mut line = SecretBuf::new();
            let frame = read_frame(&mut reader, &mut line, MAX_REQUEST_LEN)
                .await
                .unwrap();
            assert_eq!(frame, Frame::Line);
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
                .await
                .unwrap();
            assert!(rest.is_empty());
        });
    });
    assert_eq!(hits, 0);
}

/// As the daemon's dispatch does: the envelope borrows the params as a
/// `RawValue` from the line, then they are parsed into their type.
fn parse_params(line: &[u8]) -> UnlockParams {
    #[derive(serde::Deserialize)]
    struct Incoming<'a> {
        #[serde(borrow)]
        params: &'a serde_json::value::RawValue,
    }
    let text = std::str::from_utf8(line).unwrap();
    let incoming: Incoming<'_> = serde_json::from_str(text).unwrap();
    serde_json::from_str(incoming.params.get()).unwrap()
}

/// A fake daemon on a Unix socket: answers `hello`, then reads one request
/// into a buffer reserved up front (so it leaves no copy itself) and
/// answers it.
fn fake_daemon(listener: std::os::unix::net::UnixListener) {
    let (mut stream, _) = listener.accept().unwrap();
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_REQUEST_LEN));
    for reply in [
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"protocol":{PROTOCOL_VERSION},"daemon_version":"0","pid":1}}}}"#
        ),
        r#"{"jsonrpc":"2.0","id":2,"result":{}}"#.to_string(),
    ] {
        line.clear();
        let mut byte = [0u8; 1];
        loop {
            stream.read_exact(&mut byte).unwrap();
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        stream.write_all(reply.as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
    }
    let mut end = [0u8; 1];
    assert_eq!(stream.read(&mut end).unwrap(), 0, "the client hung up");
}

#[test]
fn a_request_sent_by_the_blocking_client_leaves_no_copy() {
    let dir = tempfile_dir();
    let path = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let hits = freed_copies(|| {
        let server = std::thread::spawn(move || fake_daemon(listener));
        let mut client = latchkey_client::blocking::Client::connect_to(&path).unwrap();
        let params = UnlockParams {
            passphrase: Some(passphrase()),
            ..UnlockParams::default()
        };
        let _: serde_json::Value = client.call(VaultUnlock::NAME, &params).unwrap();
        drop(params);
        drop(client);
        server.join().unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(hits, 0, "freed blocks held the passphrase the client sent");
}

/// A private temp directory (no tempfile dependency for one socket).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lk-zeroize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 0700: the client trusts only a socket directory of our own.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .unwrap();
    dir
}
