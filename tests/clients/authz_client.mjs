// Two subjects through the official TypeScript MCP SDK, each with its own API
// key (Authorization: Bearer), printing one JSON object with what each saw.
// Usage: node authz_client.mjs URL ALICE_KEY BOB_KEY
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, aliceKey, bobKey] = process.argv.slice(2);
const texts = (result) => result.content.filter((c) => c.type === "text").map((c) => c.text);

async function connect(name, key) {
  const client = new Client({ name, version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
  });
  await client.connect(transport);
  return client;
}

async function refusal(promise) {
  try {
    await promise;
    return { refused: false };
  } catch (error) {
    return { refused: true, code: error.code, message: error.message };
  }
}

const out = {};
const alice = await connect("alice", aliceKey);
const bob = await connect("bob", bobKey);
out.aliceTools = (await alice.listTools()).tools.map((t) => t.name).sort();
out.bobTools = (await bob.listTools()).tools.map((t) => t.name).sort();
out.bobEcho = texts(await bob.callTool({ name: "echo", arguments: { message: "top-secret-argument" } }));
const forbidden = out.aliceTools.find((name) => !out.bobTools.includes(name));
out.forbiddenTool = forbidden;
out.bobForbidden = await refusal(bob.callTool({ name: forbidden, arguments: {} }));
out.bobMissing = await refusal(bob.callTool({ name: "no-such-tool", arguments: {} }));
out.aliceAllowed = await refusal(alice.callTool({ name: forbidden, arguments: {} }));
await alice.close();
await bob.close();
console.log(JSON.stringify(out));
