"""Latchkey's Python client: short-lived access tokens from ``latchkeyd``
over its local socket, with the standard library only.

    import latchkey

    with latchkey.Client.connect() as client:
        token = client.token("github")
        print(token.token_type, token.expires_at)
        headers = {"Authorization": client.header("github")}
"""

from .client import (
    APP_KEY_ENV,
    PROTOCOL_VERSION,
    SOCKET_ENV,
    Client,
    Status,
    Token,
    socket_path,
)
from .errors import *  # noqa: F401,F403
from .errors import KNOWN_KINDS, LatchkeyError, __all__ as _error_names

__all__ = [
    "APP_KEY_ENV",
    "PROTOCOL_VERSION",
    "SOCKET_ENV",
    "Client",
    "Status",
    "Token",
    "socket_path",
    "KNOWN_KINDS",
    "LatchkeyError",
    *_error_names,
]
