// Latchkey e2e test authorization server.
//
// Owns: starting panva's `oidc-provider` (an OpenID-certified OAuth 2.0 /
// OIDC server, pinned in package.json) on 127.0.0.1, plus our own small
// admin / fault-injection / counting layer in front of it under /__admin/.
// Nothing here implements OAuth itself: every real answer comes from
// oidc-provider; this file only configures it, counts, and breaks things on
// request.
//
// Usage: node server.mjs CONFIG.json      (or PROVIDER_CONFIG=CONFIG.json)
// Prints exactly one line on stdout, `READY <issuer>`, once listening; all
// other output (oidc-provider's notices included) goes to stderr.
//
// Config JSON:
//   {
//     "clients": [ { "client_id", "client_secret"?, "token_endpoint_auth_method",
//                    "grant_types", "redirect_uris"?, "scope"?,
//                    "access_token_ttl"? (per-client override, seconds),
//                    ...any other oidc-provider client metadata } ],
//     "access_token_ttl": 3600,        // seconds, access tokens of every grant
//     "refresh_token_ttl": 1209600,    // seconds
//     "issuer_path": "/tenant-a",      // optional: issuer http://127.0.0.1:PORT/tenant-a
//     "port": 0,                       // optional: 0 = ephemeral
//     "scopes": ["extra:scope"],       // optional: more scopes the server knows
//     "clock_tolerance": 0,            // seconds of grace after a token's exp
//                                      // (oidc-provider's own default is 15)
//     "revocation": true,              // false: no RFC 7009 revocation endpoint
//                                      // (and none in the discovery document)
//     "token_exchange": {              // optional: the RFC 8693 grant, for
//       "issuer": "https://ci.example", // subject tokens (JWTs) this "CI issuer"
//       "audience": "latchkey-test",   // signed with this key for this audience
//       "jwk": { ...public ES256 JWK }
//     }
//     "dpop_nonce": false              // true: the token endpoint demands a DPoP
//                                      // nonce (use_dpop_nonce) before it answers
//     "resource_nonce": false          // true: /__admin/resource demands its own
//                                      // DPoP nonce of a DPoP-bound token's proof
//                                      // (RFC 9449 §9), a new one after each 200
//   }
//
// Token exchange (urn:ietf:params:oauth:grant-type:token-exchange), for
// clients registered with that grant type: the subject token must be a JWT
// (subject_token_type ...:jwt or ...:id_token) signed by the configured key
// (ES256), with that iss and aud, unexpired (clock_tolerance applies); the
// requested scope must be the client's. The access token issued (opaque,
// oidc-provider's own AccessToken) carries the subject's `sub` as its account
// and the audience asked for. Every exchange's parameters (never the subject
// token) are kept for GET /__admin/exchanges.
//
// User grants (authorization code + PKCE, device code, refresh with rotation)
// work for clients registered with those grant types; `http://127.0.0.1/...`
// redirect URIs make a client `native`, so any loopback port matches. The
// login and consent pages are oidc-provider's devInteractions (any login and
// password; the login becomes the subject), which a test drives over HTTP
// (see tests/src/browser.rs). Refresh tokens are issued to every client
// allowed the refresh_token grant (offline_access or not) and rotate on use.
//
// Admin endpoints (always at the root, whatever the issuer path):
//   GET  /__admin/stats      counters (every POST to the token endpoint counts,
//                            including ones answered by a fault), also by grant
//                            type and by the client authentication the request
//                            carried (oidc-provider itself accepts basic and post
//                            interchangeably, so this is how a test sees which)
//   POST /__admin/reset      zero counters, clear faults and delay_all
//   POST /__admin/fault      queue a fault for the next `count` token requests:
//        {"kind":"status","status":503,"retry_after":2,"body":"...","content_type":"...","count":1}
//        {"kind":"delay","ms":500,"count":1}   delay, then answer normally
//        {"kind":"drop","count":1}             destroy the socket, no answer
//        {"kind":"garbage","count":1}          200, claims JSON, body is not JSON
//   POST /__admin/delay_all  {"ms":N}  delay every token request by N ms (0 = off)
//   GET  /__admin/resource   a protected resource: 200 {"active":true,...} for a
//                            live access token in `Authorization: Bearer`, else 401;
//                            a DPoP-bound token only as `Authorization: DPoP` with a
//                            valid `DPoP` proof by its key for this request (RFC 9449);
//                            with "resource_nonce", a proof without the current nonce
//                            gets 401 `DPoP error="use_dpop_nonce"` and a `DPoP-Nonce`
//                            (counted in stats as resource_nonce_demands), and every
//                            200 to a DPoP-bound token carries the next `DPoP-Nonce`
//   GET  /__admin/refresh_tokens?client_id=ID
//                            every refresh token issued (to that client), oldest
//                            first: {"refresh_tokens":[{"token","client_id",
//                            "grant_id","consumed","revoked"}]}; recorded from
//                            oidc-provider's events, for introspection by tests
//   POST /__admin/access_token_ttl {"client_id":ID,"seconds":N}
//                            lifetime of that client's access tokens from now on
//   GET  /__admin/exchanges  every token exchange the server accepted or
//                            refused, oldest first: {"exchanges":[{"client_id",
//                            "sub","audience":[...],"resource":[...],"scope",
//                            "ok","error"}]}
//   POST /__admin/revoke_grants {"client_id":ID}
//                            what a user revoking the app's access at the provider
//                            does: every grant of that client ends, with all its
//                            refresh and access tokens -> {"ok":true,"grants":N}
//
// Set PROVIDER_EXIT_ON_STDIN_EOF=1 to make the server exit when its stdin
// closes (the Rust harness does, so a crashed test run leaves no orphan).

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import * as jose from 'jose';

// oidc-provider prints its "you SHOULD change this default" notices with
// console.info, i.e. to stdout. stdout is reserved for the READY line, so
// route every console method to stderr before the library is loaded.
for (const method of ['log', 'info', 'debug']) {
  console[method] = (...args) => console.error(...args);
}

function fail(message) {
  process.stderr.write(`provider: ${message}\n`);
  process.exit(1);
}

// ---------------------------------------------------------------- config ---

const configPath = process.argv[2] || process.env.PROVIDER_CONFIG;
if (!configPath) fail('usage: node server.mjs CONFIG.json (or set PROVIDER_CONFIG)');

let config;
try {
  config = JSON.parse(readFileSync(configPath, 'utf8'));
} catch (err) {
  fail(`cannot read config ${configPath}: ${err.message}`);
}

const accessTokenTtl = Number(config.access_token_ttl ?? 3600);
const refreshTokenTtl = Number(config.refresh_token_ttl ?? 14 * 24 * 3600);
// Tests of expiry want "expired" to mean expired, not exp + 15 s.
const clockTolerance = Number(config.clock_tolerance ?? 0);
let issuerPath = config.issuer_path ?? '';
if (issuerPath && !issuerPath.startsWith('/')) issuerPath = `/${issuerPath}`;
issuerPath = issuerPath.replace(/\/+$/, '');

// Per-client access-token lifetimes (our own key, stripped before the client
// metadata reaches oidc-provider, which would reject an unknown property).
const ttlByClient = new Map();
// Every scope any client may hold: oidc-provider only polices scopes listed
// in its `scopes` setting (see README quirks), so all of them are listed.
const knownScopes = new Set(['openid', 'offline_access', ...(config.scopes ?? [])]);

const clients = (config.clients ?? []).map((spec) => {
  const { access_token_ttl: ttl, ...client } = spec;
  if (ttl !== undefined) ttlByClient.set(client.client_id, Number(ttl));
  client.grant_types ??= ['client_credentials'];
  client.redirect_uris ??= [];
  // A client that cannot do authorization code has no response types
  // (oidc-provider defaults to ["code"] and would reject the client).
  if (!client.response_types) {
    client.response_types = client.grant_types.includes('authorization_code') ? ['code'] : [];
  }
  // http://127.0.0.1:<any port> redirects (RFC 8252) are for native apps.
  if (!client.application_type && client.redirect_uris.some((u) => /^http:\/\/(127\.0\.0\.1|\[::1\]|localhost)[:/]/.test(u))) {
    client.application_type = 'native';
  }
  if (typeof client.scope === 'string' && client.scope === '') delete client.scope;
  for (const s of (client.scope ?? '').split(' ').filter(Boolean)) knownScopes.add(s);
  return client;
});

const tokenTtl = (_ctx, token, client) => {
  const clientId = client?.clientId ?? token?.clientId;
  return ttlByClient.get(clientId) ?? accessTokenTtl;
};

// ---------------------------------------------------------------- server ---

// Bind first: the issuer must carry the real port before the provider exists.
const server = http.createServer();
// Longer than any HTTP client's idle-pool timeout (reqwest: 90 s), so a
// pooled connection is never closed under a client mid-request (a flake that
// would otherwise look like a "connection error" in the daemon's tests).
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(config.port ?? 0), '127.0.0.1', resolve);
}).catch((err) => fail(`cannot listen: ${err.message}`));

const origin = `http://127.0.0.1:${server.address().port}`;
const issuer = `${origin}${issuerPath}`;

let Provider;
try {
  ({ default: Provider } = await import('oidc-provider'));
} catch (err) {
  fail(`cannot load oidc-provider (${err.message}); run \`npm ci --prefix tests/provider\``);
}

// Fresh signing keys per run (ID tokens are RS256 by default; ES256 as well).
// Exported as JWK by the generator itself, never with `.privateKey.export()`:
// on Node 20 that can deadlock the main thread for good (seen here ~1 start
// in 10 under the Rust harness; gdb: KeyObjectHandle::ExportJWK holds the
// key's mutex, a GC inside it finalizes the dead KeyGenJob, whose destructor
// locks the same mutex). With both encodings set, no KeyObject shares the
// job's key.
const jwk = { privateKeyEncoding: { format: 'jwk' }, publicKeyEncoding: { format: 'jwk' } };
const jwks = {
  keys: [
    { ...generateKeyPairSync('rsa', { modulusLength: 2048, ...jwk }).privateKey, use: 'sig', alg: 'RS256' },
    { ...generateKeyPairSync('ec', { namedCurve: 'P-256', ...jwk }).privateKey, use: 'sig', alg: 'ES256' },
  ],
};

const provider = new Provider(issuer, {
  clients,
  jwks,
  scopes: [...knownScopes],
  clockTolerance,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // oidc-provider's default policy, stated explicitly: confidential
      // clients may introspect any token, public clients only their own.
      allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === ctx.oidc.client.clientId,
    },
    revocation: {
      enabled: config.revocation !== false,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    deviceFlow: { enabled: true },
    // RFC 9449: DPoP-bound tokens for clients that send a proof; with
    // "dpop_nonce": true the token endpoint demands a server nonce
    // (use_dpop_nonce) first, as RFC 9449 §8 lets servers do.
    dPoP: {
      enabled: true,
      ...(config.dpop_nonce ? { nonceSecret: randomBytes(32), requireNonce: () => true } : {}),
    },
    // The built-in login/consent pages (accept any username): enough for a
    // test to drive authorization code and device flows over plain HTTP.
    devInteractions: { enabled: true },
  },
  pkce: { required: () => true }, // S256 only (oidc-provider's default method)
  rotateRefreshToken: true,
  // Issue a refresh token to any client allowed the refresh_token grant, and
  // never tie it to a browser session (most real providers behave so).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  ttl: {
    AccessToken: tokenTtl,
    ClientCredentials: tokenTtl,
    RefreshToken: refreshTokenTtl,
    DeviceCode: 600,
    AuthorizationCode: 60,
    IdToken: 3600,
    Grant: refreshTokenTtl,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'application/json';
    ctx.body = out;
  },
});

// ------------------------------------------------------ token exchange ---

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const exchanges = []; // { client_id, sub, audience, resource, scope, ok, error }

if (config.token_exchange) {
  const { issuer: ciIssuer, audience: ciAudience, jwk: ciJwk } = config.token_exchange;
  const { jwtVerify, importJWK } = await import('jose');
  const { errors } = await import('oidc-provider');
  const ciKey = await importJWK(ciJwk, 'ES256');
  const list = (v) => (v === undefined ? [] : [].concat(v));
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { params, client } = ctx.oidc;
    const entry = {
      client_id: client.clientId,
      sub: null,
      audience: list(params.audience),
      resource: list(params.resource),
      scope: params.scope ?? null,
      ok: false,
      error: null,
    };
    exchanges.push(entry);
    const refuse = (err) => { entry.error = err.message; throw err; };
    if (!params.subject_token) refuse(new errors.InvalidRequest('missing required parameter subject_token'));
    const types = ['urn:ietf:params:oauth:token-type:jwt', 'urn:ietf:params:oauth:token-type:id_token'];
    if (!types.includes(params.subject_token_type)) {
      refuse(new errors.InvalidRequest('unsupported subject_token_type'));
    }
    let claims;
    try {
      ({ payload: claims } = await jwtVerify(params.subject_token, ciKey, {
        issuer: ciIssuer,
        audience: ciAudience,
        algorithms: ['ES256'],
        clockTolerance,
      }));
    } catch (err) {
      // Its code only: never the token (jose's messages do not quote it).
      refuse(new errors.InvalidGrant(`subject token rejected (${err.code ?? 'invalid'})`));
    }
    entry.sub = claims.sub ?? null;
    const allowed = new Set((client.scope ?? '').split(' ').filter(Boolean));
    const scopes = (params.scope ?? '').split(' ').filter(Boolean);
    if (scopes.some((s) => !allowed.has(s))) refuse(new errors.InvalidScope('requested scope is not allowed'));
    const token = new provider.AccessToken({
      client,
      accountId: claims.sub ?? 'ci',
      gty: 'token_exchange',
      scope: scopes.join(' ') || undefined,
      extra: { audience: entry.audience, resource: entry.resource },
    });
    const value = await token.save();
    entry.ok = true;
    ctx.body = {
      access_token: value,
      issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      token_type: 'Bearer',
      expires_in: token.expiration,
      ...(token.scope ? { scope: token.scope } : {}),
    };
  }, ['subject_token', 'subject_token_type', 'audience', 'resource', 'scope', 'requested_token_type', 'actor_token', 'actor_token_type'], ['audience', 'resource']);
}

// oidc-provider validates static clients lazily, on first use; load each
// now so a bad client spec fails start-up instead of a test's first request.
for (const { client_id: id } of clients) {
  try {
    if (!(await provider.Client.find(String(id)))) throw new Error('not found after registration');
  } catch (err) {
    fail(`invalid client ${JSON.stringify(id)}: ${err.error_description ?? err.message}`);
  }
}

// ------------------------------------------ grants and refresh tokens ---

// Which grants each client holds, and every refresh token issued, as
// oidc-provider's model events report them (opaque tokens: value = jti).
const grantsByClient = new Map(); // client_id -> Set(grant id)
const refreshTokens = []; // { token, client_id, grant_id, consumed, revoked }, oldest first
const refreshTokenByValue = new Map();

function noteGrant(clientId, grantId) {
  if (!clientId || !grantId) return;
  if (!grantsByClient.has(clientId)) grantsByClient.set(clientId, new Set());
  grantsByClient.get(clientId).add(grantId);
}

function noteRefreshToken(token) {
  noteGrant(token.clientId, token.grantId);
  let entry = refreshTokenByValue.get(token.jti);
  if (!entry) {
    entry = { token: token.jti, client_id: token.clientId, grant_id: token.grantId, consumed: false, revoked: false };
    refreshTokenByValue.set(token.jti, entry);
    refreshTokens.push(entry);
  }
  if (token.consumed) entry.consumed = true;
  return entry;
}

provider.on('grant.saved', (grant) => noteGrant(grant.clientId, grant.jti));
provider.on('access_token.saved', (token) => noteGrant(token.clientId, token.grantId));
provider.on('refresh_token.saved', noteRefreshToken);
provider.on('refresh_token.consumed', (token) => { noteRefreshToken(token).consumed = true; });

// Ends every grant of a client with all its tokens (the memory adapter keeps
// each grant's members together; revokeByGrantId removes them all).
async function revokeGrantsOf(clientId) {
  const ids = [...(grantsByClient.get(clientId) ?? [])];
  for (const grantId of ids) {
    await Promise.all(
      [provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode, provider.DeviceCode]
        .map((model) => model.revokeByGrantId?.(grantId)),
    );
    await provider.Grant.adapter.destroy(grantId);
  }
  grantsByClient.delete(clientId);
  for (const entry of refreshTokens) {
    if (entry.client_id === clientId) entry.revoked = true;
  }
  return ids.length;
}

const providerCallback = provider.callback();
const tokenPath = `${issuerPath}${provider.pathFor('token', { mountPath: '' })}`;
const introspectionPath = `${issuerPath}${provider.pathFor('introspection', { mountPath: '' })}`;
// (No revocation route at all when the feature is off.)
const revocationPath = config.revocation === false
  ? null
  : `${issuerPath}${provider.pathFor('revocation', { mountPath: '' })}`;

// ---------------------------------------------------------- admin state ---

const stats = {
  token_requests: 0,
  token_requests_by_grant: {},
  token_requests_by_auth: {},
  token_requests_with_dpop: 0,
  resource_nonce_demands: 0,
  introspections: 0,
  revocations: 0,
};
let faults = []; // queue of { kind, count, ... }
let delayAllMs = 0;

function resetState() {
  stats.token_requests = 0;
  stats.token_requests_by_grant = {};
  stats.token_requests_by_auth = {};
  stats.token_requests_with_dpop = 0;
  stats.resource_nonce_demands = 0;
  stats.introspections = 0;
  stats.revocations = 0;
  faults = [];
  delayAllMs = 0;
  exchanges.length = 0;
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

const BODY_LIMIT = 64 * 1024;
async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function validateFault(f) {
  if (!f || typeof f !== 'object') return 'fault must be a JSON object';
  const count = f.count ?? 1;
  if (!Number.isInteger(count) || count < 1) return 'count must be a positive integer';
  switch (f.kind) {
    case 'status':
      if (!Number.isInteger(f.status) || f.status < 100 || f.status > 599) return 'status must be an HTTP status code';
      if (f.retry_after !== undefined && !(Number.isInteger(f.retry_after) && f.retry_after >= 0)) return 'retry_after must be whole seconds';
      if (f.body !== undefined && typeof f.body !== 'string') return 'body must be a string';
      break;
    case 'delay':
      if (!Number.isInteger(f.ms) || f.ms < 0) return 'ms must be a non-negative integer';
      break;
    case 'drop':
    case 'garbage':
      break;
    default:
      return `unknown fault kind ${JSON.stringify(f.kind)} (status, delay, drop, garbage)`;
  }
  return null;
}

// Answer a token request with an injected status fault.
function answerStatus(res, f) {
  const headers = { 'cache-control': 'no-store' };
  if (f.retry_after !== undefined) headers['retry-after'] = String(f.retry_after);
  let body = f.body;
  if (body === undefined) {
    const error = f.status === 500 ? 'server_error' : 'temporarily_unavailable';
    body = JSON.stringify({ error, error_description: `injected fault (HTTP ${f.status})` });
  }
  let contentType = f.content_type;
  if (!contentType) {
    try { JSON.parse(body); contentType = 'application/json'; } catch { contentType = 'text/plain; charset=utf-8'; }
  }
  headers['content-type'] = contentType;
  headers['content-length'] = Buffer.byteLength(body);
  res.writeHead(f.status, headers);
  res.end(body);
}

// Which client authentication a token request carried (as sent, whether or
// not it turns out valid).
function authMethodOf(req, params) {
  const authz = req.headers.authorization ?? '';
  if (/^basic /i.test(authz)) return 'client_secret_basic';
  if (params.has('client_secret')) return 'client_secret_post';
  if (params.get('client_assertion_type') === 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
    // private_key_jwt or client_secret_jwt: tell them apart by the JWS alg.
    try {
      const header = JSON.parse(Buffer.from(params.get('client_assertion').split('.')[0], 'base64url'));
      return String(header.alg).startsWith('HS') ? 'client_secret_jwt' : 'private_key_jwt';
    } catch {
      return 'client_assertion';
    }
  }
  if (params.has('client_id')) return 'none';
  return 'unknown';
}

// RFC 9449 §4.3 checks of a resource request's DPoP proof, by panva's
// `jose`: signed by the key in its header, typ dpop+jwt, this method and
// URL, recent, the token's hash, and that key's thumbprint is the one the
// token is bound to; with `nonce`, it must carry that nonce (else the
// answer is 'use_dpop_nonce'). Each proof's jti is good once. Returns why
// not, or null.
const seenProofs = new Set();
async function checkDpopProof(req, token, jkt, nonce) {
  const proof = req.headers.dpop;
  if (typeof proof !== 'string') return 'no DPoP proof';
  let verified;
  try {
    verified = await jose.jwtVerify(proof, jose.EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256', 'EdDSA', 'RS256', 'PS256'] });
  } catch (err) {
    return `bad DPoP proof: ${err.code ?? err.message}`;
  }
  const { payload, protectedHeader } = verified;
  const url = new URL(req.url, origin);
  if (payload.htm !== req.method) return 'DPoP proof for another method';
  if (payload.htu !== `${origin}${url.pathname}`) return 'DPoP proof for another URL';
  if (typeof payload.iat !== 'number' || Math.abs(payload.iat - Date.now() / 1000) > 60) return 'DPoP proof too old';
  const ath = createHash('sha256').update(token).digest('base64url');
  if (payload.ath !== ath) return 'DPoP proof for another token';
  if ((await jose.calculateJwkThumbprint(protectedHeader.jwk)) !== jkt) return 'DPoP proof by another key';
  if (nonce !== undefined && payload.nonce !== nonce) return 'use_dpop_nonce';
  if (typeof payload.jti !== 'string' || seenProofs.has(payload.jti)) return 'DPoP proof replayed';
  seenProofs.add(payload.jti);
  return null;
}

// The resource's current DPoP nonce ("resource_nonce"), replaced after
// each 200 it gives a DPoP-bound token.
let resourceNonce = randomBytes(16).toString('base64url');

// Find a live access token (any grant) by its value, or undefined.
async function findAccessToken(value) {
  return (await provider.AccessToken.find(value)) ?? (await provider.ClientCredentials.find(value));
}

async function handleAdmin(req, res, path) {
  const route = `${req.method} ${path}`;
  switch (route) {
    case 'GET /__admin/stats':
      return sendJson(res, 200, { ...stats, faults_pending: faults.reduce((n, f) => n + f.count, 0) });
    case 'POST /__admin/reset':
      await readBody(req);
      resetState();
      return sendJson(res, 200, { ok: true });
    case 'POST /__admin/fault': {
      let f;
      try { f = JSON.parse(await readBody(req)); } catch { return sendJson(res, 400, { error: 'body must be JSON' }); }
      const problem = validateFault(f);
      if (problem) return sendJson(res, 400, { error: problem });
      faults.push({ ...f, count: f.count ?? 1 });
      return sendJson(res, 200, { ok: true, queued: faults.length });
    }
    case 'POST /__admin/delay_all': {
      let b;
      try { b = JSON.parse(await readBody(req)); } catch { return sendJson(res, 400, { error: 'body must be JSON' }); }
      if (!Number.isInteger(b?.ms) || b.ms < 0) return sendJson(res, 400, { error: 'ms must be a non-negative integer' });
      delayAllMs = b.ms;
      return sendJson(res, 200, { ok: true });
    }
    case 'GET /__admin/resource': {
      const deny = (why) => sendJson(res, 401, { active: false, error: why }, { 'www-authenticate': 'Bearer error="invalid_token", DPoP error="invalid_token"' });
      const m = /^(Bearer|DPoP) ([^\s]+)$/i.exec(req.headers.authorization ?? '');
      const token = m ? await findAccessToken(m[2]) : undefined;
      if (!token) return deny('no live access token');
      // A DPoP-bound token (RFC 9449 §7) is good only with the DPoP scheme
      // and a proof by the key it is bound to, for this very request.
      let next = {};
      if (token.jkt) {
        if (m[1].toLowerCase() !== 'dpop') return deny('DPoP-bound token presented as Bearer');
        const why = await checkDpopProof(req, m[2], token.jkt, config.resource_nonce ? resourceNonce : undefined);
        if (why === 'use_dpop_nonce') {
          stats.resource_nonce_demands += 1;
          return sendJson(res, 401, { active: false, error: why }, {
            'www-authenticate': 'DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"',
            'dpop-nonce': resourceNonce,
          });
        }
        if (why) return deny(why);
        if (config.resource_nonce) {
          resourceNonce = randomBytes(16).toString('base64url');
          next = { 'dpop-nonce': resourceNonce };
        }
      }
      return sendJson(res, 200, {
        active: true,
        client_id: token.clientId,
        scope: token.scope ?? '',
        exp: token.exp,
        ...(token.jkt ? { jkt: token.jkt } : {}),
        ...(token.accountId ? { sub: token.accountId } : {}),
      }, next);
    }
    case 'GET /__admin/refresh_tokens': {
      const clientId = new URL(req.url, origin).searchParams.get('client_id');
      const list = refreshTokens.filter((e) => clientId === null || e.client_id === clientId);
      return sendJson(res, 200, { refresh_tokens: list });
    }
    case 'POST /__admin/access_token_ttl': {
      let b;
      try { b = JSON.parse(await readBody(req)); } catch { return sendJson(res, 400, { error: 'body must be JSON' }); }
      if (typeof b?.client_id !== 'string' || !b.client_id) return sendJson(res, 400, { error: 'client_id must be a non-empty string' });
      if (!Number.isInteger(b.seconds) || b.seconds < 1) return sendJson(res, 400, { error: 'seconds must be a positive integer' });
      ttlByClient.set(b.client_id, b.seconds);
      return sendJson(res, 200, { ok: true });
    }
    case 'GET /__admin/exchanges':
      return sendJson(res, 200, { exchanges });
    case 'POST /__admin/revoke_grants': {
      let b;
      try { b = JSON.parse(await readBody(req)); } catch { return sendJson(res, 400, { error: 'body must be JSON' }); }
      if (typeof b?.client_id !== 'string' || !b.client_id) return sendJson(res, 400, { error: 'client_id must be a non-empty string' });
      const grants = await revokeGrantsOf(b.client_id);
      return sendJson(res, 200, { ok: true, grants });
    }
    default:
      return sendJson(res, 404, { error: `no admin route ${route}` });
  }
}

// The token endpoint, as seen through the fault layer.
async function handleToken(req, res) {
  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    return sendJson(res, 413, { error: 'invalid_request', error_description: err.message });
  }
  const params = new URLSearchParams(body);
  const grant = params.get('grant_type') ?? 'unknown';
  const auth = authMethodOf(req, params);
  stats.token_requests += 1;
  stats.token_requests_by_grant[grant] = (stats.token_requests_by_grant[grant] ?? 0) + 1;
  stats.token_requests_by_auth[auth] = (stats.token_requests_by_auth[auth] ?? 0) + 1;
  if (req.headers.dpop) stats.token_requests_with_dpop += 1;

  // Take the next fault off the queue (faults apply in the order queued).
  let fault;
  if (faults.length) {
    fault = faults[0];
    fault.count -= 1;
    if (fault.count <= 0) faults.shift();
  }

  if (delayAllMs > 0) await sleep(delayAllMs);

  switch (fault?.kind) {
    case 'status': return answerStatus(res, fault);
    case 'drop': return req.socket.destroy();
    case 'garbage': {
      const text = '<html><body>injected garbage fault: this is not JSON</body></html>';
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      return res.end(text);
    }
    case 'delay': await sleep(fault.ms); break;
    default: break;
  }
  // The stream is consumed: oidc-provider reads an already-read body from
  // req.body (it prints a one-time notice about it to stderr).
  req.body = body;
  return forward(req, res);
}

// Hand a request to oidc-provider, mounted at the issuer path the way
// express mounts apps (req.originalUrl keeps the prefix, req.url drops it).
function forward(req, res) {
  if (issuerPath) {
    req.originalUrl = req.url;
    req.url = req.url.slice(issuerPath.length) || '/';
  }
  return providerCallback(req, res);
}

server.on('request', (req, res) => {
  const path = req.url.split('?')[0];
  (async () => {
    if (path.startsWith('/__admin/')) return handleAdmin(req, res, path);
    if (req.method === 'POST' && path === tokenPath) return handleToken(req, res);
    if (req.method === 'POST' && path === introspectionPath) stats.introspections += 1;
    if (req.method === 'POST' && path === revocationPath) stats.revocations += 1;
    if (issuerPath && path !== issuerPath && !path.startsWith(`${issuerPath}/`)) {
      return sendJson(res, 404, { error: 'not_found', error_description: `outside issuer path ${issuerPath}` });
    }
    return forward(req, res);
  })().catch((err) => {
    process.stderr.write(`provider: request ${req.method} ${path} failed: ${err.stack ?? err}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});

provider.on('server_error', (_ctx, err) => process.stderr.write(`provider: server_error: ${err.stack ?? err}\n`));

// ------------------------------------------------------------- lifecycle ---

const shutdown = () => process.exit(0);
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (process.env.PROVIDER_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.resume();
}

process.stdout.write(`READY ${issuer}\n`);
