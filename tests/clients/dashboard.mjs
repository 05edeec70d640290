// Drives mcpod's dashboard (GET /) in real headless Chromium (Debian's
// `chromium`) through puppeteer-core, for tests/dashboard.rs. Prints one JSON
// line: what the page showed, and every console error and failed request.
//
//   node dashboard.mjs lifecycle URL SERVER OTHER_SERVER [SCREENSHOT_DIR]
//   node dashboard.mjs auth URL API_KEY SERVER [SCREENSHOT_DIR]
import puppeteer from "puppeteer-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const [scenario, url, ...args] = process.argv.slice(2);

const problems = []; // console errors, page errors, failed requests
const seen = []; // every status a server's card showed, in order

async function open() {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container has no user namespace for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warn") {
      problems.push(`console ${message.type()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("requestfailed", (request) =>
    problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`));
  return { browser, page };
}

/// The status word a server's card shows ("Running", "Stopped", …).
async function statusOf(page, server) {
  return page.$eval(`li[data-server="${server}"] .status`, (node) => node.textContent.replace(/^\W+\s*/, ""));
}

async function waitForStatus(page, server, word, timeout = 60000) {
  await page.waitForFunction(
    (server, word) => {
      const node = document.querySelector(`li[data-server="${server}"] .status`);
      return node && node.textContent.includes(word);
    },
    { timeout, polling: 100 },
    server,
    word,
  );
  seen.push(word);
}

async function figure(page, server, name) {
  return page.$eval(`li[data-server="${server}"] [data-figure="${name}"]`, (node) => node.textContent);
}

async function mcp(server, message) {
  const response = await fetch(`${url}/mcp/${server}`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", ...message }),
  });
  return response.json();
}

async function lifecycle(server, other, screenshots) {
  const { browser, page } = await open();
  const result = {};
  try {
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForSelector(`li[data-server="${server}"]`);
    await page.waitForSelector(`li[data-server="${other}"]`);
    result.servers = await page.$$eval("li[data-server]", (nodes) => nodes.map((n) => n.dataset.server));
    result.before = await statusOf(page, server);
    result.title = await page.title();

    // An MCP request starts the server; the page shows it running, counting down.
    const answer = await mcp(server, { id: 1, method: "tools/call", params: { name: "echo", arguments: { text: "hi" } } });
    result.answer = answer.result?.content?.[0]?.text;
    await mcp(server, { id: 2, method: "tools/list" });
    await mcp(server, { id: 3, method: "tools/call", params: { name: "no-such-tool" } });
    await waitForStatus(page, server, "Running");
    result.countdown = await page.$eval(`li[data-server="${server}"] .countdown`, (n) => n.textContent);
    await page.waitForFunction(
      (server) => document.querySelector(`li[data-server="${server}"] [data-figure="hour"]`)?.textContent === "3",
      { timeout: 10000 },
      server,
    );
    result.requestsLastHour = await figure(page, server, "hour");
    result.errorRate = await figure(page, server, "errorRate");
    result.p95 = await figure(page, server, "p95");
    result.coldStarts = await figure(page, server, "coldStarts");

    // The log pane opens from the keyboard and shows the server's lines.
    await page.focus(`li[data-server="${server}"] details summary`);
    await page.keyboard.press("Enter");
    await page.waitForFunction(
      (server) => /running/.test(document.querySelector(`li[data-server="${server}"] details pre`)?.textContent || ""),
      { timeout: 10000 },
      server,
    );
    result.log = await page.$eval(`li[data-server="${server}"] details pre`, (n) => n.textContent);
    if (screenshots) await page.screenshot({ path: `${screenshots}/dashboard.png`, fullPage: true });

    // Left alone, it stops after its idle timeout, and the page shows that.
    await waitForStatus(page, server, "Stopped");
    result.idleMessage = await page.$eval(`li[data-server="${server}"] .message`, (n) => n.textContent);

    // Start from the keyboard, then stop with a click.
    await page.focus(`li[data-server="${server}"] button[data-action="start"]`);
    await page.keyboard.press("Enter");
    await waitForStatus(page, server, "Running");
    await page.waitForFunction(
      (server) => !document.querySelector(`li[data-server="${server}"] button[data-action="stop"]`).disabled,
      {},
      server,
    );
    await page.click(`li[data-server="${server}"] button[data-action="stop"]`);
    await waitForStatus(page, server, "Stopped");
    result.stopOutcome = await page.$eval(`li[data-server="${server}"] .outcome`, (n) => n.textContent);
    result.stopMessage = await page.$eval(`li[data-server="${server}"] .message`, (n) => n.textContent);
  } finally {
    result.seen = seen;
    result.problems = problems;
    await browser.close();
  }
  return result;
}

async function auth(key, server) {
  const { browser, page } = await open();
  const result = {};
  try {
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#login:not([hidden])");
    if (args[2]) await page.screenshot({ path: `${args[2]}/dashboard-login.png` });
    result.cardsBeforeKey = await page.$$eval("li[data-server]", (nodes) => nodes.length);
    // Wrong key first: refused, the form stays.
    await page.type("#token", "not-a-key");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("not accepted"));
    result.wrongKey = await page.$eval("#login-error", (n) => n.textContent);
    await page.type("#token", key);
    await page.keyboard.press("Enter");
    await page.waitForSelector(`li[data-server="${server}"]`);
    result.status = await statusOf(page, server);
    result.stored = await page.evaluate(() => sessionStorage.getItem("mcpod.apiKey") !== null);
    // The key also works for the controls.
    await page.click(`li[data-server="${server}"] button[data-action="start"]`);
    await waitForStatus(page, server, "Running");
  } finally {
    result.problems = problems;
    await browser.close();
  }
  return result;
}

let result;
if (scenario === "lifecycle") result = await lifecycle(args[0], args[1], args[2]);
else if (scenario === "auth") result = await auth(args[0], args[1]);
else throw new Error(`no scenario ${scenario}`);
console.log(JSON.stringify(result));
