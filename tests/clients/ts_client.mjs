// Drives mcpod with the official TypeScript MCP SDK, printing one JSON object
// with what it observed. Usage: node ts_client.mjs SCENARIO URL
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { CreateMessageRequestSchema, ListRootsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [scenario, url] = process.argv.slice(2);
const texts = (result) => result.content.filter((c) => c.type === "text").map((c) => c.text);

function newClient(name) {
  const client = new Client({ name, version: "1.0.0" }, { capabilities: { roots: { listChanged: true }, sampling: {} } });
  client.setRequestHandler(ListRootsRequestSchema, async () => ({ roots: [{ uri: `file:///workspace/${name}`, name }] }));
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => ({
    role: "assistant",
    model: "mcpod-test-model",
    content: { type: "text", text: `sampled by ${name}` },
    stopReason: "endTurn",
  }));
  return client;
}

async function everything() {
  const out = {};
  const client = newClient("ts-client");
  const transport = new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  out.sessionId = transport.sessionId;
  out.server = client.getServerVersion().name;
  out.protocol = transport.protocolVersion;
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  out.echo = texts(await client.callTool({ name: "echo", arguments: { message: "hello from ts" } }));
  const resources = (await client.listResources()).resources;
  out.resource = (await client.readResource({ uri: resources[0].uri })).contents.length;
  out.prompt = (await client.getPrompt({ name: "simple-prompt" })).messages.length;
  const progress = [];
  await client.callTool(
    { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push(p.progress) },
  );
  out.progress = progress;
  out.sampling = texts(await client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "hi", maxTokens: 10 } }));
  out.roots = texts(await client.callTool({ name: "get-roots-list", arguments: {} }));
  // Ending the session: DELETE, after which the id is refused with 404.
  await transport.terminateSession();
  const after = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-session-id": out.sessionId,
      "mcp-protocol-version": out.protocol,
    },
    body: JSON.stringify({ jsonrpc: "2.0", id: 99, method: "tools/list" }),
  });
  out.afterDelete = after.status;
  await client.close();
  return out;
}

async function concurrent() {
  // Both clients number their requests from 0: ids collide on purpose.
  const clients = await Promise.all(
    ["a", "b", "c"].map(async (name) => {
      const client = newClient(`ts-${name}`);
      await client.connect(new StreamableHTTPClientTransport(new URL(url)));
      return { name, client };
    }),
  );
  const calls = [];
  for (const { name, client } of clients) {
    for (let i = 0; i < 10; i++) {
      calls.push(
        client.callTool({ name: "echo", arguments: { message: `${name}-${i}` } }).then((r) => ({ want: `Echo: ${name}-${i}`, got: texts(r)[0] })),
      );
    }
  }
  const results = await Promise.all(calls);
  await Promise.all(clients.map(({ client }) => client.close()));
  return { total: results.length, mismatched: results.filter((r) => r.want !== r.got) };
}

// Several sessions of one shared server call a sampling tool at the same
// moment: each must be asked only its own question and get its own answer.
async function concurrentSampling() {
  const names = ["s1", "s2", "s3", "s4", "s5", "s6"];
  const asked = Object.fromEntries(names.map((n) => [n, []]));
  const clients = await Promise.all(
    names.map(async (name) => {
      const client = new Client({ name, version: "1.0.0" }, { capabilities: { sampling: {} } });
      client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
        asked[name].push(JSON.stringify(request.params.messages));
        return { role: "assistant", model: "m", content: { type: "text", text: `answer for ${name}` }, stopReason: "endTurn" };
      });
      await client.connect(new StreamableHTTPClientTransport(new URL(url)));
      return { name, client };
    }),
  );
  const results = await Promise.all(
    clients.map(({ name, client }) =>
      client
        .callTool({ name: "trigger-sampling-request", arguments: { prompt: `question of ${name}`, maxTokens: 5 } })
        .then((r) => ({ name, text: JSON.stringify(r) })),
    ),
  );
  await Promise.all(clients.map(({ client }) => client.close()));
  const foreign = (name, text) => names.some((other) => other !== name && text.includes(`of ${other}`) || text.includes(`for ${other}"`) && other !== name);
  return {
    total: results.length,
    askedCounts: names.map((n) => asked[n].length),
    wrongQuestions: names.flatMap((n) => asked[n].filter((q) => !q.includes(`question of ${n}`)).map((q) => ({ n, q }))),
    wrongAnswers: results.filter((r) => !r.text.includes(`answer for ${r.name}`) || foreign(r.name, r.text)),
  };
}

async function legacy() {
  const client = newClient("ts-legacy");
  await client.connect(new SSEClientTransport(new URL(url)));
  const out = { server: client.getServerVersion().name };
  out.echo = texts(await client.callTool({ name: "echo", arguments: { message: "over legacy sse" } }));
  await client.close();
  return out;
}

// The aggregated endpoint /mcp: list the namespaced union, call one member's tool.
async function aggregateCall() {
  const client = newClient("ts-aggregate");
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const out = { server: client.getServerVersion().name };
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  out.time = texts(await client.callTool({ name: "time__get_current_time", arguments: { timezone: "Asia/Tokyo" } }));
  await client.close();
  return out;
}

const scenarios = {
  everything,
  concurrent,
  legacy,
  "concurrent-sampling": concurrentSampling,
  "aggregate-call": aggregateCall,
};
scenarios[scenario]()
  .then((out) => {
    console.log(JSON.stringify(out));
    process.exit(0);
  })
  .catch((error) => {
    console.error(error);
    process.exit(1);
  });
