"""An independent OAuth 1.0a (RFC 5849) provider for Latchkey's tests.

oauthlib's endpoints (the reference implementation in Python) behind a
small HTTP server on 127.0.0.1: temporary credentials, an authorization
page that approves at once (a GET: it redirects to the callback with the
verifier), token credentials, and a resource endpoint that answers
whether a request's signature is valid. Nonces are recorded, so a replay
is refused. Prints "READY <port>" on stdout, and exits when stdin closes.

Usage: server.py CONFIG.json, where the config names the consumers:
{"consumers": {"KEY": {"secret": "...", "rsa_key_out": "/path"}}}; a
consumer with rsa_key_out gets a fresh RSA key pair whose private key is
written there (PKCS#8 PEM, mode 0600); "access_tokens": {"TOKEN":
{"client": "KEY", "secret": "..."}} are token credentials issued beforehand.
"""

import json
import os
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from oauthlib.oauth1 import (
    AccessTokenEndpoint,
    AuthorizationEndpoint,
    RequestTokenEndpoint,
    RequestValidator,
    ResourceEndpoint,
    SIGNATURE_HMAC_SHA1,
    SIGNATURE_HMAC_SHA256,
    SIGNATURE_PLAINTEXT,
    SIGNATURE_RSA_SHA256,
)

LOCK = threading.Lock()
CONSUMERS = {}
REQUEST_TOKENS = {}  # token -> {client, secret, callback, verifier}
ACCESS_TOKENS = {}  # token -> {client, secret}
NONCES = set()
STATS = {"replays_refused": 0, "valid": 0, "invalid": 0}


class Validator(RequestValidator):
    enforce_ssl = False
    # Latchkey's keys and nonces are not oauthlib's default shapes.
    safe_characters = set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    )
    client_key_length = (3, 64)
    request_token_length = (3, 64)
    access_token_length = (3, 64)
    nonce_length = (3, 64)
    verifier_length = (3, 64)
    timestamp_lifetime = 600

    @property
    def allowed_signature_methods(self):
        return (
            SIGNATURE_HMAC_SHA1,
            SIGNATURE_HMAC_SHA256,
            SIGNATURE_RSA_SHA256,
            SIGNATURE_PLAINTEXT,
        )

    @property
    def dummy_client(self):
        return "dummy-client"

    @property
    def dummy_request_token(self):
        return "dummy-request-token"

    @property
    def dummy_access_token(self):
        return "dummy-access-token"

    def get_client_secret(self, client_key, request):
        return CONSUMERS.get(client_key, {}).get("secret", "dummy")

    def get_rsa_key(self, client_key, request):
        return CONSUMERS.get(client_key, {}).get("rsa_public", "")

    def get_request_token_secret(self, client_key, token, request):
        with LOCK:
            return REQUEST_TOKENS.get(token, {}).get("secret", "dummy")

    def get_access_token_secret(self, client_key, token, request):
        with LOCK:
            return ACCESS_TOKENS.get(token, {}).get("secret", "dummy")

    def validate_client_key(self, client_key, request):
        return client_key in CONSUMERS

    def validate_request_token(self, client_key, token, request):
        with LOCK:
            return REQUEST_TOKENS.get(token, {}).get("client") == client_key

    def validate_access_token(self, client_key, token, request):
        with LOCK:
            return ACCESS_TOKENS.get(token, {}).get("client") == client_key

    def validate_timestamp_and_nonce(
        self, client_key, timestamp, nonce, request, request_token=None, access_token=None
    ):
        key = (client_key, timestamp, nonce, request_token or access_token)
        with LOCK:
            if key in NONCES:
                STATS["replays_refused"] += 1
                return False
            NONCES.add(key)
            return True

    def validate_redirect_uri(self, client_key, redirect_uri, request):
        host = urlsplit(redirect_uri).hostname
        return host in ("127.0.0.1", "::1", "localhost")

    def validate_requested_realms(self, client_key, realms, request):
        return True

    def validate_realms(self, client_key, token, request, uri=None, realms=None):
        return True

    def validate_verifier(self, client_key, token, verifier, request):
        with LOCK:
            held = REQUEST_TOKENS.get(token, {})
            return held.get("client") == client_key and held.get("verifier") == verifier

    def verify_request_token(self, token, request):
        with LOCK:
            return token in REQUEST_TOKENS

    def verify_realms(self, token, realms, request):
        return True

    def get_default_realms(self, client_key, request):
        return []

    def get_realms(self, token, request):
        return []

    def get_redirect_uri(self, token, request):
        with LOCK:
            return REQUEST_TOKENS[token]["callback"]

    def save_request_token(self, token, request):
        with LOCK:
            REQUEST_TOKENS[token["oauth_token"]] = {
                "client": request.client_key,
                "secret": token["oauth_token_secret"],
                "callback": request.redirect_uri,
            }

    def save_verifier(self, token, verifier, request):
        with LOCK:
            REQUEST_TOKENS[token]["verifier"] = verifier["oauth_verifier"]

    def save_access_token(self, token, request):
        with LOCK:
            ACCESS_TOKENS[token["oauth_token"]] = {
                "client": request.client_key,
                "secret": token["oauth_token_secret"],
            }

    def invalidate_request_token(self, client_key, request_token, request):
        with LOCK:
            REQUEST_TOKENS.pop(request_token, None)


VALIDATOR = Validator()
REQUEST_TOKEN = RequestTokenEndpoint(VALIDATOR)
AUTHORIZE = AuthorizationEndpoint(VALIDATOR)
ACCESS_TOKEN = AccessTokenEndpoint(VALIDATOR)
RESOURCE = ResourceEndpoint(VALIDATOR)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("oauth1 provider: " + (fmt % args) + "\n")

    def reply(self, status, headers, body):
        body = body.encode() if isinstance(body, str) else (body or b"")
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def serve(self, method):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        uri = "http://%s%s" % (self.headers["host"], self.path)
        headers = {k: v for k, v in self.headers.items()}
        path = urlsplit(self.path).path
        if path == "/oauth/request_token":
            h, b, s = REQUEST_TOKEN.create_request_token_response(uri, method, body, headers)
            return self.reply(s, h, b)
        if path == "/oauth/authorize":
            # The person approves at once.
            h, b, s = AUTHORIZE.create_authorization_response(uri, method, body, headers)
            return self.reply(s, h, b)
        if path == "/oauth/access_token":
            h, b, s = ACCESS_TOKEN.create_access_token_response(uri, method, body, headers)
            return self.reply(s, h, b)
        if path == "/__admin/stats":
            with LOCK:
                return self.reply(200, {"content-type": "application/json"}, json.dumps(STATS))
        valid, request = RESOURCE.validate_protected_resource_request(uri, method, body, headers)
        with LOCK:
            STATS["valid" if valid else "invalid"] += 1
        if not valid:
            sys.stderr.write("oauth1 provider: refused %s %s: %s\n" % (method, uri, request.validator_log))
        return self.reply(
            200 if valid else 401,
            {"content-type": "application/json"},
            json.dumps({"valid": bool(valid)}),
        )

    def do_GET(self):
        self.serve("GET")

    def do_POST(self):
        self.serve("POST")


def main():
    config = json.load(open(sys.argv[1]))
    for key, consumer in config["consumers"].items():
        entry = {"secret": consumer.get("secret", "")}
        out = consumer.get("rsa_key_out")
        if out:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            entry["rsa_public"] = private.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            ).decode()
        CONSUMERS[key] = entry
    # Token credentials issued beforehand (what `import-token` stores).
    for token, held in config.get("access_tokens", {}).items():
        ACCESS_TOKENS[token] = held
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY %d" % server.server_address[1], flush=True)
    # Our parent holds our stdin: when it goes, so do we.
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
