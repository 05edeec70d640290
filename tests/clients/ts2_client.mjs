// Drives mcpod with the official TypeScript SDK v2 (`@modelcontextprotocol/client`) in its
// 'auto' version negotiation, which speaks protocol 2026-07-28 when the server does.
// Prints one JSON object with what it observed. Usage: node ts2_client.mjs SCENARIO URL
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const [, url] = process.argv.slice(2);
const texts = (result) => result.content.filter((c) => c.type === "text").map((c) => c.text);

const client = new Client(
  { name: "ts2-client", version: "1.0.0" },
  { capabilities: { sampling: {} }, versionNegotiation: { mode: "auto" } },
);
client.setRequestHandler("sampling/createMessage", async () => ({
  role: "assistant",
  model: "mcpod-test-model",
  content: { type: "text", text: "sampled by ts2" },
  stopReason: "endTurn",
}));
const updates = [];
let updated;
const firstUpdate = new Promise((resolve) => (updated = resolve));
client.setNotificationHandler("notifications/resources/updated", (n) => {
  updates.push(n.params.uri);
  updated();
});

const out = {};
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
out.protocol = client.getNegotiatedProtocolVersion();
out.server = client.getServerVersion()?.name;
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
out.echo = texts(await client.callTool({ name: "echo", arguments: { message: "hello from ts2" } }));
const progress = [];
await client.callTool(
  { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
  { onprogress: (p) => progress.push(p.progress) },
);
out.progress = progress;
out.sampling = texts(
  await client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "hi", maxTokens: 10 } }),
).join("");
const uri = (await client.listResources()).resources[0].uri;
const subscription = await client.listen({ resourceSubscriptions: [uri] });
out.honored = subscription.honoredFilter;
await client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
let timer;
const deadline = new Promise((_, fail) => (timer = setTimeout(() => fail(new Error("no update in 20 s")), 20000)));
await Promise.race([firstUpdate, deadline]);
clearTimeout(timer);
await client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
out.updated = updates[0];
out.uri = uri;
await subscription.close();
out.closed = await subscription.closed;
await client.close();
console.log(JSON.stringify(out));
