// Drives mcpod with the official TypeScript MCP SDK, printing one JSON object
// with what it observed. Usage: node ts_client.mjs SCENARIO URL
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  ResourceUpdatedNotificationSchema,
  ToolListChangedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { writeFileSync } from "node:fs";

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

// The aggregated endpoint /mcp as a session: a member's sampling and
// elicitation requests reach this client, progress and a cancellation, a
// resource subscription's updates, and list_changed when a member is added
// (the manifest in MCPOD_NEW_MANIFEST is written to MCPOD_NEW_MANIFEST_PATH).
async function aggregateSession() {
  const client = newClient("ts-aggregate-session");
  client.registerCapabilities({ elicitation: {} });
  const elicited = [];
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    elicited.push(request.params.message);
    return { action: "decline" };
  });
  let onUpdated;
  const updated = new Promise((resolve) => (onUpdated = resolve));
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => onUpdated(n.params.uri));
  let onListChanged = () => {};
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => onListChanged(true));
  await client.connect(new StreamableHTTPClientTransport(new URL(url)));
  const within = (promise, ms, what) =>
    Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms))]);
  const out = {};
  out.sampling = texts(
    await client.callTool({ name: "everything__trigger-sampling-request", arguments: { prompt: "hi", maxTokens: 10 } }),
  );
  out.elicitation = texts(await client.callTool({ name: "everything__trigger-elicitation-request", arguments: {} }));
  out.elicited = elicited.length;
  const progress = [];
  await client.callTool(
    { name: "everything__trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push(p.progress) },
  );
  out.progress = progress;
  // Cancelled after its first progress notification: the call ends at once.
  const abort = new AbortController();
  const began = Date.now();
  out.cancelled = await client
    .callTool(
      { name: "everything__trigger-long-running-operation", arguments: { duration: 60, steps: 60 } },
      undefined,
      { signal: abort.signal, onprogress: () => abort.abort("enough") },
    )
    .then(() => false, () => true);
  out.cancelledWithinMs = Date.now() - began;
  out.echoAfterCancel = texts(await client.callTool({ name: "everything__echo", arguments: { message: "still here" } }));
  const uri = (await client.listResources()).resources[0].uri;
  await client.subscribeResource({ uri });
  await client.callTool({ name: "everything__toggle-subscriber-updates", arguments: {} });
  out.subscribed = uri;
  out.updated = await within(updated, 30000, "resource update");
  await client.callTool({ name: "everything__toggle-subscriber-updates", arguments: {} });
  // Only a list_changed after the manifest is written counts (a member's
  // catalog, recorded when it first ran, sends one too).
  const listChanged = new Promise((resolve) => (onListChanged = resolve));
  writeFileSync(process.env.MCPOD_NEW_MANIFEST_PATH, process.env.MCPOD_NEW_MANIFEST);
  out.listChanged = await within(listChanged, 30000, "tools/list_changed");
  out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  await client.close();
  return out;
}

const scenarios = {
  everything,
  concurrent,
  legacy,
  "concurrent-sampling": concurrentSampling,
  "aggregate-call": aggregateCall,
  "aggregate-session": aggregateSession,
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
