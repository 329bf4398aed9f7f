"""The client: one connection to ``latchkeyd``, speaking the wire protocol
of the Rust client (``client/src``): one JSON-RPC 2.0 message per line,
``hello`` first with the protocol version, the socket found the same way,
and the same checks before a byte is sent (the socket's directory is ours,
0700 and not a link; the process behind the socket runs as our uid).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Dict, List, Optional, Type

from .errors import (
    ConnectError,
    ProtocolError,
    UntrustedError,
    from_reply,
)

__all__ = [
    "Client",
    "Token",
    "Status",
    "PROTOCOL_VERSION",
    "socket_path",
    "SOCKET_ENV",
    "APP_KEY_ENV",
]

#: The protocol version this client speaks (``PROTOCOL_VERSION`` in
#: ``client/src/protocol.rs``); a daemon that speaks another is refused.
PROTOCOL_VERSION = 1
#: Names the socket path explicitly.
SOCKET_ENV = "LATCHKEY_SOCKET"
#: An app key (``latchkey app add``), presented in ``hello``.
APP_KEY_ENV = "LATCHKEY_APP_KEY"
#: 4 MiB: the largest reply line read (``MAX_REPLY_LEN``).
MAX_REPLY_LEN = 4 * 1024 * 1024
#: 30 s: no legitimate call but a login wait takes longer; a hung daemon
#: must not hang the program.
DEFAULT_TIMEOUT = 30.0


def socket_path() -> str:
    """The daemon's socket: ``$LATCHKEY_SOCKET``, else
    ``$XDG_RUNTIME_DIR/latchkey/latchkey.sock``, else
    ``$TMPDIR/latchkey-<uid>/latchkey.sock`` (``/tmp`` without ``TMPDIR``),
    as ``latchkey_client::socket_path`` decides."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        directory = os.path.join(runtime, "latchkey")
    else:
        tmp = os.environ.get("TMPDIR") or "/tmp"
        directory = os.path.join(tmp, f"latchkey-{os.geteuid()}")
    return os.path.join(directory, "latchkey.sock")


def _app_key() -> Optional[str]:
    key = os.environ.get(APP_KEY_ENV, "").strip()
    return key or None


def _check_directory(path: str) -> None:
    """The socket's directory must be a real directory of ours with no
    group or other permissions (``trust::before_connect``)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.lstat(directory)
    except FileNotFoundError as e:
        raise ConnectError(
            f"cannot reach the latchkey daemon at {path}: {e.strerror}; "
            "start it with `latchkey daemon start`"
        ) from None
    except OSError as e:
        raise ConnectError(
            f"cannot reach the latchkey daemon at {path}: {e.strerror}"
        ) from None
    fix = f"`chmod 700 {directory}`"
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedError(
            f"the socket directory {directory} is a symbolic link: refusing to "
            "talk to whatever it points to; remove the link and restart the daemon "
            "with `latchkey daemon start`"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise UntrustedError(f"the socket directory {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise UntrustedError(
            f"the socket directory {directory} belongs to uid {info.st_uid}, not to "
            f"you (uid {os.geteuid()}): another user may pose as the daemon; "
            f"point {SOCKET_ENV} at your own daemon's socket"
        )
    if info.st_mode & 0o077:
        raise UntrustedError(
            f"the socket directory {directory} has mode "
            f"{stat.S_IMODE(info.st_mode):o}, open to other users: run {fix}"
        )


def _check_peer(sock: socket.socket, path: str) -> None:
    """The process behind the socket must run as our uid (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.geteuid():
        raise UntrustedError(
            f"the process listening on {path} runs as uid {uid}, not as you "
            f"(uid {os.geteuid()}): nothing was sent; point {SOCKET_ENV} at your "
            "own daemon's socket"
        )


def _expires(value: object) -> Optional[datetime]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    raise ProtocolError("unexpected reply from the latchkey daemon: expires_at is not a number")


@dataclass(frozen=True)
class Token:
    """A short-lived access token (``token.get``'s result).

    ``expires_at`` is an aware UTC datetime, ``None`` when the provider did
    not say. The token itself never shows in ``repr()`` or ``str()``.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_at: Optional[datetime]
    scope: str = ""

    def __repr__(self) -> str:
        return (
            f"Token(access_token='[redacted]', token_type={self.token_type!r}, "
            f"expires_at={self.expires_at!r}, scope={self.scope!r})"
        )

    __str__ = __repr__

    @property
    def header(self) -> str:
        """The value of an ``Authorization`` header: ``Bearer <token>``."""
        scheme = self.token_type
        if not scheme or scheme.lower() == "bearer":
            scheme = "Bearer"
        value = f"{scheme} {self.access_token}"
        if not all(0x20 <= ord(c) <= 0x7E for c in value):
            raise ProtocolError(
                "the token has a character that cannot go into an HTTP header; "
                "check the provider"
            )
        return value


@dataclass(frozen=True)
class Status:
    """The daemon's and the vault's state (``status``'s result); ``raw``
    holds the whole result as the daemon sent it."""

    vault: str
    vault_path: str
    pid: int
    daemon_version: str
    idle_timeout_secs: int
    locks_in_secs: Optional[int]
    providers: Optional[int]
    credentials: Optional[int]
    needs_login: List[str]
    raw: Dict[str, Any] = field(repr=False)


def _int(result: Dict[str, Any], key: str) -> int:
    value = result.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"unexpected reply from the latchkey daemon: {key} is not a number")
    return value


def _opt_int(result: Dict[str, Any], key: str) -> Optional[int]:
    if result.get(key) is None:
        return None
    return _int(result, key)


def _str(result: Dict[str, Any], key: str) -> str:
    value = result.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"unexpected reply from the latchkey daemon: {key} is not a string")
    return value


class Client:
    """A connection to ``latchkeyd``. Calls are sequential; open one per
    thread for concurrency (connections are cheap). Use it as a context
    manager, or call :meth:`close`.

    A connection the daemon closed while idle is replaced before the next
    call, so a long-lived client keeps working.
    """

    def __init__(self, path: str, sock: socket.socket, timeout: float) -> None:
        self._path = path
        self._sock = sock
        self._timeout = timeout
        self._next_id = 1
        self._pending = b""

    @classmethod
    def connect(cls, path: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> "Client":
        """Connects to the daemon at ``path`` (default :func:`socket_path`),
        checks that socket is the user's own and that the daemon speaks
        :data:`PROTOCOL_VERSION`."""
        path = path if path is not None else socket_path()
        client = cls(path, cls._open(path, timeout), timeout)
        try:
            client._hello()
        except BaseException:
            client.close()
            raise
        return client

    @staticmethod
    def _open(path: str, timeout: float) -> socket.socket:
        _check_directory(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            _check_peer(sock, path)
        except OSError as e:
            sock.close()
            raise ConnectError(
                f"cannot reach the latchkey daemon at {path}: {e.strerror or e}; "
                "start it with `latchkey daemon start`"
            ) from None
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Closes the connection."""
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(path={self._path!r})"

    # ------------------------------------------------------------ calls --

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """Sends any method with any parameters and returns its ``result``
        as parsed JSON; a daemon error raises its :class:`LatchkeyError`.
        The methods are listed in ``docs/protocol.md``."""
        served = self._next_id > 1
        if served and self._hung_up():
            self._reconnect()
        request_id = self._next_id
        line = self._encode(request_id, method, params)
        try:
            self._sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            if not served:
                raise ConnectError(
                    f"lost the connection to the latchkey daemon at {self._path}"
                ) from None
            # Closed by the daemon since: the line did not reach it whole,
            # so sending it on a new connection cannot run it twice.
            self._reconnect()
            request_id = self._next_id
            line = self._encode(request_id, method, params)
            self._sock.sendall(line)
        return self._reply(request_id)

    def token(
        self,
        credential: str,
        scopes: Optional[List[str]] = None,
        min_ttl: Optional[int] = None,
    ) -> Token:
        """An access token for ``credential``: all its scopes, or the
        subset ``scopes``; valid at least ``min_ttl`` seconds longer."""
        params: Dict[str, Any] = {"credential": credential}
        if scopes is not None:
            params["scopes"] = list(scopes)
        if min_ttl is not None:
            params["min_ttl"] = min_ttl
        result = self.call("token.get", params)
        if not isinstance(result, dict):
            raise ProtocolError("unexpected reply from the latchkey daemon: token is not an object")
        scope = result.get("scope", "")
        return Token(
            access_token=_str(result, "access_token"),
            token_type=_str(result, "token_type"),
            expires_at=_expires(result.get("expires_at")),
            scope=scope if isinstance(scope, str) else "",
        )

    def header(
        self,
        credential: str,
        scopes: Optional[List[str]] = None,
        min_ttl: Optional[int] = None,
    ) -> str:
        """The value of an ``Authorization`` header for ``credential``:
        ``Bearer <token>`` (what ``latchkey header`` prints after
        ``Authorization: ``)."""
        return self.token(credential, scopes=scopes, min_ttl=min_ttl).header

    def status(self) -> Status:
        """The vault's state, slots and auto-lock timer; does not reset the
        daemon's idle clock."""
        result = self.call("status", {})
        if not isinstance(result, dict):
            raise ProtocolError("unexpected reply from the latchkey daemon: status is not an object")
        needs_login = result.get("needs_login") or []
        return Status(
            vault=_str(result, "vault"),
            vault_path=_str(result, "vault_path"),
            pid=_int(result, "pid"),
            daemon_version=_str(result, "daemon_version"),
            idle_timeout_secs=_int(result, "idle_timeout_secs"),
            locks_in_secs=_opt_int(result, "locks_in_secs"),
            providers=_opt_int(result, "providers"),
            credentials=_opt_int(result, "credentials"),
            needs_login=[n for n in needs_login if isinstance(n, str)],
            raw=result,
        )

    # --------------------------------------------------------- plumbing --

    def _hello(self) -> None:
        params: Dict[str, Any] = {"protocol": PROTOCOL_VERSION}
        key = _app_key()
        if key is not None:
            params["app_key"] = key
        result = self.call("hello", params)
        protocol = result.get("protocol") if isinstance(result, dict) else None
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"daemon speaks protocol {protocol} but this client speaks "
                f"{PROTOCOL_VERSION}; restart the daemon with `latchkey daemon stop` "
                "so the matching version starts"
            )

    def _encode(self, request_id: int, method: str, params: Optional[Dict[str, Any]]) -> bytes:
        self._next_id += 1
        request = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": method,
            "params": params if params is not None else {},
        }
        return json.dumps(request, separators=(",", ":")).encode("utf-8") + b"\n"

    def _reconnect(self) -> None:
        self._sock.close()
        self._sock = self._open(self._path, self._timeout)
        self._next_id = 1
        self._pending = b""
        self._hello()

    def _hung_up(self) -> bool:
        """Whether the daemon closed this connection (it closes idle ones):
        a peek that never waits; only an end of stream or a reset counts."""
        if self._pending:
            return False
        # Non-blocking for the peek: with a timeout set, Python waits for
        # the socket to be readable (up to the timeout) before any recv.
        self._sock.setblocking(False)
        try:
            data = self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError as e:
            return e.errno != errno.EAGAIN
        finally:
            self._sock.settimeout(self._timeout)
        return data == b""

    def _read_line(self) -> bytes:
        buffer = self._pending
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                self._pending = buffer[end + 1 :]
                return buffer[:end]
            if len(buffer) > MAX_REPLY_LEN:
                self.close()
                raise ProtocolError("reply exceeds the size limit")
            try:
                chunk = self._sock.recv(64 * 1024)
            except socket.timeout:
                self.close()
                raise ConnectError(
                    f"the latchkey daemon at {self._path} did not answer within "
                    f"{self._timeout:g} s"
                ) from None
            except OSError as e:
                raise ConnectError(f"lost the connection to the latchkey daemon: {e.strerror}") from None
            if not chunk:
                raise ConnectError("lost the connection to the latchkey daemon: it closed the connection")
            buffer += chunk

    def _reply(self, request_id: int) -> Any:
        line = self._read_line()
        try:
            reply = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ProtocolError("unexpected reply from the latchkey daemon: malformed reply") from None
        if not isinstance(reply, dict):
            raise ProtocolError("unexpected reply from the latchkey daemon: reply is not an object")
        if reply.get("error") is not None:
            raise from_reply(reply["error"])
        if reply.get("id") != request_id:
            raise ProtocolError(
                f"unexpected reply from the latchkey daemon: reply for request "
                f"{reply.get('id')!r} while waiting for {request_id}"
            )
        if "result" not in reply:
            raise ProtocolError("unexpected reply from the latchkey daemon: neither result nor error")
        return reply["result"]

