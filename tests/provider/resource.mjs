// Latchkey e2e test protected resource (for the authenticating proxy).
//
// Owns: a small HTTP server on 127.0.0.1 that accepts a request only when
// its `Authorization: Bearer` token is active by RFC 7662 introspection at
// the real test authorization server (oidc-provider, server.mjs), asked as
// a confidential client. Node's standard library only.
//
// Usage: RESOURCE_CLIENT_SECRET=... node resource.mjs INTROSPECTION_URL CLIENT_ID
// Prints exactly one line on stdout, `READY http://127.0.0.1:PORT`.
//
// Every accepted request is answered with JSON describing what arrived:
//   {method, path, query, body_len, body_sha256, headers (all but
//    authorization), auth_scheme, token_sha256, client_id, scope}
// so a test can check what the proxy forwarded without the token itself
// ever being echoed. Special paths (after the token check):
//   GET /big?bytes=N   a streamed (chunked) body of N bytes: byte i is i % 251
//   GET /hop           answers with hop-by-hop headers the proxy must drop
// Admin (no token needed):
//   POST /__resource/fail_next {"count":N}   the next N requests get 401,
//                                            whatever their token
//   GET  /__resource/stats                  {requests, rejected, tokens:[sha256...]}
// Exits when stdin closes (RESOURCE_EXIT_ON_STDIN_EOF=1).

import { createHash } from 'node:crypto';
import http from 'node:http';

const [introspectionUrl, clientId] = process.argv.slice(2);
const clientSecret = process.env.RESOURCE_CLIENT_SECRET ?? '';
if (!introspectionUrl || !clientId) {
  process.stderr.write('usage: node resource.mjs INTROSPECTION_URL CLIENT_ID\n');
  process.exit(1);
}

let failNext = 0;
const stats = { requests: 0, rejected: 0, tokens: [] };
const sha256 = (data) => createHash('sha256').update(data).digest('hex');

async function introspect(token) {
  const basic = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64');
  const res = await fetch(introspectionUrl, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
  });
  if (!res.ok) return { active: false };
  return res.json();
}

function json(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function unauthorized(res, why) {
  stats.rejected += 1;
  json(res, 401, { error: 'invalid_token', why }, { 'www-authenticate': 'Bearer error="invalid_token"' });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://resource');
  if (url.pathname === '/__resource/fail_next' && req.method === 'POST') {
    let text = '';
    for await (const chunk of req) text += chunk;
    failNext = Number(JSON.parse(text || '{}').count ?? 1);
    return json(res, 200, { ok: true });
  }
  if (url.pathname === '/__resource/stats') return json(res, 200, stats);

  stats.requests += 1;
  // The body is hashed as it streams in (it may be large).
  const hash = createHash('sha256');
  let bodyLen = 0;
  for await (const chunk of req) {
    hash.update(chunk);
    bodyLen += chunk.length;
  }
  const m = /^(\S+) (\S+)$/.exec(req.headers.authorization ?? '');
  if (!m) return unauthorized(res, 'no authorization');
  stats.tokens.push(sha256(m[2]));
  if (failNext > 0) {
    failNext -= 1;
    return unauthorized(res, 'told to fail');
  }
  if (m[1].toLowerCase() !== 'bearer') return unauthorized(res, 'not a bearer token');
  const found = await introspect(m[2]);
  if (found.active !== true) return unauthorized(res, 'inactive token');

  if (url.pathname === '/big') {
    const total = Number(url.searchParams.get('bytes') ?? '0');
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const block = Buffer.alloc(64 * 1024);
    let sent = 0;
    while (sent < total) {
      const n = Math.min(block.length, total - sent);
      for (let i = 0; i < n; i++) block[i] = (sent + i) % 251;
      if (!res.write(block.subarray(0, n))) await new Promise((r) => res.once('drain', r));
      sent += n;
    }
    return res.end();
  }
  const { authorization: _hidden, ...headers } = req.headers;
  const extra = url.pathname === '/hop'
    ? { connection: 'keep-alive, x-upstream-hop', 'x-upstream-hop': 'dropped', 'keep-alive': 'timeout=5', 'x-upstream-end': 'kept' }
    : {};
  return json(res, 200, {
    method: req.method,
    path: url.pathname,
    query: url.search,
    body_len: bodyLen,
    body_sha256: hash.digest('hex'),
    headers,
    auth_scheme: m[1],
    token_sha256: sha256(m[2]),
    client_id: found.client_id,
    scope: found.scope ?? '',
  }, extra);
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`READY http://127.0.0.1:${server.address().port}\n`);
});
if (process.env.RESOURCE_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
