// The durable console's page: every figure and action is a DurableControl call, made
// through the console process (POST /api/<Method> with the request message as protobuf
// JSON; GET /api/WatchWorkflow streams server-sent events). No framework, no build step.
"use strict";

const STATUSES = ["PENDING", "SCHEDULED", "RUNNING", "SUSPENDED", "BACKING_OFF", "PAUSED",
  "COMPLETED", "FAILED", "CANCELLED"];
const ENDED = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const PAGE_SIZE = 25;
let watching = null;  // AbortController of the live WatchWorkflow stream
let pageTokens = [""];  // tokens of the pages seen, for "previous"

// -- calls ------------------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json", "X-Durable-Console": "1" };
  const token = sessionStorage.getItem("durable-token");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

class RpcError extends Error {
  constructor(body) {
    super(body.message || "request failed");
    this.code = body.code || "UNKNOWN";
    this.reason = body.reason || "";
  }
}

async function api(method, body) {
  const response = await fetch("/api/" + method, {
    method: "POST", headers: headers(), body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({ code: "UNAVAILABLE",
    message: "the console did not answer with JSON (HTTP " + response.status + ")" }));
  if (!response.ok) throw new RpcError(data);
  return data;
}

function showError(err) {
  const box = document.getElementById("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  const reason = err.reason && err.reason !== err.code ? " [" + err.reason + "]" : "";
  box.textContent = (err.code ? err.code + ": " : "") + err.message + reason;
  box.hidden = false;
}

// -- small helpers ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const short = (value, prefix) => (value || "").replace(prefix, "");
const status = (s) => short(s, "INVOCATION_STATUS_") || "UNSPECIFIED";
const kind = (k) => short(k, "STEP_KIND_").toLowerCase();
const badge = (s) => el("span", { class: "status " + status(s), "data-status": status(s) }, status(s));
const when = (t) => (t ? new Date(t).toLocaleString() : "");
const ms = (a, b) => (a && b ? Math.max(0, new Date(b) - new Date(a)) : null);

function duration(millis) {
  if (millis === null || millis === undefined) return "";
  if (millis < 1000) return millis.toFixed(0) + " ms";
  if (millis < 120000) return (millis / 1000).toFixed(2) + " s";
  return (millis / 60000).toFixed(1) + " min";
}

function payload(p) {
  if (!p) return "";
  if ("json" in p) return JSON.stringify(p.json);
  if (p.data) return "(" + (p.contentType || "bytes") + ", " + atob(p.data).length + " bytes)";
  return "null";
}

function hashParams() {
  const [, query] = location.hash.split("?");
  return new URLSearchParams(query || "");
}

// -- the list ---------------------------------------------------------------------------

async function renderList(main) {
  const params = hashParams();
  const filters = el("form", { class: "filters", id: "filters" },
    el("label", {}, "Status", el("select", { name: "status" },
      el("option", { value: "" }, "any"),
      STATUSES.map((s) => el("option", { value: s, selected: params.get("status") === s }, s)))),
    el("label", {}, "Service", el("input", { name: "service", value: params.get("service") || "", placeholder: "any", size: 12 })),
    el("label", {}, "Handler", el("input", { name: "handler", value: params.get("handler") || "", placeholder: "service/handler", size: 18 })),
    el("label", {}, "Key", el("input", { name: "key", value: params.get("key") || "", size: 12 })),
    el("label", {}, "Created from", el("input", { name: "from", type: "datetime-local", value: params.get("from") || "" })),
    el("label", {}, "Created before", el("input", { name: "to", type: "datetime-local", value: params.get("to") || "" })),
    el("button", { type: "submit", class: "primary" }, "Filter"),
    el("button", { type: "button", onclick: () => { location.hash = "#/"; } }, "Clear"));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(filters)) if (v) q.set(k, v);
    pageTokens = [""];
    location.hash = "#/?" + q.toString();
  });
  const overview = el("section", { id: "overview" }, el("p", { class: "muted" }, "Counting…"));
  const listing = el("section", { id: "listing" });
  main.replaceChildren(el("h2", {}, "Overview"), overview, el("h2", {}, "Invocations"), filters, listing);
  await Promise.all([renderStats(overview), renderPage(listing, params)]);
}

async function renderStats(box) {
  let stats;
  try { stats = await api("Stats", {}); } catch (err) { showError(err); box.replaceChildren(); return; }
  const count = (list, name) => Number((list || []).find((c) => status(c.status) === name)?.count || 0);
  const chips = el("div", { class: "chips", id: "status-counts" },
    el("span", { class: "chip" }, "all", el("b", {}, stats.total || 0)),
    STATUSES.map((s) => el("a", { class: "chip", href: "#/?status=" + s, "data-status": s },
      s.toLowerCase(), el("b", {}, count(stats.byStatus, s)))));
  const rows = (stats.byService || []).map((svc) => el("tr", {},
    el("td", {}, el("a", { href: "#/?service=" + encodeURIComponent(svc.service) }, svc.service)),
    el("td", { class: "num" }, svc.total || 0),
    el("td", { class: "num backlog" }, count(svc.byStatus, "PENDING") + count(svc.byStatus, "BACKING_OFF")),
    el("td", { class: "num" }, count(svc.byStatus, "RUNNING")),
    el("td", { class: "num" }, count(svc.byStatus, "SUSPENDED")),
    el("td", { class: "num" }, count(svc.byStatus, "FAILED")),
    el("td", { class: "num" }, svc.liveWorkers || 0),
    el("td", {}, svc.noWorkerSince ? "none since " + when(svc.noWorkerSince) : "")));
  box.replaceChildren(chips, el("table", { id: "services" },
    el("thead", {}, el("tr", {}, ["service", "total", "backlog", "running", "suspended", "failed",
      "live workers", ""].map((h, i) => el("th", { class: i && i < 7 ? "num" : "" }, h)))),
    el("tbody", {}, rows)));
}

async function renderPage(box, params) {
  const request = { pageSize: PAGE_SIZE, pageToken: params.get("page") || "" };
  if (params.get("status")) request.statuses = ["INVOCATION_STATUS_" + params.get("status")];
  for (const f of ["service", "handler", "key"]) if (params.get(f)) request[f] = params.get(f);
  if (params.get("from")) request.createdAfter = new Date(params.get("from")).toISOString();
  if (params.get("to")) request.createdBefore = new Date(params.get("to")).toISOString();
  let page;
  try { page = await api("ListWorkflows", request); } catch (err) { showError(err); box.replaceChildren(); return; }
  const invocations = page.invocations || [];
  const rows = invocations.map((s) => el("tr", {
    class: "row", "data-id": s.invocationId,
    onclick: () => { location.hash = "#/invocation/" + s.invocationId; },
  },
    el("td", { class: "mono" }, el("a", { href: "#/invocation/" + s.invocationId }, s.invocationId)),
    el("td", {}, s.handler), el("td", {}, s.key || ""), el("td", {}, badge(s.status)),
    el("td", { class: "num" }, s.attempt || 0), el("td", {}, when(s.createdAt)),
    el("td", {}, when(s.endedAt || s.updatedAt))));
  const go = (token) => {
    const q = hashParams();
    if (token) q.set("page", token); else q.delete("page");
    location.hash = "#/?" + q.toString();
  };
  const here = params.get("page") || "";
  const at = pageTokens.indexOf(here);
  const pager = el("div", { class: "pager" },
    el("span", { id: "total" }, invocations.length + " shown of " + (page.totalSize || 0) + " matching"),
    el("button", { disabled: !here, onclick: () => go(at > 0 ? pageTokens[at - 1] : "") }, "Previous"),
    el("button", { id: "next-page", disabled: !page.nextPageToken, onclick: () => {
      if (!pageTokens.includes(page.nextPageToken)) pageTokens.push(page.nextPageToken);
      go(page.nextPageToken);
    } }, "Next"));
  box.replaceChildren(pager, el("table", { id: "invocations" },
    el("thead", {}, el("tr", {}, ["id", "handler", "key", "status", "attempt", "created", "updated"]
      .map((h) => el("th", { class: h === "attempt" ? "num" : "" }, h)))),
    el("tbody", {}, rows)),
    invocations.length ? "" : el("p", { class: "muted" }, "No invocation matches."));
}

// -- one invocation ---------------------------------------------------------------------

async function renderInvocation(main, id) {
  let view;
  try { view = await api("GetWorkflow", { invocationId: id }); } catch (err) {
    showError(err);
    main.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← invocations")));
    return;
  }
  const box = el("section", { id: "invocation" });
  main.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← invocations")), box);
  drawInvocation(box, view.invocation, view.journal || [], false);
  if (!ENDED.has(status(view.invocation.status))) watch(box, id, view.journal || []);
}

function drawInvocation(box, inv, journal, live) {
  const st = status(inv.status);
  const facts = [
    ["id", el("span", { class: "mono" }, inv.invocationId)], ["handler", inv.handler],
    ["key", inv.key], ["status", el("span", {}, badge(inv.status),
      live ? el("span", { class: "live", id: "live" }, "  ● live") : "")],
    ["reason", inv.statusReason], ["attempt", inv.attempt],
    ["created", when(inv.createdAt)], ["started", when(inv.startedAt)], ["ended", when(inv.endedAt)],
    ["scheduled for", when(inv.scheduledAt)], ["next attempt at", when(inv.nextAttemptAt)],
    ["caller", inv.callerId ? el("a", { href: "#/invocation/" + inv.callerId }, inv.callerId) : ""],
    ["version", inv.version], ["input", payload(inv.input)],
    ["result", inv.result ? (inv.result.failure ? failureText(inv.result.failure) : payload(inv.result.value)) : ""],
    ["last failure", inv.lastFailure ? failureText(inv.lastFailure) : ""],
    ["no worker since", when(inv.noWorkerSince)],
  ].filter(([, v]) => v !== "" && v !== undefined && v !== null && v !== 0);
  const dl = el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
  box.replaceChildren(
    el("h2", {}, inv.handler + " ", badge(inv.status)), dl,
    actions(inv, st), waits(inv), timeline(inv, journal), stateLink(inv));
}

function failureText(f) {
  return (f.errorType ? f.errorType + ": " : "") + (f.message || "");
}

function act(label, method, body, question, cls) {
  return el("button", { class: cls || "", "data-action": method, onclick: async () => {
    if (!confirm(question)) return;
    try {
      await api(method, body());
      showError(null);
      route();
    } catch (err) { showError(err); }
  } }, label);
}

function actions(inv, st) {
  const id = inv.invocationId;
  const ended = ENDED.has(st);
  const row = el("div", { class: "actions" });
  if (!ended && st !== "PAUSED") row.append(act("Pause", "Pause", () => ({ invocationId: id, reason: "paused from the console" }), "Pause " + id + "?"));
  if (st === "PAUSED" || inv.pauseRequested) row.append(act("Resume", "Resume", () => ({ invocationId: id }), "Resume " + id + "?"));
  if (!ended) {
    row.append(act("Cancel", "Cancel", () => ({ invocationId: id, reason: "cancelled from the console" }), "Cancel " + id + "? Its handler sees a CancelledError and may compensate.", "danger"));
    row.append(act("Kill", "Kill", () => ({ invocationId: id, reason: "killed from the console" }), "Kill " + id + "? It ends CANCELLED at once, without running any more code.", "danger"));
  }
  return row;
}

function waits(inv) {
  const targets = inv.waitingFor || [];
  if (!targets.length) return "";
  const box = el("section", { id: "waits" }, el("h3", {}, "Waiting for"));
  for (const t of targets) {
    const k = short(t.kind, "WAIT_KIND_").toLowerCase();
    const what = k === "timer" ? "a timer due " + when(t.dueAt)
      : k === "awakeable" ? "awakeable " + t.awakeableId
      : k === "call" ? "call " + (t.invocationId || "")
      : k === "promise" ? "promise " + t.promise : k;
    box.append(el("div", { class: "notice", "data-wait": k }, "step #" + (t.stepIndex || 0) + ": " + what));
    if (k === "awakeable") box.append(resolveForm("Resolve awakeable", "ResolveAwakeable",
      (value) => ({ awakeableId: t.awakeableId, value: { json: value } })));
    if (k === "promise") box.append(resolveForm("Resolve promise " + t.promise, "ResolvePromise",
      (value) => ({ handler: inv.handler, key: inv.key, promise: t.promise, value: { json: value } })));
  }
  return box;
}

function resolveForm(label, method, body) {
  const input = el("input", { name: "value", value: "true", size: 30, "aria-label": "value (JSON)" });
  const form = el("form", { class: "inline", "data-resolve": method },
    el("label", {}, "Value (JSON)", input), el("button", { type: "submit", class: "primary" }, label));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let value;
    try { value = JSON.parse(input.value); } catch (err) {
      showError({ code: "INVALID_ARGUMENT", message: "the value is not JSON: " + err.message });
      return;
    }
    if (!confirm(label + " with " + input.value + "?")) return;
    try { await api(method, body(value)); showError(null); route(); } catch (err) { showError(err); }
  });
  return form;
}

function timeline(inv, journal) {
  const box = el("section", { id: "timeline" }, el("h3", {}, "Timeline"));
  const byAttempt = new Map();
  for (const e of journal) {
    const a = e.attempt || 1;
    if (!byAttempt.has(a)) byAttempt.set(a, []);
    byAttempt.get(a).push(e);
  }
  const last = Math.max(inv.attempt || 1, ...byAttempt.keys());
  const longest = Math.max(1, ...journal.map((e) => ms(e.startedAt, e.recordedAt) || 0));
  for (let a = 1; a <= last; a++) {
    const entries = byAttempt.get(a) || [];
    const section = el("div", { class: "attempt", "data-attempt": a }, el("h3", {}, "Attempt " + a));
    const running = a === last && status(inv.status) === "RUNNING";
    if (!entries.length) section.append(el("p", { class: "muted" }, running ? "nothing journaled yet" : "no new step journaled"));
    else section.append(el("table", { class: "steps" },
      el("thead", {}, el("tr", {}, ["#", "kind", "name", "took", "", "outcome", "journaled"].map((h) => el("th", {}, h)))),
      el("tbody", {}, entries.map((e) => stepRow(e, longest)))));
    box.append(section);
  }
  if (inv.lastFailure && !ENDED.has(status(inv.status))) {
    box.append(el("div", { class: "notice step-failed", id: "retry" }, "attempt failed: " + failureText(inv.lastFailure) +
      (inv.nextAttemptAt ? "; retrying at " + when(inv.nextAttemptAt) : "")));
  }
  if (inv.currentStep && status(inv.status) === "RUNNING") {
    box.append(el("div", { class: "notice current", id: "current-step" }, "running now: step #" + (inv.currentStep.index || 0) + " " + kind(inv.currentStep.kind) + " " + (inv.currentStep.name || "")));
  }
  return box;
}

function stepRow(e, longest) {
  const took = ms(e.startedAt, e.recordedAt);
  const failed = e.result && e.result.failure;
  const outcome = failed ? failureText(e.result.failure) : (e.summary || (e.result ? payload(e.result.value) : ""));
  const name = e.awaited ? "waited for #" + (e.awaited.index || 0) + " " + kind(e.awaited.kind) + (e.awaited.name && e.awaited.name !== kind(e.awaited.kind) ? " " + e.awaited.name : "") : (e.name || "");
  return el("tr", { class: "step" + (failed ? " step-failed" : ""), "data-step": e.index || 0, "data-name": e.name || "" },
    el("td", { class: "num" }, e.index || 0), el("td", {}, kind(e.kind)), el("td", {}, name),
    el("td", { class: "num" }, duration(took)),
    el("td", {}, took !== null ? bar(Math.round(120 * took / longest)) : ""),
    el("td", {}, linked(outcome)), el("td", {}, when(e.storedAt || e.recordedAt)));
}

function linked(text) {
  // A call's or send's outcome is the callee's id: a link to it.
  const id = /^"(inv_[a-z0-9]+)"$/.exec(text || "");
  return id ? el("a", { href: "#/invocation/" + id[1] }, id[1]) : text;
}

function bar(width) {
  const span = el("span", { class: "bar" });
  span.style.width = width + "px";  // through the CSSOM: the page's CSP forbids style attributes
  return span;
}

function stateLink(inv) {
  if (!inv.key) return "";
  const service = inv.handler.split("/")[0];
  return el("p", {}, el("a", { href: "#/state/" + encodeURIComponent(service) + "/" + encodeURIComponent(inv.key) },
    "state of " + service + "/" + inv.key));
}

async function watch(box, id, journal) {
  if (watching) watching.abort();
  const controller = new AbortController();
  watching = controller;
  const steps = journal.slice();
  try {
    const response = await fetch("/api/WatchWorkflow?invocation_id=" + encodeURIComponent(id),
      { headers: headers(), signal: controller.signal });
    if (!response.ok) throw new RpcError(await response.json());
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = /^event: (.*)$/m.exec(chunk)?.[1];
        const data = JSON.parse(/^data: (.*)$/m.exec(chunk)?.[1] || "{}");
        if (event === "rpcerror") throw new RpcError(data);
        if (event !== "message") continue;
        for (const s of data.steps || []) {
          if (!steps.some((x) => (x.index || 0) === (s.index || 0))) steps.push(s);
        }
        steps.sort((x, y) => (x.index || 0) - (y.index || 0));
        if (data.invocation) drawInvocation(box, data.invocation, steps, !ENDED.has(status(data.invocation.status)));
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  } finally {
    if (watching === controller) watching = null;
  }
}

// -- object state -----------------------------------------------------------------------

async function renderState(main, object, key) {
  const form = el("form", { class: "filters", id: "state-form" },
    el("label", {}, "Object", el("input", { name: "object", value: object || "", placeholder: "e.g. cart" })),
    el("label", {}, "Key", el("input", { name: "key", value: key || "" })),
    el("button", { type: "submit", class: "primary" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const d = new FormData(form);
    location.hash = "#/state/" + encodeURIComponent(d.get("object")) + "/" + encodeURIComponent(d.get("key"));
  });
  const box = el("section", { id: "state" });
  main.replaceChildren(el("h2", {}, "Object state"), form, box);
  if (!object || !key) return;
  try {
    const state = await api("GetObjectState", { object, key });
    const entries = state.entries || [];
    box.replaceChildren(entries.length ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "value"))),
      el("tbody", {}, entries.map((e) => el("tr", { "data-entry": e.name }, el("td", { class: "mono" }, e.name), el("td", {}, el("pre", {}, payload(e.value)))))))
      : el("p", { class: "muted" }, "No state under " + object + "/" + key + "."));
  } catch (err) { showError(err); }
}

// -- routing ----------------------------------------------------------------------------

function route() {
  if (watching) { watching.abort(); watching = null; }
  const main = document.getElementById("main");
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "invocation" && parts[1]) return renderInvocation(main, parts[1]);
  if (parts[0] === "state") return renderState(main, parts[1], parts[2]);
  return renderList(main);
}

window.addEventListener("hashchange", () => { showError(null); route(); });
window.addEventListener("DOMContentLoaded", () => {
  const token = document.getElementById("token");
  token.value = sessionStorage.getItem("durable-token") || "";
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (token.value) sessionStorage.setItem("durable-token", token.value);
    else sessionStorage.removeItem("durable-token");
    showError(null);
    route();
  });
  route();
});
