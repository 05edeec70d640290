// A real OAuth 2.1 authorization server for the tests: npm `oidc-provider`
// with the client_credentials grant and resource indicators (RFC 8707), issuing
// JWT access tokens whose `aud` is the requested resource.
// Usage: node oauth_server.mjs [PORT]   (0 or none: any free port)
// Prints one JSON line once it listens: {"issuer": URL, "kid": KID}.
// Every start makes a new RSA signing key (a new kid): restarting it on the
// same port is a key rotation.
//
// Clients: `mcp-agent` / `agent-secret` (scopes mcp:tools mcp:read) and
// `mcp-reader` / `reader-secret` (scope mcp:read).
// One test-only endpoint besides oidc-provider's: POST /test/expired?aud=URL
// answers a token signed with the current key whose `exp` is an hour past
// (oidc-provider will not issue one).
import { createServer } from "node:http";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.argv[2] ?? 0);
const server = createServer();
await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const kid = randomUUID();
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "mcp-agent",
      client_secret: "agent-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      scope: "mcp:tools mcp:read",
    },
    {
      client_id: "mcp-reader",
      client_secret: "reader-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      scope: "mcp:read",
    },
  ],
  jwks: { keys: [jwk] },
  scopes: ["mcp:tools", "mcp:read"],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A token is for one resource, named by the client (no default).
      defaultResource: () => undefined,
      getResourceServerInfo: async (_ctx, resource) => ({
        scope: "mcp:tools mcp:read",
        audience: resource,
        accessTokenFormat: "jwt",
        accessTokenTTL: 300,
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
});

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

function expiredToken(aud) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: issuer, sub: "mcp-agent", aud, iat: now - 7200, exp: now - 3600, scope: "mcp:tools", jti: randomUUID() };
  const input = `${b64url({ alg: "RS256", typ: "at+jwt", kid })}.${b64url(claims)}`;
  return `${input}.${sign("sha256", Buffer.from(input), privateKey).toString("base64url")}`;
}

const callback = provider.callback();
server.on("request", (req, res) => {
  const url = new URL(req.url, issuer);
  if (req.method === "POST" && url.pathname === "/test/expired") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ access_token: expiredToken(url.searchParams.get("aud")) }));
    return;
  }
  callback(req, res);
});

console.log(JSON.stringify({ issuer, kid }));
