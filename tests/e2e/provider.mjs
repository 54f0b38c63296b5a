// A real OpenID Connect provider (oidc-provider, OpenID Certified) for the gateway's
// end-to-end tests: RFC 6749 client credentials and authorization code + refresh token,
// RFC 8707 resource indicators, RFC 9068 JWT access tokens, RFC 7662 introspection,
// RFC 7009 revocation, RFC 8414 / OIDC discovery, RFC 7591 dynamic client registration,
// RFC 9449 DPoP-bound tokens and RFC 8705 certificate-bound tokens.
//
// Usage: node provider.mjs            (environment below; prints one JSON line when ready)
//   E2E_KEYS_FILE   a JSON file {"keys": [private JWKs]}: the signing keys, first of an alg signs
//   E2E_SECRETS     a JSON object {client_id: client_secret} for the static clients
//   E2E_PORT        port on 127.0.0.1 (default 0: any free port)
//   E2E_TLS_CERT, E2E_TLS_KEY   optional PEM files: also listen with TLS (below)
//
// It listens on 127.0.0.1 over plain http (the gateway allows http to loopback issuers) and
// prints {"port": N, "issuer": "http://127.0.0.1:N", "tls_port": M} on stdout once it
// accepts requests. With E2E_TLS_* the same provider also listens over TLS on tls_port and
// asks every client for a certificate (RFC 8705 §2, §3): a client registered with
// tls_client_certificate_bound_access_tokens gets tokens bound to the certificate it
// presented there (cnf."x5t#S256"), read from the TLS socket itself by getCertificate.
//
// Besides the provider, a few test-only routes under /__e2e/ (never reached by the gateway):
//   GET  /__e2e/stats   {"requests": {"METHOD /path": count}} of every provider request
//   POST /__e2e/reset   zero the counters
//   PUT  /__e2e/keys    body {"keys": [...]}: rebuild the Provider with these signing keys
//   PUT  /__e2e/resources  body {indicator: {format, alg, ttl, scope}}: more resource servers
//                       (an RFC 9728 resource's identifier is known only once its gateway runs)
//   POST /__e2e/clients body: client metadata: register (or replace) a client, as dynamic
//                       registration would; the browser-login tests register their gateway's
//                       callback, post-logout and back-channel URIs once its port is known
// oidc-provider reads its keys only when a Provider is constructed, so rotating keys builds a
// new Provider behind the same listener; token storage (the in-memory adapter) is shared by
// every Provider in the process, so tokens issued before a rotation stay known.

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';

import Provider from 'oidc-provider';

// Resource servers (RFC 8707). `ttl` is the access token lifetime in seconds.
const RESOURCES = {
  'https://api.example/jwt': { format: 'jwt', alg: 'RS256', ttl: 300 },
  'https://api.example/jwt-es256': { format: 'jwt', alg: 'ES256', ttl: 300 },
  'https://api.example/opaque': { format: 'opaque', ttl: 300 },
  'https://api.example/short': { format: 'jwt', alg: 'RS256', ttl: 1 },
  'https://api.example/short-opaque': { format: 'opaque', ttl: 1 },
  // Resources the gateway does not serve: their tokens must be refused (audience).
  'https://other.example/jwt': { format: 'jwt', alg: 'RS256', ttl: 300 },
  'https://other.example/opaque': { format: 'opaque', ttl: 300 },
};
const RESOURCE_SCOPE = 'orders:read orders:write';
const SCOPES = ['openid', 'offline_access', 'email', 'profile', 'orders:read', 'orders:write',
  'mcp:tools'];
// The only client allowed to introspect other clients' tokens.
const INTROSPECTING_CLIENT = 'gateway';
// The authorization code client's redirect URI is never followed: the test stops at it.
const REDIRECT_URI = 'https://client.example/callback';

function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

function clients(secrets) {
  const service = {
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
  return [
    { ...service, client_id: 'service', client_secret: secrets.service, scope: RESOURCE_SCOPE },
    {
      ...service,
      client_id: 'service-limited',
      client_secret: secrets['service-limited'],
      scope: 'orders:read',
    },
    {
      ...service,
      client_id: INTROSPECTING_CLIENT,
      client_secret: secrets[INTROSPECTING_CLIENT],
      grant_types: [],
    },
    {
      // RFC 8705 §3: its access tokens are bound to the certificate of the TLS connection.
      ...service,
      client_id: 'mtls-service',
      client_secret: secrets['mtls-service'],
      scope: RESOURCE_SCOPE,
      tls_client_certificate_bound_access_tokens: true,
    },
    {
      client_id: 'app',
      client_secret: secrets.app,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [REDIRECT_URI],
      scope: `openid offline_access ${RESOURCE_SCOPE}`,
    },
  ];
}

function resourceServerInfo(_ctx, indicator) {
  const resource = RESOURCES[indicator];
  if (!resource) {
    throw new Provider.errors.InvalidTarget();
  }
  const info = {
    audience: indicator,
    scope: resource.scope ?? RESOURCE_SCOPE,
    accessTokenTTL: resource.ttl,
    accessTokenFormat: resource.format,
  };
  if (resource.format === 'jwt') {
    info.jwt = { sign: { alg: resource.alg } };
  }
  return info;
}

// Clients whose id starts with this get access tokens this short (the refresh tests).
const SHORT_LIVED_CLIENT_PREFIX = 'short-';
const SHORT_ACCESS_TTL = 3;

function tokenTTL(_ctx, token) {
  if (token.clientId?.startsWith(SHORT_LIVED_CLIENT_PREFIX) && !token.resourceServer) {
    return SHORT_ACCESS_TTL;
  }
  return token.resourceServer?.accessTokenTTL ?? 300;
}

function buildProvider(issuer, jwks, secrets) {
  const provider = new Provider(issuer, {
    clients: clients(secrets),
    jwks,
    cookies: { keys: ['e2e-cookie-signing-key-not-a-secret'] },
    scopes: SCOPES,
    claims: { email: ['email', 'email_verified'], profile: ['name'] },
    // Scope claims in the ID token too (the gateway's identity headers come from it).
    conformIdTokenClaims: false,
    findAccount: (_ctx, sub) => ({
      accountId: sub,
      claims: () => ({ sub, email: `${sub}@example.com`, email_verified: true, name: sub }),
    }),
    // Every refresh rotates the refresh token, and a rotated-out one presented again revokes
    // the grant (RFC 9700 §4.14.2): the race the gateway's single-flight refresh must avoid.
    rotateRefreshToken: () => true,
    // Back-channel logout tokens go to the test gateways, on loopback, which oidc-provider's
    // outgoing-request guard (no special-use addresses) refuses: a test-only provider drops
    // that guard.
    fetch: (url, options) => {
      const { dispatcher: _guard, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: true },
      // RFC 9449: DPoP-bound access tokens (JWT cnf.jkt; introspection cnf.jkt and
      // token_type DPoP) for a client that sends a proof to the token endpoint.
      dPoP: { enabled: true },
      // RFC 8705 §3: certificate-bound access tokens. The certificate is the one the client
      // presented in the TLS handshake of the TLS listener (none over plain http).
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate: (ctx) => {
          const raw = ctx.socket.getPeerCertificate?.()?.raw;
          return raw ? new X509Certificate(raw) : undefined;
        },
      },
      // RFC 7591 open registration: MCP clients register themselves (MCP authorization spec).
      registration: { enabled: true },
      introspection: {
        enabled: true,
        // Resource servers introspect tokens issued to other clients; a client may always
        // introspect its own tokens.
        allowedPolicy: (ctx, client, token) => client.clientId === INTROSPECTING_CLIENT
          || client.clientId === token.clientId,
      },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        getResourceServerInfo: resourceServerInfo,
        useGrantedResource: () => true,
      },
    },
    ttl: {
      AccessToken: tokenTTL,
      ClientCredentials: tokenTTL,
      AuthorizationCode: 60,
      RefreshToken: 3600,
      Grant: 3600,
      Interaction: 600,
      Session: 3600,
      IdToken: 300,
    },
  });
  return provider;
}

const requests = new Map();

function countRequest(req) {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  const key = `${req.method} ${path}`;
  requests.set(key, (requests.get(key) ?? 0) + 1);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function testRoute(req, res, state) {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  if (req.method === 'GET' && path === '/__e2e/stats') {
    return reply(res, 200, { requests: Object.fromEntries(requests) });
  }
  if (req.method === 'POST' && path === '/__e2e/reset') {
    requests.clear();
    return reply(res, 200, {});
  }
  if (req.method === 'PUT' && path === '/__e2e/resources') {
    Object.assign(RESOURCES, JSON.parse(await readBody(req)));
    return reply(res, 200, { resources: Object.keys(RESOURCES) });
  }
  if (req.method === 'PUT' && path === '/__e2e/keys') {
    const jwks = JSON.parse(await readBody(req));
    state.provider = buildProvider(state.issuer, jwks, state.secrets);
    state.handle = state.provider.callback();
    return reply(res, 200, { kids: jwks.keys.map((key) => key.kid) });
  }
  if (req.method === 'POST' && path === '/__e2e/clients') {
    const metadata = JSON.parse(await readBody(req));
    await state.provider.Client.adapter.upsert(metadata.client_id, metadata);
    // Validated as the provider validates registrations; an error says what is wrong.
    const client = await state.provider.Client.find(metadata.client_id);
    return reply(res, 200, { client_id: client.clientId });
  }
  return reply(res, 404, { error: 'unknown test route' });
}

async function main() {
  const secrets = JSON.parse(process.env.E2E_SECRETS ?? '{}');
  const jwks = readJson(process.env.E2E_KEYS_FILE);
  const state = { issuer: '', secrets, provider: null, handle: null };
  const listener = (req, res) => {
    if (req.url.startsWith('/__e2e/')) {
      testRoute(req, res, state).catch((error) => reply(res, 500, { error: String(error) }));
      return;
    }
    countRequest(req);
    state.handle(req, res);
  };
  const server = createServer(listener);
  await new Promise((resolve) => server.listen(Number(process.env.E2E_PORT ?? 0), '127.0.0.1', resolve));
  const { port } = server.address();
  let tlsPort = null;
  if (process.env.E2E_TLS_CERT) {
    // requestCert: ask every client for a certificate; rejectUnauthorized false: the
    // certificate binds tokens (RFC 8705 §3), it does not authenticate the client here.
    const tls = createTlsServer({
      cert: readFileSync(process.env.E2E_TLS_CERT),
      key: readFileSync(process.env.E2E_TLS_KEY),
      requestCert: true,
      rejectUnauthorized: false,
    }, listener);
    await new Promise((resolve) => tls.listen(0, '127.0.0.1', resolve));
    tlsPort = tls.address().port;
  }
  // The issuer is known only once the port is: the Provider is built after listen, and no
  // request reaches it before the ready line below is printed.
  state.issuer = `http://127.0.0.1:${port}`;
  state.provider = buildProvider(state.issuer, jwks, secrets);
  state.handle = state.provider.callback();
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
  process.stdout.write(`${JSON.stringify({ port, issuer: state.issuer, tls_port: tlsPort })}\n`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
