//! Raw connections to a daemon's socket ([`RawConn`]): bytes and JSON lines
//! that the clients would never send, with read / write timeouts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::env::TestEnv;

/// Read / write bound on raw socket connections made by the harness.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// A raw Unix-socket connection to a daemon, with read/write timeouts.
pub struct RawConn {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RawConn {
    pub fn connect(socket: &Path) -> RawConn {
        RawConn::try_connect(socket)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()))
    }

    pub(crate) fn try_connect(socket: &Path) -> std::io::Result<RawConn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(RawConn { stream, reader })
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes one JSON value as a line.
    pub fn send_json(&mut self, value: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value).unwrap();
        line.push(b'\n');
        self.send(&line)
    }

    /// Reads one reply line; `None` when the daemon closed the connection.
    pub fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line)),
        }
    }

    /// Reads one reply and parses it; `None` on a closed connection.
    pub fn read_json(&mut self) -> std::io::Result<Option<Value>> {
        Ok(self.read_line()?.map(|line| {
            serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("the daemon sent a reply that is not JSON ({e}): {line:?}")
            })
        }))
    }

    /// Sends a request and returns its reply (panics on a closed connection).
    #[track_caller]
    pub fn call(&mut self, request: &Value) -> Value {
        self.send_json(request).expect("cannot send the request");
        self.read_json()
            .expect("cannot read the reply")
            .unwrap_or_else(|| {
                panic!("the daemon closed the connection instead of answering {request}")
            })
    }

    /// Asserts the daemon closes the connection (EOF) within the read timeout,
    /// with no further reply.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        match self.read_line() {
            Ok(None) => {}
            Ok(Some(line)) => panic!("expected the daemon to close the connection, got {line:?}"),
            // A reset also means the daemon dropped us.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the daemon to close the connection, got {e}"),
        }
    }
}

impl TestEnv {
    /// A raw connection to the env's socket, for bytes the clients never send.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket)
    }
}
