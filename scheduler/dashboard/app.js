// Slipway's dashboard: plain modern JavaScript, no build step, no dependency. Every string that
// comes from the API (a commit, a log line, an app's name) reaches the page as text through
// `el`, never as HTML. The API token lives in an HttpOnly cookie the page cannot read.
"use strict";

const main = document.getElementById("main");
let me = null; // whoami: {name, role, app}
let page = null; // the current page's cleanup

/** An element with attributes (`on*` are listeners) and children (strings become text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Only http(s) addresses become links. */
function safeUrl(url) {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

function link(url, text) {
  const href = safeUrl(url || "");
  return href ? el("a", { href, rel: "noopener noreferrer", target: "_blank" }, text || url) : text || url || "—";
}

function state(value) {
  const text = String(value || "unknown");
  return el("span", { class: `state state-${text.replace(/[^a-z_]/g, "")}` }, text);
}

const short = (sha) => (sha ? String(sha).slice(0, 12) : "—");
const when = (ts) => (ts ? new Date(ts).toLocaleString() : "—");

function duration(from, to) {
  if (!from) return "";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  if (!(ms >= 0)) return "";
  const s = Math.round(ms / 100) / 10;
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API with the session cookie; a change carries the CSRF header. */
async function api(method, path, body) {
  const options = { method, headers: { accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    options.headers["content-type"] = "application/json";
    options.headers["x-slipway-csrf"] = "1";
    options.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => null);
  if (response.status === 401 && me && path !== "/api/v1/session") {
    // The session ended (signed out elsewhere, token revoked): back to the sign-in.
    me = null;
    render();
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  return data;
}

/** Whether the signed-in token may act on `app`. */
function canAct(app) {
  return me && (me.role === "deployer" || me.role === "admin") && (!me.app || me.app === app);
}

/** Asks in a dialog; resolves true when confirmed. */
function confirmDialog(title, text, confirmLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = confirmLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

let poke = null; // refreshes the current page now
let changes = null; // the server's "something changed" events

/** Runs `refresh` now, whenever the server says something changed, and every five seconds. */
function every(refresh) {
  let stopped = false;
  let timer = null;
  let running = false;
  let again = false;
  const tick = async () => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    try {
      await refresh();
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 403)) {
        setMain(el("h1", {}, err.status === 404 ? "Not found" : "Not allowed"), el("p", {}, err.message));
        stopped = true;
      } else if (!(err instanceof ApiError && err.status === 401)) {
        console.warn(err);
      }
    }
    running = false;
    if (stopped) return;
    if (again) {
      again = false;
      tick();
    } else {
      timer = setTimeout(tick, 5000);
    }
  };
  poke = tick;
  tick();
  return () => {
    stopped = true;
    if (poke === tick) poke = null;
    clearTimeout(timer);
  };
}

/** Listens for changes once signed in; EventSource reconnects by itself. */
function listen() {
  if (changes) return;
  changes = new EventSource("/api/v1/events");
  changes.addEventListener("change", () => poke && poke());
  changes.addEventListener("open", () => poke && poke());
}

function unlisten() {
  if (changes) changes.close();
  changes = null;
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      { class: "stack" },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        rows.map((cells) => el("tr", {}, cells.map((c, i) => el("td", { "data-label": headers[i] }, c)))),
      ),
    ),
  );
}

/** Replaces what `holder` shows; absent children (null, false) are left out. */
function swap(holder, ...children) {
  holder.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function setMain(...children) {
  swap(main, ...children);
}

// ---------------------------------------------------------------------------------------------
// Sign-in

function loginPage(message) {
  const input = el("input", { id: "token", type: "password", name: "token", autocomplete: "off", required: true });
  const error = el("p", { class: "error", role: "alert" }, message || "");
  const form = el(
    "form",
    {
      class: "login",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          me = await api("POST", "/api/v1/session", { token: input.value.trim() });
          input.value = "";
          render();
        } catch (err) {
          error.textContent = err.message;
        }
      },
    },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "With an API token (slipway tokens create). It is kept in a cookie this page cannot read."),
    el("label", { for: "token" }, "API token"),
    input,
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Sign in")),
    error,
  );
  setMain(form);
  input.focus();
}

async function signOut() {
  await api("DELETE", "/api/v1/session").catch(() => null);
  unlisten();
  me = null;
  render();
}

// ---------------------------------------------------------------------------------------------
// Apps

function appsPage() {
  const holder = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  setMain(el("h1", {}, "Apps"), holder);
  return every(async () => {
    const [apps, deployments] = await Promise.all([api("GET", "/api/v1/apps"), api("GET", "/api/v1/deployments?limit=500")]);
    const releases = await Promise.all(
      apps.map((a) => api("GET", `/api/v1/apps/${encodeURIComponent(a.name)}/releases`).catch(() => [])),
    );
    const rows = apps.map((a, i) => {
      const last = deployments.find((d) => d.app === a.name);
      const live = releases[i].find((r) => r.live);
      return [
        el("a", { href: `#/apps/${encodeURIComponent(a.name)}` }, a.name),
        link(a.url, a.url || "not deployed"),
        live ? `v${live.version} (${short(live.sha)})` : "—",
        last ? el("span", {}, state(last.state), " ", el("a", { href: `#/deployments/${last.id}` }, when(last.created_at))) : "—",
        a.branch,
      ];
    });
    swap(holder, table(["App", "Address", "Release", "Last deployment", "Branch"], rows, "No apps yet (slipway apps create)."));
  });
}

function appPage(name) {
  const head = el("div", {});
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const status = el("p", { role: "status", class: "muted" });
  setMain(el("h1", {}, name), head, status, body);
  return every(async () => {
    const path = `/api/v1/apps/${encodeURIComponent(name)}`;
    const [app, releases, deployments] = await Promise.all([
      api("GET", path),
      api("GET", `${path}/releases`),
      api("GET", `/api/v1/deployments?app=${encodeURIComponent(name)}&limit=50`),
    ]);
    swap(
      head,
      el(
        "dl",
        { class: "facts" },
        el("dt", {}, "Address"),
        el("dd", {}, link(app.url, app.url || "not deployed")),
        el("dt", {}, "Repository"),
        el("dd", { class: "mono" }, app.repo_url),
        el("dt", {}, "Branch"),
        el("dd", {}, app.branch),
        el("dt", {}, "Environment"),
        el("dd", {}, `${app.environment} on ${app.target}`),
      ),
    );
    const variables = Object.keys(app.env || {}).sort().map((k) => [
      el("span", { class: "mono" }, k),
      (app.secrets || []).includes(k) ? "secret (hidden)" : "plain",
    ]);
    const liveIndex = releases.findIndex((r) => r.live);
    const releaseRows = releases.map((r, i) => {
      const earlier = liveIndex >= 0 && i > liveIndex && r.state === "completed";
      const action =
        r.live ? el("strong", {}, "live")
        : earlier && canAct(name) ? el("button", {
            type: "button",
            class: "danger",
            "aria-label": `Roll back ${name} to v${r.version}`,
            onclick: async () => {
              const ok = await confirmDialog(
                `Roll back to v${r.version}?`,
                `${name} will serve v${r.version} (${short(r.sha)}) again, image and configuration together.`,
                "Roll back",
              );
              if (!ok) return;
              try {
                const answer = await api("POST", `${path}/rollback`, { to: `v${r.version}` });
                location.hash = `#/deployments/${answer.deployment_id}`;
              } catch (err) {
                status.textContent = `Rollback refused: ${err.message}`;
              }
            },
          }, `Roll back to v${r.version}`)
        : "";
      return [`v${r.version}`, el("span", { class: "mono" }, short(r.sha)), r.reason, state(r.state), when(r.created_at), action];
    });
    const deploymentRows = deployments.map((d) => [
      el("a", { href: `#/deployments/${d.id}` }, short(d.id.replaceAll("-", "").slice(-12))),
      el("span", { class: "mono" }, short(d.sha)),
      d.environment,
      d.source,
      state(d.state),
      when(d.created_at),
    ]);
    swap(
      body,
      el("h2", {}, "Deployments"),
      table(["Deployment", "Commit", "Environment", "Source", "State", "Created"], deploymentRows, "No deployments yet."),
      el("h2", {}, "Releases"),
      table(["Release", "Commit", "Why", "State", "Created", "Action"], releaseRows, "No releases yet."),
      el("h2", {}, "Environment variables"),
      table(["Name", "Value"], variables, "None."),
    );
  });
}

// ---------------------------------------------------------------------------------------------
// A deployment: timeline, live log

const ANSI = /\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[A-Za-z]|\x1b/g;

/** A log line as spans: SGR colours and bold become classes; other escapes are dropped. */
function ansi(text) {
  const out = [];
  let classes = [];
  let at = 0;
  const push = (s) => {
    if (s) out.push(classes.length ? el("span", { class: classes.join(" ") }, s) : document.createTextNode(s));
  };
  for (const m of text.matchAll(ANSI)) {
    push(text.slice(at, m.index));
    at = m.index + m[0].length;
    if (m[1] === undefined) continue;
    for (const code of (m[1] || "0").split(";").map(Number)) {
      if (code === 0) classes = [];
      else if (code === 1) classes = [...classes.filter((c) => c !== "ansi-bold"), "ansi-bold"];
      else if (code === 22) classes = classes.filter((c) => c !== "ansi-bold");
      else if (code === 39) classes = classes.filter((c) => !/^ansi-\d/.test(c));
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) {
        classes = [...classes.filter((c) => !/^ansi-\d/.test(c)), `ansi-${code}`];
      }
    }
  }
  push(text.slice(at));
  return out;
}

const plain = (text) => text.replace(ANSI, "");

function deploymentPage(id, focusLine) {
  const head = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const status = el("p", { role: "status", class: "muted conn" });
  const search = el("input", { id: "log-search", type: "search", placeholder: "text in the log" });
  const counter = el("span", { class: "muted", "aria-live": "polite" });
  const log = el("div", { class: "log", role: "log", "aria-label": "Deployment log", tabindex: "0" });
  setMain(
    head,
    el("h2", {}, "Log"),
    el("div", { class: "searchbar" }, el("div", {}, el("label", { for: "log-search" }, "Search the log"), search), counter),
    status,
    log,
  );
  const seen = new Set();
  let lines = 0;
  let last = null; // the row of a line that continues (`more`)
  const matches = (row) => !search.value || row.dataset.text.toLowerCase().includes(search.value.toLowerCase());
  const applySearch = () => {
    let shown = 0;
    for (const row of log.children) {
      const hit = matches(row);
      row.classList.toggle("hidden", !hit);
      if (hit) shown++;
    }
    counter.textContent = search.value ? `${shown} of ${lines} lines match` : `${lines} lines`;
  };
  search.addEventListener("input", applySearch);

  const events = new EventSource(`/api/v1/deployments/${encodeURIComponent(id)}/logs`);
  events.addEventListener("open", () => (status.textContent = "Following the log live."));
  events.addEventListener("error", () => {
    if (events.readyState !== EventSource.CLOSED) status.textContent = "Connection lost; resuming…";
  });
  events.addEventListener("log", (event) => {
    if (seen.has(event.lastEventId)) return; // resumed: never twice
    seen.add(event.lastEventId);
    const line = JSON.parse(event.data);
    if (last) {
      last.dataset.text += line.line;
      last.querySelector(".text").append(...ansi(line.line));
    } else {
      const anchor = `L${line.attempt}.${line.seq}`;
      const row = el(
        "div",
        { class: "ln", id: anchor },
        el("a", { href: `#/deployments/${id}/${anchor}`, "aria-label": `Link to line ${line.attempt}.${line.seq}` }, `${line.seq}`),
        el("span", { class: "step" }, line.step || ""),
        el("span", { class: "text" }, ansi(line.line)),
      );
      row.dataset.text = plain(line.line);
      log.append(row);
      lines++;
      if (!matches(row)) row.classList.add("hidden");
      if (focusLine === anchor) {
        row.classList.add("target");
        row.scrollIntoView({ block: "center" });
      }
      last = line.more ? row : null;
      if (line.more) last.dataset.text = plain(line.line);
    }
    if (!search.value) counter.textContent = `${lines} lines`;
    if (!focusLine) log.scrollTop = log.scrollHeight;
  });
  events.addEventListener("end", (event) => {
    const end = JSON.parse(event.data);
    status.textContent = `The deployment ended: ${end.state}.`;
    events.close();
  });

  const stop = every(async () => {
    const d = await api("GET", `/api/v1/deployments/${encodeURIComponent(id)}`);
    const attempt = d.attempt;
    const steps = (d.steps || []).filter((s) => s.attempt === attempt);
    const running = d.state === "queued" || d.state === "running";
    const cancel =
      running && canAct(d.app)
        ? el("button", {
            type: "button",
            class: "danger",
            onclick: async () => {
              const ok = await confirmDialog("Cancel this deployment?", `${d.app} ${short(d.sha)}: the current step stops.`, "Cancel deployment");
              if (!ok) return;
              try {
                await api("POST", `/api/v1/deployments/${encodeURIComponent(id)}/cancel`, { reason: "cancelled from the dashboard" });
              } catch (err) {
                status.textContent = `Cancel refused: ${err.message}`;
              }
            },
          }, "Cancel deployment")
        : null;
    const failure =
      d.state === "failed" || d.error_step
        ? el(
            "div",
            { class: "alert", role: "alert" },
            el("strong", {}, `Failed at ${d.error_step || "?"}`),
            ` (${d.error_cause === "user" ? "user error" : d.error_cause === "infrastructure" ? "infrastructure" : d.error_cause || "unknown cause"})`,
            d.rolled_back ? " — the previous version was put back and serves" : "",
            el("p", { class: "mono" }, d.error_message || ""),
          )
        : null;
    swap(
      head,
      el("h1", {}, el("a", { href: `#/apps/${encodeURIComponent(d.app)}` }, d.app), ` ${short(d.sha)} `, state(d.state)),
      el(
        "dl",
        { class: "facts" },
        el("dt", {}, "Deployment"),
        el("dd", { class: "mono" }, d.id),
        el("dt", {}, "Environment"),
        el("dd", {}, d.environment),
        el("dt", {}, "Source"),
        el("dd", {}, `${d.source}${d.created_by ? ` by ${d.created_by}` : ""}`),
        el("dt", {}, "Ref"),
        el("dd", { class: "mono" }, d.git_ref || "—"),
        el("dt", {}, "Attempt"),
        el("dd", {}, String(d.attempt)),
        el("dt", {}, "Address"),
        el("dd", {}, link(d.url, d.url || "—")),
        d.cancel_reason ? [el("dt", {}, "Cancelled"), el("dd", {}, `${d.cancel_by || ""}: ${d.cancel_reason}`)] : null,
      ),
      failure,
      el("h2", {}, "Steps"),
      steps.length
        ? el(
            "ol",
            { class: "timeline", "aria-label": "Steps" },
            steps.map((s) =>
              el(
                "li",
                { class: s.status === "failed" ? "failed" : "" },
                el("span", { class: "name" }, s.step),
                state(s.status),
                " ",
                el("span", { class: "dur" }, duration(s.started_at, s.finished_at)),
                s.error ? el("div", { class: "mono" }, s.error) : null,
              ),
            ),
          )
        : el("p", { class: "muted" }, "No step has started yet."),
      cancel ? el("div", { class: "actions" }, cancel) : null,
    );
    if (!running) stop();
  });
  return () => {
    events.close();
    stop();
  };
}

// ---------------------------------------------------------------------------------------------
// Queue and runners

function reason(r) {
  switch (r.kind) {
    case "waiting_for_runner":
      return `waiting for a runner (${r.slots_busy} of ${r.slots} slots busy)`;
    case "no_runner":
      return "no runner is online";
    case "held_behind":
      return el("span", {}, "held behind ", el("a", { href: `#/deployments/${r.deployment_id}` }, `a ${r.state} deployment`));
    case "backing_off":
      return `backing off until ${when(r.until)} (attempt ${r.attempt})`;
    case "unpublished":
      return r.broker_down_since ? `not published: RabbitMQ unreachable since ${when(r.broker_down_since)}` : "being published";
    default:
      return r.kind;
  }
}

function queuePage() {
  const summary = el("p", {});
  const holder = el("div", {});
  setMain(el("h1", {}, "Queue"), summary, holder);
  return every(async () => {
    const q = await api("GET", "/api/v1/queue");
    const s = q.summary;
    summary.textContent = `${s.depth} waiting; ${s.slots_busy} of ${s.slots} runner slots busy; ${s.runners_online} runners online` +
      (s.oldest_wait_seconds ? `; the oldest has waited ${Math.round(s.oldest_wait_seconds)} s` : "");
    const rows = q.entries.map((e) => [
      String(e.position),
      el("a", { href: `#/deployments/${e.deployment_id}` }, e.app),
      e.environment,
      el("span", { class: "mono" }, short(e.sha)),
      `${Math.round(e.wait_seconds)} s`,
      reason(e.reason),
    ]);
    swap(holder, table(["#", "App", "Environment", "Commit", "Waiting", "Why"], rows, "Nothing is waiting."));
  });
}

function runnersPage() {
  const holder = el("div", {});
  setMain(el("h1", {}, "Runners"), holder);
  return every(async () => {
    const runners = await api("GET", "/api/v1/runners");
    const rows = runners.map((r) => [
      el("span", { class: "mono" }, r.id),
      state(r.state),
      `${r.jobs.length} of ${r.slots}`,
      el("span", {}, r.jobs.map((j, i) => [i ? ", " : "", el("a", { href: `#/deployments/${j}` }, short(j.replaceAll("-", "").slice(-12)))])),
      r.host,
      r.version,
      when(r.last_seen_at),
    ]);
    swap(holder, table(["Runner", "State", "Slots used", "Jobs", "Host", "Version", "Last seen"], rows, "No runner has reported yet."));
  });
}

// ---------------------------------------------------------------------------------------------
// Routing

function header() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.hidden = !me;
  who.replaceChildren();
  if (me) {
    who.append(
      el("span", {}, `${me.name} (${me.role}${me.app ? ` of ${me.app}` : ""})`),
      el("button", { type: "button", onclick: signOut }, "Sign out"),
    );
  }
  const section = (location.hash.split("/")[1] || "apps").replace("deployments", "apps");
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === `#/${section}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function render() {
  if (page) page();
  page = null;
  if (!me) {
    try {
      me = await api("GET", "/api/v1/whoami");
    } catch {
      unlisten();
      header();
      loginPage();
      return;
    }
  }
  listen();
  header();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  switch (parts[0]) {
    case "apps":
      page = parts[1] ? appPage(parts[1]) : appsPage();
      break;
    case "deployments":
      page = deploymentPage(parts[1], parts[2]);
      break;
    case "queue":
      page = queuePage();
      break;
    case "runners":
      page = runnersPage();
      break;
    default:
      location.hash = "#/apps";
      return;
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", render);
render();
