#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ (run from the repository
root; needs openssl for the signed ID tokens). The committed corpus is
these seeds plus what `cargo fuzz cmin` kept from the fuzzing runs."""
import base64, hashlib, json, os, subprocess, tempfile

# The test key of daemon/src/fuzz.rs (TEST_SIGNING_KEY_PEM).
KEY = """-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEdY6wM2KY4RIeHvwe+/ZD4YJOTt9ga+xrJlGAgf7/KP
-----END PRIVATE KEY-----
"""
CANARY = "latchkey-fuzz-passphrase"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join("fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def frame():
    write("frame", b"\x10\x02\x01\x03" + b'{"a":1}\n{}\n')
    write("frame", b"\x04\x00" + b"1234\n12345\n")
    write("frame", b"\x3f\x01\x00" + b'{}\n{"half')
    write("frame", b"\x80\x03\x07\xff\x01" + b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1}}\n\n')
    write("frame", b"\x02\x00" + b"\n\n\n")


def request():
    def line(method, params=None, id_=1):
        msg = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        return json.dumps(msg)

    methods = {
        "hello": {"protocol": 1},
        "status": {},
        "vault.init": {"passphrase": CANARY, "keyring": False},
        "vault.unlock": {"passphrase": CANARY},
        "vault.lock": {},
        "vault.change_passphrase": {"old": CANARY, "new": CANARY + "-new"},
        "vault.rekey": {"passphrase": CANARY},
        "provider.add": {"name": "github", "issuer": "https://as.example", "endpoints": {"token_endpoint": "https://as.example/token"}},
        "provider.list": {},
        "provider.show": {"name": "github"},
        "provider.remove": {"name": "github"},
        "credential.add": {"name": "gh", "provider": "github", "client_id": "id", "client_secret": CANARY,
                           "grant": "client_credentials", "auth": "client_secret_basic", "scopes": ["read"]},
        "credential.list": {},
        "credential.show": {"name": "gh"},
        "credential.remove": {"name": "gh"},
        "token.get": {"credential": "gh", "scopes": ["read"], "min_ttl": 60},
        "daemon.shutdown": {},
        "daemon.stats": {},
        "login.start": {"credential": "gh", "device": True, "timeout_secs": 60},
        "login.wait": {"login_id": "abc"},
        "token.revoke": {"credential": "gh", "local_only": True},
        "vault.panic": {"provider": "github"},
        "audit.list": {"since": 1700000000, "credential": "gh", "app": "exe:/usr/bin/curl", "after_seq": 10, "limit": 100},
        "audit.verify": {},
        "credential.set": {"name": "gh", "access": "ask", "step_up": {"method": "totp", "window_secs": 600}},
        "totp.enroll": {"proof": {"totp": "123456"}, "account": "alice"},
        "totp.confirm": {"code": "123456"},
        "totp.remove": {"proof": {"passphrase": CANARY}},
        "totp.status": {},
        "credential.confirm": {"name": "gh", "proof": {"totp": "123456"}},
        "credential.set_secret": {"name": "gh", "client_secret": CANARY, "drop_old": True},
        "git.route_add": {"protocol": "https", "host": "github.com", "path": "acme", "username": "alice",
                          "credential": "gh", "proof": {"passphrase": CANARY}},
        "git.route_list": {},
        "git.route_remove": {"protocol": "https", "host": "github.com", "path": "acme/w.git", "username": "alice"},
        "git.get": {"protocol": "https", "host": "github.com", "path": "acme/w.git", "username": "alice"},
        "git.erase": {"protocol": "https", "host": "github.com:8443"},
        "oauth1.import_token": {"credential": "tw", "token": CANARY, "token_secret": CANARY},
        "oauth1.sign": {"credential": "tw", "method": "POST", "url": "https://api.example/1/s?x=a%20b",
                        "form": [["status", "hi & bye"], ["tags[]", "é"]]},
        "proxy.start": {"credential": "gh", "upstream": "https://api.github.com/v3", "listen": "127.0.0.1:0",
                        "scopes": ["repo"], "limits": {"max_request_bytes": 1048576, "max_response_bytes": 4194304,
                                                       "timeout_secs": 30, "max_connections": 8}},
        "proxy.wait": {"proxy_id": "abc"},
        "credential.jwks": {"name": "gh"},
        "credential.rotate_key": {"name": "gh", "alg": "EdDSA", "retire_old": False},
        "dpop.proof": {"credential": "gh", "method": "GET", "url": "https://rs.example/a?b=c",
                       "nonce": "n-1", "scopes": ["read"], "min_ttl": 30},
        "slot.add": {"key": "latchkey-key-file-v1:" + "A" * 43, "label": "ci-runner-1",
                     "proof": {"passphrase": CANARY}},
        "slot.list": {},
        "slot.remove": {"id": "00112233445566778899aabbccddeeff", "proof": {"passphrase": CANARY}},
    }
    for method, params in methods.items():
        write("request", line(method, params))
    # A secret in the wrong place must not be echoed.
    write("request", line("credential.add", {"name": "gh", "provider": "github", "client_id": "id",
                                             "grant": "client_credentials", "auth": CANARY}))
    write("request", line("credential.add", {"name": "k", "provider": "github", "client_id": "id",
                                             "grant": "client_credentials", "auth": "private_key_jwt",
                                             "client_key": {"import": "-----BEGIN PRIVATE KEY-----\n" + CANARY},
                                             "assertion_audience": "issuer", "dpop": {"generate": "ES256"}}))
    write("request", line("credential.rotate_key", {"name": "gh", "alg": "RS256"}))
    write("request", line("vault.unlock", {"passphrase": 12345, "x": CANARY}))
    write("request", line("vault.unlock", {"key": "latchkey-key-file-v1:" + CANARY}))
    write("request", line("vault.init", {"passphrase": [CANARY]}))
    write("request", line("token.get", {"credential": "gh", "min_ttl": -1}))
    write("request", line("no.such"))
    write("request", line("status", None, id_=None))
    write("request", '{"jsonrpc":"1.0","id":"x","method":"hello"}')
    write("request", '[1,2,3]')
    write("request", '{"id":1,"method":"hello","params":null}')
    write("request", b'{"id":1,"method":"\xff"}')
    write("request", '{"id":{"a":[1,2]},"method":"hello","params":[1]}')


def callback():
    good = "GET /callback?code=the-code&state=latchkey-fuzz-state&iss=https%3A%2F%2Fas.example HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    write("callback", b"\x01" + good.encode())
    write("callback", b"\x00" + good.replace("&iss=https%3A%2F%2Fas.example", "").encode())
    write("callback", b"\x01" + good.replace("as.example", "evil.example%0A%1B[31m").encode())
    write("callback", b"\x01" + b"GET /callback?error=access_denied&state=latchkey-fuzz-state HTTP/1.1\r\nHost: x\r\n\r\n")
    write("callback", b"\x01" + b"GET /callback?code=c&state=nope HTTP/1.1\r\nHost: x\r\n\r\n")
    write("callback", b"\x00" + b"GET /other HTTP/1.1\r\n\r\n")
    write("callback", b"\x00" + b"POST /callback?state=latchkey-fuzz-state&code= HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")


def response(target, status_idx, kind, body):
    write(target, bytes([status_idx, kind]) + (body if isinstance(body, bytes) else body.encode()))


def token_response():
    ok = {"access_token": "at-1234567890", "token_type": "bearer", "expires_in": 3600, "scope": "read write"}
    for kind in (0x00, 0x12, 0x21, 0x34):
        response("token_response", 0, kind, json.dumps(ok))
    response("token_response", 0, 0x10, json.dumps(dict(ok, refresh_token="rt-1234567890", id_token="a.b.c")))
    response("token_response", 0, 0x00, json.dumps(dict(ok, expires_in=18446744073709551615)))
    response("token_response", 0, 0x00, json.dumps(dict(ok, expires_in=-5)))
    response("token_response", 0, 0x00, '{"access_token":"at-1234567890","expires_in":"60"}')
    response("token_response", 3, 0x00, '{"error":"invalid_grant","error_description":"bad"}')
    response("token_response", 3, 0x10, '{"error":"invalid_grant","error_description":"refresh token latchkey-fuzz-refresh-token is bad"}')
    response("token_response", 4, 0x00, '{"error":"invalid_client","error_description":"secret latchkey-fuzz-client-secret is wrong"}')
    response("token_response", 3, 0x00, '{"error":"latchkey-fuzz-client-secret"}')
    response("token_response", 3, 0x00, '{"error":"slow_down\\n\\u001b[31m"}')
    response("token_response", 8, 0x03, "<html>oops</html>")
    response("token_response", 7, 0x00, "{}")
    response("token_response", 0, 0x02, '{"access_token":"at-1234567890","token_type":"bearer"}')


def device_response():
    ok = {"device_code": "dc-1234567890", "user_code": "ABCD-EFGH", "verification_uri": "https://as.example/device",
          "verification_uri_complete": "https://as.example/device?user_code=ABCD-EFGH", "expires_in": 600, "interval": 5}
    response("device_response", 0, 0x00, json.dumps(ok))
    response("device_response", 0, 0x10, json.dumps(dict(ok, expires_in=18446744073709551615, interval=0)))
    response("device_response", 0, 0x00, json.dumps(dict(ok, verification_uri="not a url")))
    response("device_response", 3, 0x00, '{"error":"invalid_client","error_description":"no"}')
    response("device_response", 3, 0x00, '{"error":"invalid_client","error_description":"secret latchkey-fuzz-client-secret\\n"}')
    response("device_response", 9, 0x03, "down")


def revocation_response():
    response("revocation_response", 0, 0x00, "")
    response("revocation_response", 3, 0x00, '{"error":"unsupported_token_type"}')
    response("revocation_response", 3, 0x10, '{"error":"invalid_request","error_description":"latchkey-fuzz-refresh-token"}')
    response("revocation_response", 9, 0x04, "")


def discovery():
    doc = {"issuer": "$ISSUER", "authorization_endpoint": "$ISSUER/authorize", "token_endpoint": "$ISSUER/token",
           "device_authorization_endpoint": "$ISSUER/device", "revocation_endpoint": "$ISSUER/revoke",
           "jwks_uri": "$ISSUER/jwks"}
    for mode in (0, 1, 2, 3):
        write("discovery", bytes([mode]) + json.dumps(doc).encode())
    write("discovery", b"\x00" + json.dumps(dict(doc, issuer="https://evil.example")).encode())
    write("discovery", b"\x00" + json.dumps(dict(doc, token_endpoint="http://example.com/token")).encode())
    write("discovery", b"\x00" + json.dumps(dict(doc, token_endpoint="javascript:alert(1)\n")).encode())
    write("discovery", b"\x00" + json.dumps({"token_endpoint": "$ISSUER/token"}).encode())
    write("discovery", bytes([6 << 2]) + b"not found")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(header, claims):
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    with tempfile.TemporaryDirectory() as d:
        key, msg = os.path.join(d, "k.pem"), os.path.join(d, "m")
        open(key, "w").write(KEY)
        open(msg, "wb").write(signing_input.encode())
        sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", msg],
                             check=True, capture_output=True).stdout
    return signing_input + "." + b64(sig)


def id_token():
    header = {"alg": "EdDSA", "kid": "fuzz", "typ": "JWT"}
    claims = {"iss": "https://as.example", "aud": ["fuzz-client"], "sub": "user-1",
              "exp": 4102444800, "iat": 1700000000, "nonce": "latchkey-fuzz-nonce"}
    write("id_token", b"\x01" + jws(header, claims).encode())
    write("id_token", b"\x00" + jws(header, {k: v for k, v in claims.items() if k != "nonce"}).encode())
    write("id_token", b"\x01" + jws(header, dict(claims, exp=1700000001)).encode())
    write("id_token", b"\x01" + jws(header, dict(claims, aud="someone-else")).encode())
    write("id_token", b"\x01" + jws(dict(header, alg="HS256"), claims).encode())
    unsigned = b64(json.dumps({"alg": "none"}).encode()) + "." + b64(json.dumps(claims).encode()) + "."
    write("id_token", b"\x01" + unsigned.encode())
    write("id_token", b"\x00" + b"a.b.c")


def key_file():
    key = "latchkey-key-file-v1:" + b64(bytes(range(32)))
    write("key_file", "# Latchkey key file: it unlocks a vault.\n# Keep it private.\n" + key + "\n")
    write("key_file", key)
    write("key_file", "\r\n" + key + "\r\n\r\n")
    write("key_file", key + "\n" + key + "\n")
    write("key_file", key[:-1] + "!\n")
    write("key_file", "latchkey-key-file-v1:" + CANARY + "\n")
    write("key_file", CANARY + "\n")
    write("key_file", b"\xff\xfe" + key.encode())
    write("key_file", "#" * 5000)


for make in (frame, request, callback, token_response, device_response, revocation_response, discovery, id_token,
             key_file):
    make()
