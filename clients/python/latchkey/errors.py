"""Typed errors: one class per stable error kind of the protocol.

The daemon's error replies carry a machine ``kind`` (``data.kind`` on the
wire, e.g. ``"not_found"``) and a human ``message`` that names the fix.
:func:`from_reply` turns such a reply into the matching subclass of
:class:`LatchkeyError`; kinds this client does not know become a plain
:class:`LatchkeyError` with ``kind`` as the daemon sent it.

Errors found on this side of the socket (no daemon, an untrusted socket,
a reply that cannot be read) have kinds of their own, which are not daemon
kinds: ``connect``, ``untrusted`` and ``protocol``.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Type

__all__ = [
    "LatchkeyError",
    "ConnectError",
    "UntrustedError",
    "ProtocolError",
    "ParseError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "InvalidParamsError",
    "FrameTooLargeError",
    "UnsupportedProtocolError",
    "NotInitializedError",
    "AlreadyInitializedError",
    "LockedError",
    "WrongPassphraseError",
    "KeyringUnavailableError",
    "VaultCorruptError",
    "NotFoundError",
    "AlreadyExistsError",
    "ForbiddenError",
    "ReauthRequiredError",
    "RateLimitedError",
    "ProviderUnavailableError",
    "ProviderErrorError",
    "ShuttingDownError",
    "ApprovalRequiredError",
    "ApprovalDeniedError",
    "StepUpRequiredError",
    "WeakPassphraseError",
    "SubjectTokenUnavailableError",
    "VaultUnavailableError",
    "InternalError",
    "from_reply",
]

# The command a message names as its fix: the last `quoted` command in it
# (messages read "...: run `latchkey login github`").
_FIX = re.compile(r"`([^`]+)`")


class LatchkeyError(Exception):
    """Any failure of a call to the daemon.

    ``kind`` is the protocol's stable error kind (match on it, or on the
    subclass, never on the message); ``message`` is the human text, which
    names the fix; ``fix`` is the command it names (``None`` when it names
    none); ``retry_after`` is the number of seconds after which a retry
    makes sense, when the daemon said so.
    """

    kind: str = "unknown"

    def __init__(
        self,
        message: str,
        kind: Optional[str] = None,
        retry_after: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.message = message
        found = _FIX.findall(message)
        self.fix: Optional[str] = found[-1] if found else None
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, message={self.message!r})"


class ConnectError(LatchkeyError):
    """The socket could not be reached: the daemon is not running (start it
    with ``latchkey daemon start``) or the path is wrong."""

    kind = "connect"


class UntrustedError(LatchkeyError):
    """The socket's directory or the process behind the socket is not
    provably the user's own: nothing was sent."""

    kind = "untrusted"


class ProtocolError(LatchkeyError):
    """The daemon answered something this client cannot read, or speaks
    another protocol version."""

    kind = "protocol"


class ParseError(LatchkeyError):
    kind = "parse_error"


class InvalidRequestError(LatchkeyError):
    kind = "invalid_request"


class MethodNotFoundError(LatchkeyError):
    kind = "method_not_found"


class InvalidParamsError(LatchkeyError):
    kind = "invalid_params"


class FrameTooLargeError(LatchkeyError):
    kind = "frame_too_large"


class UnsupportedProtocolError(LatchkeyError):
    kind = "unsupported_protocol"


class NotInitializedError(LatchkeyError):
    """No vault exists yet: run ``latchkey init``."""

    kind = "not_initialized"


class AlreadyInitializedError(LatchkeyError):
    kind = "already_initialized"


class LockedError(LatchkeyError):
    """The vault is locked: run ``latchkey unlock``."""

    kind = "locked"


class WrongPassphraseError(LatchkeyError):
    kind = "wrong_passphrase"


class KeyringUnavailableError(LatchkeyError):
    kind = "keyring_unavailable"


class VaultCorruptError(LatchkeyError):
    kind = "vault_corrupt"


class NotFoundError(LatchkeyError):
    """No such provider or credential."""

    kind = "not_found"


class AlreadyExistsError(LatchkeyError):
    kind = "already_exists"


class ForbiddenError(LatchkeyError):
    kind = "forbidden"


class ReauthRequiredError(LatchkeyError):
    """The credential needs a new login: ``latchkey login NAME``."""

    kind = "reauth_required"


class RateLimitedError(LatchkeyError):
    """Too many calls; ``retry_after`` says when to try again."""

    kind = "rate_limited"


class ProviderUnavailableError(LatchkeyError):
    kind = "provider_unavailable"


class ProviderErrorError(LatchkeyError):
    """The provider refused the request (e.g. ``invalid_client``)."""

    kind = "provider_error"


class ShuttingDownError(LatchkeyError):
    kind = "shutting_down"


class ApprovalRequiredError(LatchkeyError):
    kind = "approval_required"


class ApprovalDeniedError(LatchkeyError):
    kind = "approval_denied"


class StepUpRequiredError(LatchkeyError):
    """The credential needs a fresh confirmation: ``latchkey confirm NAME``."""

    kind = "step_up_required"


class WeakPassphraseError(LatchkeyError):
    """A new passphrase is too short, too guessable, or on a breached list."""

    kind = "weak_passphrase"


class SubjectTokenUnavailableError(LatchkeyError):
    """A token exchange credential's subject token (the file or environment
    variable the message names) is missing, empty or expired."""

    kind = "subject_token_unavailable"


class VaultUnavailableError(LatchkeyError):
    """A shared vault's database (named in the message) is unreachable or
    failing; retry later."""

    kind = "vault_unavailable"


class InternalError(LatchkeyError):
    kind = "internal"


_BY_KIND: Dict[str, Type[LatchkeyError]] = {
    cls.kind: cls
    for cls in (
        ParseError,
        InvalidRequestError,
        MethodNotFoundError,
        InvalidParamsError,
        FrameTooLargeError,
        UnsupportedProtocolError,
        NotInitializedError,
        AlreadyInitializedError,
        LockedError,
        WrongPassphraseError,
        KeyringUnavailableError,
        VaultCorruptError,
        NotFoundError,
        AlreadyExistsError,
        ForbiddenError,
        ReauthRequiredError,
        RateLimitedError,
        ProviderUnavailableError,
        ProviderErrorError,
        ShuttingDownError,
        ApprovalRequiredError,
        ApprovalDeniedError,
        StepUpRequiredError,
        WeakPassphraseError,
        SubjectTokenUnavailableError,
        VaultUnavailableError,
        InternalError,
    )
}

#: Every daemon error kind this client knows, as spelled on the wire.
KNOWN_KINDS = frozenset(_BY_KIND)


def from_reply(error: object) -> LatchkeyError:
    """The exception for a JSON-RPC ``error`` object of a reply."""
    if not isinstance(error, dict):
        return ProtocolError("unexpected reply from the latchkey daemon: error is not an object")
    message = error.get("message")
    data = error.get("data")
    if not isinstance(message, str) or not isinstance(data, dict):
        return ProtocolError("unexpected reply from the latchkey daemon: malformed error")
    kind = data.get("kind")
    kind = kind if isinstance(kind, str) else "unknown"
    retry = data.get("retry_after")
    retry_after = retry if isinstance(retry, int) and not isinstance(retry, bool) else None
    cls = _BY_KIND.get(kind, LatchkeyError)
    return cls(message, kind=kind, retry_after=retry_after)
