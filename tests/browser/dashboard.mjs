// The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against the scheduler and runner tests/tests/dashboard.rs started. Pushes are signed webhooks
// sent from here, so the pages are watched as they change. Screenshots of every page go to
// $SHOTS. Exits non-zero on the first failed check.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import net from "node:net";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env("BASE");
const ADMIN = env("ADMIN_TOKEN");
const VIEWER = env("VIEWER_TOKEN");
const APP = env("APP");
const REPO = env("REPO_URL");
const SECRET = env("SECRET");
const [GOOD1, GOOD2, FAILING, SLOW] = env("SHAS").split(",");
const SHOTS = env("SHOTS");
const figures = {};

function log(...args) {
  console.log("[dashboard]", ...args);
}

/** A signed GitHub push of `sha` to main. */
async function push(sha) {
  const body = JSON.stringify({
    ref: "refs/heads/main", before: "0000000000000000000000000000000000000000", after: sha,
    created: false, deleted: false, forced: false,
    repository: { full_name: "test/repo", clone_url: REPO, html_url: REPO },
    pusher: { name: "test" }, commits: [],
  });
  const signature = "sha256=" + crypto.createHmac("sha256", SECRET).update(body).digest("hex");
  const response = await fetch(`${BASE}/api/v1/webhooks/github`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-github-event": "push", "x-github-delivery": crypto.randomUUID(), "x-hub-signature-256": signature },
    body,
  });
  const text = await response.text();
  assert.equal(response.status, 202, text);
  const answer = JSON.parse(text);
  return answer.deployments[0].deployment_id;
}

async function apiGet(path) {
  const response = await fetch(`${BASE}${path}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(response.status, 200, path);
  return response.json();
}

async function until(what, check, timeout = 120_000) {
  const started = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() - started > timeout) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const finished = (id) =>
  until(`deployment ${id} to end`, async () => {
    const d = await apiGet(`/api/v1/deployments/${id}`);
    return ["completed", "failed", "cancelled"].includes(d.state) ? d : null;
  }, 180_000);

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

// The browser reaches the scheduler through a TCP proxy of this script's, which can cut every
// connection at once, as a network drop would.
const sockets = new Set();
const upstream = new URL(BASE);
const proxy = net.createServer((client) => {
  const server = net.connect(Number(upstream.port), upstream.hostname);
  for (const [a, b] of [[client, server], [server, client]]) {
    sockets.add(a);
    a.pipe(b);
    a.on("error", () => b.destroy());
    a.on("close", () => {
      sockets.delete(a);
      b.destroy();
    });
  }
});
await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
const UI = `http://127.0.0.1:${proxy.address().port}`;
const cutConnections = () => sockets.forEach((s) => s.destroy());

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  // The refusals the checks ask for, and what the cut connections say.
  const expected = /status of (401|403|409)|ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET/;
  page.on("console", (msg) => msg.type() === "error" && !expected.test(msg.text()) && problems.push(`console: ${msg.text()}`));
  page.on("response", (r) => r.status() === 404 && problems.push(`404: ${r.url()}`));

  // Sign in: a wrong token is refused; the right one is kept in an HttpOnly, SameSite=Strict
  // cookie, never in the page's storage.
  await page.goto(UI);
  await page.getByLabel("API token").waitFor();
  await shot(page, "01-sign-in");
  await page.getByLabel("API token").fill("slw_wrong-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "invalid token" }).waitFor();
  await page.getByLabel("API token").fill(ADMIN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Apps" }).waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "slipway_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
  assert.ok(!stored.includes(ADMIN), "the token is not in the page's storage or readable cookies");
  const response = await page.goto(UI);
  const csp = response.headers()["content-security-policy"];
  assert.ok(csp && csp.includes("script-src 'self'") && !csp.includes("unsafe-inline"), csp);
  await page.getByRole("heading", { name: "Apps" }).waitFor();

  // A push appears on the apps page by itself, and its logs stream to the end.
  await page.getByRole("link", { name: APP }).waitFor();
  const pushedAt = Date.now();
  const first = await push(GOOD1);
  await page.locator(`a[href="#/deployments/${first}"]`).waitFor({ timeout: 10_000 });
  figures.push_to_apps_page_ms = Date.now() - pushedAt;
  log(`the push showed on the apps page after ${figures.push_to_apps_page_ms} ms`);
  assert.ok(figures.push_to_apps_page_ms < 2000, `a push shows at once (the change events), not by polling: ${figures.push_to_apps_page_ms} ms`);
  await page.locator(`a[href="#/deployments/${first}"]`).click();
  await page.getByText("The deployment ended: completed.").waitFor({ timeout: 180_000 });
  const log1 = page.getByRole("log", { name: "Deployment log" });
  await log1.getByText("<script>window.__xss=1</script>", { exact: false }).first().waitFor();
  assert.equal(await page.evaluate(() => window.__xss), undefined, "a <script> in a log line is inert");
  assert.equal(await log1.locator("script").count(), 0, "no script element in the log");
  assert.ok((await log1.locator("span.ansi-32").count()) > 0, "ANSI green is rendered as a class");
  assert.ok(!(await log1.textContent()).includes("\x1b["), "no raw escape sequences");
  for (const step of ["clone", "build", "push", "deploy"]) {
    await page.getByRole("list", { name: "Steps" }).getByText(step, { exact: true }).waitFor();
  }
  await shot(page, "02-deployment-completed");

  // Search within the log; a link per line.
  await page.getByLabel("Search the log").fill("green build-ok");
  await page.getByText(/^1 of \d+ lines match$/).waitFor();
  await page.getByLabel("Search the log").fill("");
  const lineLink = log1.locator(".ln a").first();
  const href = await lineLink.getAttribute("href");
  await lineLink.click();
  await page.waitForURL((url) => url.hash === href);
  await log1.locator(".ln.target").waitFor();

  // Time to first render of a deployment page, in a fresh page of the signed-in context.
  const fresh = await context.newPage();
  const started = Date.now();
  await fresh.goto(`${UI}/#/deployments/${first}`);
  await fresh.getByRole("heading", { name: new RegExp(APP) }).waitFor();
  figures.deployment_page_first_render_ms = Date.now() - started;
  await fresh.getByRole("log").locator(".ln").first().waitFor();
  figures.deployment_page_first_log_line_ms = Date.now() - started;
  await fresh.close();

  // A second release, then the rollback button (with a confirmation) rolls back to the first.
  const second = await push(GOOD2);
  assert.equal((await finished(second)).state, "completed");
  await page.goto(`${UI}/#/apps/${APP}`);
  const rollback = page.getByRole("button", { name: `Roll back ${APP} to v1` });
  await rollback.waitFor();
  await shot(page, "03-app");
  await rollback.focus();
  await page.keyboard.press("Enter"); // keyboard reachable
  const dialog = page.getByRole("dialog");
  await dialog.getByText("Roll back to v1?").waitFor();
  await dialog.getByRole("button", { name: "Cancel" }).click();
  await rollback.click();
  await dialog.getByRole("button", { name: "Roll back" }).click();
  await page.waitForURL((url) => url.hash.startsWith("#/deployments/") && !url.hash.includes(second));
  await page.getByText("The deployment ended: completed.").waitFor({ timeout: 180_000 });
  const rolledBackTo = await apiGet(`/api/v1/deployments/${page.url().split("/").pop()}`);
  assert.equal(rolledBackTo.source, "rollback");
  assert.equal(rolledBackTo.sha, GOOD1);
  await shot(page, "04-rollback");

  // A failed build: the failed step and its cause are shown, in words and not by colour alone.
  const failing = await push(FAILING);
  await page.goto(`${UI}/#/deployments/${failing}`);
  await page.getByRole("alert").filter({ hasText: "Failed at build" }).waitFor({ timeout: 180_000 });
  await page.getByRole("alert").filter({ hasText: "user error" }).waitFor();
  await page.locator(".timeline li.failed").getByText("failed", { exact: true }).waitFor();
  await shot(page, "05-failed");

  // A dropped connection: the log resumes where it was, without a repeat or a gap.
  const slow = await push(SLOW);
  await page.goto(`${UI}/#/deployments/${slow}`);
  const slowLog = page.getByRole("log", { name: "Deployment log" });
  await slowLog.getByText("tick-3", { exact: false }).first().waitFor({ timeout: 120_000 });
  cutConnections();
  await page.getByText("Connection lost; resuming…").waitFor();
  await slowLog.getByText("tick-30", { exact: false }).first().waitFor({ timeout: 60_000 });
  await page.getByText("Following the log live.").waitFor();
  const ids = await slowLog.locator(".ln").evaluateAll((rows) => rows.map((r) => r.id));
  assert.equal(new Set(ids).size, ids.length, "no line twice");
  const seqs = ids.map((id) => Number(id.split(".")[1]));
  seqs.forEach((seq, i) => assert.equal(seq, i + 1, `line ${i + 1} is there, in order: ${ids.join(" ")}`));
  const ticks = await slowLog.locator(".ln .text").evaluateAll((rows) => rows.map((r) => r.textContent).filter((t) => /^tick-\d+$/.test(t)));
  ticks.forEach((t, i) => assert.equal(t, `tick-${i + 1}`));
  await shot(page, "06a-resumed");

  // The cancel button stops a running build.
  await page.locator(".timeline li").filter({ hasText: "build" }).getByText("running").waitFor({ timeout: 120_000 });
  await page.getByRole("button", { name: "Cancel deployment" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Cancel deployment" }).click();
  await page.getByText("The deployment ended: cancelled.").waitFor({ timeout: 120_000 });
  assert.equal((await apiGet(`/api/v1/deployments/${slow}`)).cancel_by !== null, true);
  await shot(page, "06-cancelled");

  // The queue and the runners.
  await page.getByRole("link", { name: "Queue" }).click();
  await page.getByText(/waiting; \d+ of \d+ runner slots busy/).waitFor();
  await shot(page, "07-queue");
  await page.getByRole("link", { name: "Runners" }).click();
  await page.getByText("runner-1").waitFor();
  await shot(page, "08-runners");

  // A phone's width: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${UI}/#/apps/${APP}`);
  await page.getByRole("heading", { name: "Releases" }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the app page is ${overflow}px wider than a 390px screen`);
  await shot(page, "09-app-390px");
  await page.goto(`${UI}/#/deployments/${first}`);
  await page.getByText("The deployment ended: completed.").waitFor();
  await shot(page, "10-deployment-390px");

  // A viewer sees everything and no action; the API refuses a change made with the cookie but
  // without the CSRF header, as another site's form would send it.
  const viewer = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const vpage = await viewer.newPage();
  await vpage.goto(UI);
  await vpage.getByLabel("API token").fill(VIEWER);
  await vpage.getByRole("button", { name: "Sign in" }).click();
  await vpage.goto(`${UI}/#/apps/${APP}`);
  await vpage.getByRole("heading", { name: "Releases" }).waitFor();
  await vpage.getByText("v1", { exact: true }).first().waitFor();
  assert.equal(await vpage.getByRole("button", { name: /Roll back/ }).count(), 0, "no rollback button for a viewer");
  await shot(vpage, "11-viewer-app");
  const forged = await context.request.post(`${UI}/api/v1/apps/${APP}/rollback`, { data: {} });
  assert.equal(forged.status(), 403, "a cookie change without the CSRF header");
  await viewer.close();

  // Sign out forgets the session.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API token").waitFor();
  const after = await context.request.get(`${UI}/api/v1/whoami`);
  assert.equal(after.status(), 401);

  // What the browser is sent: every file of the dashboard, gzip-compressed.
  let shipped = 0;
  for (const path of ["/", "/assets/app.js", "/assets/app.css"]) {
    const r = await fetch(`${BASE}${path}`, { headers: { "accept-encoding": "gzip" } });
    assert.equal(r.headers.get("content-encoding"), "gzip", path);
    shipped += Number(r.headers.get("content-length"));
  }
  figures.dashboard_bytes_gzip = shipped;

  assert.deepEqual(problems, [], "no script errors");
  console.log(JSON.stringify({ figures }));
} finally {
  await browser.close();
  proxy.close();
  cutConnections();
}
