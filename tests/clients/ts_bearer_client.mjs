// The official TypeScript MCP SDK with a static bearer token (an mcpod API key),
// printing one JSON object with what it observed.
// Usage: MCPOD_BEARER=KEY node ts_bearer_client.mjs SCENARIO URL
//   call:   connect, list tools, call echo
//   denied: connect without a token (expects the 401 to surface as an error)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [scenario, url] = process.argv.slice(2);
const bearer = process.env.MCPOD_BEARER;
const requestInit = bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : {};

async function call() {
  const client = new Client({ name: "ts-bearer", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit });
  await client.connect(transport);
  const out = { sessionId: transport.sessionId, protocol: transport.protocolVersion };
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const result = await client.callTool({ name: "echo", arguments: { text: "hello with a key" } });
  out.echo = result.content.filter((c) => c.type === "text").map((c) => c.text);
  await client.close();
  return out;
}

async function denied() {
  const client = new Client({ name: "ts-no-key", version: "1.0.0" });
  try {
    await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit }));
    return { connected: true };
  } catch (error) {
    return { connected: false, error: String(error), code: error.code ?? null };
  }
}

const scenarios = { call, denied };
console.log(JSON.stringify(await scenarios[scenario]()));
process.exit(0);
