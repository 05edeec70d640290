// Connects to an mcpod endpoint protected by OAuth with the official TypeScript
// SDK's client-credentials provider: the SDK's own flow (401 → Protected
// Resource Metadata → authorization server metadata → token with a resource
// indicator → call). Prints one JSON object with what it saw.
// Usage: node oauth_client.mjs URL ISSUER CLIENT_ID CLIENT_SECRET
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ClientCredentialsProvider } from "@modelcontextprotocol/sdk/client/auth-extensions.js";

const [url, issuer, clientId, clientSecret] = process.argv.slice(2);
// The scope is given: SDK 1.32's client_credentials token request sends the
// provider's own scope, not the one mcpod's challenge or metadata names.
const provider = new ClientCredentialsProvider({ clientId, clientSecret, expectedIssuer: issuer, scope: "mcp:tools" });
const client = new Client({ name: "ts-oauth-client", version: "1.0.0" });
const out = {};
try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider: provider }));
  out.server = client.getServerVersion().name;
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const result = await client.callTool({ name: "echo", arguments: { text: "hello over oauth" } });
  out.echo = result.content.map((c) => c.text);
  const token = provider.tokens().access_token;
  out.token = token;
  out.claims = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
  await client.close();
} catch (error) {
  out.error = String(error?.message ?? error);
}
console.log(JSON.stringify(out));
