"""The Python client against a real daemon.

Run by ``tests/tests/python_client.rs``, which starts ``latchkeyd`` with an
unlocked vault and a client-credentials credential at the test
authorization server, and passes:

- ``LATCHKEY_SOCKET`` (and ``XDG_RUNTIME_DIR``, whose default path is the
  same socket),
- ``LATCHKEY_TEST_CREDENTIAL``: the credential's name,
- ``LATCHKEY_TEST_SCOPE``: its scope,
- ``LATCHKEY_TEST_CANARY``: the credential's client secret, which nothing
  here may ever show.
"""

from __future__ import annotations

import os
import socket
import tempfile
import unittest
from datetime import datetime, timezone
from typing import Dict, Iterator
from contextlib import contextmanager

import latchkey


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise unittest.SkipTest(f"{name} is not set: run through `cargo test -p latchkey-tests --test python_client`")
    return value


@contextmanager
def _environ(changes: Dict[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class AgainstTheDaemon(unittest.TestCase):
    credential: str

    def setUp(self) -> None:
        self.credential = _env("LATCHKEY_TEST_CREDENTIAL")
        self.client = latchkey.Client.connect()
        self.addCleanup(self.client.close)

    def test_status(self) -> None:
        status = self.client.status()
        self.assertEqual(status.vault, "unlocked")
        self.assertGreater(status.pid, 0)
        self.assertEqual(status.credentials, 1)
        self.assertEqual(status.needs_login, [])
        self.assertTrue(status.vault_path.endswith("vault.db"), status.vault_path)

    def test_token(self) -> None:
        token = self.client.token(self.credential)
        self.assertTrue(token.access_token)
        self.assertEqual(token.token_type.lower(), "bearer")
        self.assertEqual(token.scope, os.environ["LATCHKEY_TEST_SCOPE"])
        assert token.expires_at is not None, "the test provider says when tokens expire"
        self.assertIsInstance(token.expires_at, datetime)
        self.assertEqual(token.expires_at.tzinfo, timezone.utc)
        self.assertGreater(token.expires_at, datetime.now(timezone.utc))
        # The same token again: the daemon answers from its cache.
        self.assertEqual(self.client.token(self.credential).access_token, token.access_token)

    def test_token_with_scopes_and_min_ttl(self) -> None:
        scope = os.environ["LATCHKEY_TEST_SCOPE"]
        token = self.client.token(self.credential, scopes=[scope], min_ttl=30)
        self.assertEqual(token.scope, scope)

    def test_header(self) -> None:
        token = self.client.token(self.credential)
        self.assertEqual(self.client.header(self.credential), f"Bearer {token.access_token}")

    def test_unknown_credential(self) -> None:
        with self.assertRaises(latchkey.NotFoundError) as caught:
            self.client.token("no-such-credential")
        error = caught.exception
        self.assertIsInstance(error, latchkey.LatchkeyError)
        self.assertEqual(error.kind, "not_found")
        self.assertIn("no-such-credential", error.message)
        self.assertEqual(str(error), error.message)
        self.assertIsNotNone(error.fix, error.message)
        # The connection still serves.
        self.assertEqual(self.client.status().vault, "unlocked")

    def test_bad_params_are_invalid_params(self) -> None:
        with self.assertRaises(latchkey.InvalidParamsError) as caught:
            self.client.call("token.get", {"credential": 42})
        self.assertEqual(caught.exception.kind, "invalid_params")

    def test_unknown_method(self) -> None:
        with self.assertRaises(latchkey.MethodNotFoundError):
            self.client.call("no.such.method", {})

    def test_the_token_never_shows(self) -> None:
        token = self.client.token(self.credential)
        canary = os.environ["LATCHKEY_TEST_CANARY"]
        for shown in (repr(token), str(token), f"{token}", repr(self.client), repr(self.client.status())):
            self.assertNotIn(token.access_token, shown)
            self.assertNotIn(canary, shown)
        self.assertIn("[redacted]", repr(token))
        try:
            self.client.token("no-such-credential")
        except latchkey.LatchkeyError as e:
            for shown in (repr(e), str(e)):
                self.assertNotIn(token.access_token, shown)
                self.assertNotIn(canary, shown)

    def test_socket_found_as_the_rust_client_finds_it(self) -> None:
        socket_path = os.environ["LATCHKEY_SOCKET"]
        with _environ({"LATCHKEY_SOCKET": None}):
            self.assertEqual(latchkey.socket_path(), socket_path)
            with latchkey.Client.connect() as client:
                self.assertEqual(client.status().vault, "unlocked")
        with _environ({"LATCHKEY_SOCKET": None, "XDG_RUNTIME_DIR": None, "TMPDIR": "/somewhere"}):
            self.assertEqual(latchkey.socket_path(), f"/somewhere/latchkey-{os.geteuid()}/latchkey.sock")

    def test_reconnects_after_the_daemon_closed_the_connection(self) -> None:
        # Stands in for the daemon's idle close: the socket is shut down
        # under the client, whose next call goes out on a new connection.
        self.client._sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(self.client.status().vault, "unlocked")


class WithoutTheDaemon(unittest.TestCase):
    def test_no_daemon_is_a_connect_error(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            os.chmod(directory, 0o700)
            with self.assertRaises(latchkey.ConnectError) as caught:
                latchkey.Client.connect(os.path.join(directory, "latchkey.sock"))
            self.assertEqual(caught.exception.fix, "latchkey daemon start")

    def test_an_open_directory_is_untrusted(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            os.chmod(directory, 0o755)
            path = os.path.join(directory, "latchkey.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addCleanup(listener.close)
            listener.bind(path)
            listener.listen(1)
            with self.assertRaises(latchkey.UntrustedError) as caught:
                latchkey.Client.connect(path)
            self.assertIn("chmod 700", caught.exception.message)
            listener.settimeout(0.0)
            with self.assertRaises(BlockingIOError):
                listener.accept()  # nothing connected, so nothing was sent

    def test_unknown_kinds_stay_readable(self) -> None:
        error = latchkey.from_reply({"code": -32099, "message": "new: run `latchkey x`", "data": {"kind": "brand_new"}})
        self.assertIs(type(error), latchkey.LatchkeyError)
        self.assertEqual(error.kind, "brand_new")
        self.assertEqual(error.fix, "latchkey x")
        limited = latchkey.from_reply({"code": -32008, "message": "slow down", "data": {"kind": "rate_limited", "retry_after": 3}})
        self.assertIsInstance(limited, latchkey.RateLimitedError)
        self.assertEqual(limited.retry_after, 3)


if __name__ == "__main__":
    unittest.main()
