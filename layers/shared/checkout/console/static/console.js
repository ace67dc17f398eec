// The operator console: plain JavaScript, no build step. Every value from the API reaches the page through
// textContent or setAttribute (never innerHTML), so a record's error text cannot become markup.
"use strict";

const STATUSES = ["failed", "retrying", "pending", "resolved"];
const WINDOWS = [["1h", "last hour"], ["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"]];
let countdownTimer = null;

// ---- DOM helpers ------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "onclick" || name === "onsubmit" || name === "onchange") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(page, ...nodes) {
  page.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function text(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

function badge(value) {
  return h("span", { class: `badge ${String(value).replace(/[^a-z_]/g, "")}` }, text(value));
}

function fields(pairs) {
  return h("dl", { class: "fields" }, pairs.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));
}

function flash(message, kind) {
  const box = document.getElementById("flash");
  box.className = `flash ${kind || ""}`;
  box.textContent = message || "";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  let rest = Math.max(0, Math.round(seconds));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (rest >= size || (unit === "s" && parts.length === 0)) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return parts.join(" ");
}

function age(iso) {
  if (!iso) return "";
  return `${duration((Date.now() - Date.parse(iso)) / 1000)} ago`;
}

function percent(value) {
  return value === null || value === undefined ? "no data" : `${(value * 100).toFixed(1)} %`;
}

// ---- API (through the console's /api/admin proxy, same origin) ------------------------------------
async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api${path}`, options);
  } catch (error) {
    return { status: 0, body: { error: "console_unreachable", message: `the console did not answer: ${error}` } };
  }
  let data = null;
  try { data = await response.json(); } catch (error) { data = { error: "not_json", message: response.statusText }; }
  return { status: response.status, body: data };
}

function problem(answer) {
  const body = answer.body || {};
  return `${answer.status} ${body.error || "error"}: ${body.message || ""}`;
}

function q(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) search.set(name, value);
  const s = search.toString();
  return s ? `?${s}` : "";
}

// ---- routing ------------------------------------------------------------------------------------------
function route() {
  if (countdownTimer) { clearInterval(countdownTimer); countdownTimer = null; }
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const page = document.getElementById("page");
  // Set once a page has rendered its answers, so a test (or a person's script) knows it is current.
  page.removeAttribute("data-view");
  const record = path.match(/^\/compensations\/([^/]+)$/);
  let current = "list";
  if (record) { current = "record"; showRecord(page, decodeURIComponent(record[1])); }
  else if (path === "/kpis") { current = "kpis"; showKpis(page, params.get("window") || "24h"); }
  else showList(page, params);
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function focusHeading(page) {
  const heading = page.querySelector("h2");
  if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
}

// ---- page: failed compensations ---------------------------------------------------------------------
async function showList(page, params) {
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const limit = ["10", "25", "50", "100"].includes(params.get("limit")) ? params.get("limit") : "25";
  const cursor = params.get("cursor") || "";
  const previous = (params.get("prev") || "").split(",").filter(Boolean);
  show(page, h("h2", {}, "Failed compensations"), h("p", {}, "Loading…"));

  const [listing, counts, dlq] = await Promise.all([
    api("GET", `/admin/compensations${q({ status, limit, cursor })}`),
    api("GET", "/admin/counts"),
    api("GET", "/admin/dlq"),
  ]);

  const countsPanel = h("section", { class: "panel", "aria-labelledby": "counts-title" },
    h("h3", { id: "counts-title" }, "Records per status"),
    counts.status === 200
      ? h("ul", { class: "counts", id: "counts" }, STATUSES.map((s) =>
          h("li", { "data-status": s }, h("strong", {}, counts.body.compensations[s]), s)))
      : h("p", { class: "why blocked" }, problem(counts)));

  show(page, h("h2", {}, "Failed compensations"),
    h("div", { class: "grid" }, countsPanel, dlqPanel(dlq)),
    filters(status, limit),
    listing.status === 200 ? recordsTable(listing.body.items, status) : h("p", { class: "why blocked" }, problem(listing)),
    listing.status === 200 ? pager(status, limit, cursor, previous, listing.body.next_cursor) : null);
  page.setAttribute("data-view", `list:${status || "all"}`);
  focusHeading(page);
}

function dlqPanel(dlq) {
  if (dlq.status !== 200) {
    return h("section", { class: "panel", "aria-labelledby": "dlq-title" },
      h("h3", { id: "dlq-title" }, "Dead-letter queue"), h("p", { class: "why blocked" }, problem(dlq)));
  }
  const { dlq: parked, queue, redrive_tasks: tasks } = dlq.body;
  const empty = parked.visible === 0;
  const button = h("button", {
    type: "button", id: "redrive", class: "danger", disabled: empty, "aria-describedby": "redrive-why",
    onclick: async () => {
      button.disabled = true;
      flash("Redriving the dead-letter queue…");
      const answer = await api("POST", "/admin/dlq/redrive", {});
      if (answer.status === 202) {
        const how = answer.body.method === "start_message_move_task"
          ? `SQS move task ${answer.body.task_handle} started`
          : `${answer.body.moved} message(s) moved back to the queue`;
        flash(`Redrive accepted: ${how}.`, "ok");
        go(location.hash || "#/");
      } else {
        flash(`Redrive refused: ${problem(answer)}`, "error");
        button.disabled = false;
      }
    },
  }, "Redrive the DLQ");
  const last = tasks && tasks.length ? tasks[0] : null;
  return h("section", { class: "panel", "aria-labelledby": "dlq-title" },
    h("h3", { id: "dlq-title" }, "Dead-letter queue"),
    fields([
      ["Parked in the DLQ", h("span", { id: "dlq-depth" }, `${parked.visible} waiting, ${parked.in_flight} in flight`)],
      ["Queue for retries", `${queue.visible} waiting, ${queue.in_flight} in flight`],
      ["Last redrive", last ? `${last.Status}: ${text(last.ApproximateNumberOfMessagesMoved)} moved` : "—"],
    ]),
    h("div", { class: "action-form" }, button,
      h("p", { id: "redrive-why", class: "why" }, empty
        ? "The DLQ is empty: nothing to redrive."
        : "Moves every parked message back to the queue; the processor retries each record again.")));
}

function filters(status, limit) {
  const statusSelect = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "every status (failed first)"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const limitSelect = h("select", { id: "page-size", name: "limit" },
    ["10", "25", "50", "100"].map((n) => h("option", { value: n, selected: n === limit }, n)));
  const apply = () => go(`#/${q({ status: statusSelect.value, limit: limitSelect.value })}`);
  statusSelect.addEventListener("change", apply);
  limitSelect.addEventListener("change", apply);
  return h("form", { class: "filters", role: "search", onsubmit: (event) => { event.preventDefault(); apply(); } },
    h("div", {}, h("label", { for: "status-filter" }, "Status"), statusSelect),
    h("div", {}, h("label", { for: "page-size" }, "Per page"), limitSelect),
    h("button", { type: "submit", class: "secondary" }, "Show"));
}

function recordsTable(items, status) {
  const caption = status
    ? `Records in status ${status}, oldest first`
    : "Every record: failed first, then retrying, pending, resolved; oldest first within each";
  if (!items.length) return h("p", { id: "no-records" }, `${caption}: none.`);
  return h("table", { id: "records" },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ["Record", "Order", "Operation", "Error", "Retries", "Status", "Created"].map(
      (name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, items.map((record) => h("tr", { "data-id": record.id },
      h("td", {}, h("a", { href: `#/compensations/${encodeURIComponent(record.id)}`, class: "mono" }, record.id)),
      h("td", { class: "mono" }, record.order_id),
      h("td", {}, record.operation_type),
      h("td", { class: "error-text" }, text(record.error_message)),
      h("td", {}, `${record.retry_count} / ${record.max_retries}`),
      h("td", {}, badge(record.status)),
      h("td", {}, h("time", { datetime: record.created_at, title: record.created_at }, age(record.created_at)))))));
}

function pager(status, limit, cursor, previous, next) {
  const back = previous.length
    ? `#/${q({ status, limit, cursor: previous[previous.length - 1], prev: previous.slice(0, -1).join(",") })}`
    : cursor ? `#/${q({ status, limit })}` : null;
  const forward = next ? `#/${q({ status, limit, cursor: next, prev: [...previous, cursor].filter(Boolean).join(",") })}` : null;
  return h("nav", { class: "pager", "aria-label": "Pages of records" },
    h("button", { type: "button", class: "secondary", disabled: !back, onclick: () => go(back) }, "Previous page"),
    h("button", { type: "button", class: "secondary", id: "next-page", disabled: !forward, onclick: () => go(forward) },
      "Next page"));
}

// ---- page: one record ---------------------------------------------------------------------------------
async function showRecord(page, id) {
  show(page, h("h2", {}, `Failed compensation ${id}`), h("p", {}, "Loading…"));
  const recordAnswer = await api("GET", `/admin/compensations/${encodeURIComponent(id)}`);
  if (recordAnswer.status !== 200) {
    show(page, h("h2", {}, `Failed compensation ${id}`), h("p", { class: "why blocked" }, problem(recordAnswer)),
      h("p", {}, h("a", { href: "#/" }, "Back to the list")));
    return;
  }
  const record = recordAnswer.body;
  const [order, state] = await Promise.all([
    api("GET", `/admin/orders/${encodeURIComponent(record.order_id)}`),
    api("GET", `/admin/compensations/${encodeURIComponent(id)}/provider-state`),
  ]);
  show(page, 
    h("p", {}, h("a", { href: "#/" }, "← Back to the list")),
    h("h2", {}, `Failed compensation ${record.id}`),
    h("div", { class: "grid" },
      h("section", { class: "panel", "aria-labelledby": "record-title" },
        h("h3", { id: "record-title" }, "Record"),
        fields([
          ["Status", h("span", { id: "record-status" }, badge(record.status))],
          ["Order", h("span", { class: "mono" }, record.order_id)],
          ["Customer", text(record.customer_id)],
          ["Operation", record.operation_type],
          ["Steps left", text((record.open_steps || []).join(", ") || record.operation_type)],
          ["Authorization", h("span", { class: "mono" }, text(record.authorization_id))],
          ["Last error", h("span", { id: "record-error" }, text(record.error_message))],
          ["Retries", `${record.retry_count} of ${record.max_retries}`],
          ["Alert sent", record.alert_sent ? "yes" : "no"],
          ["Created", `${record.created_at} (${age(record.created_at)})`],
          ["Updated", text(record.updated_at)],
          ["Resolved", record.resolved_at ? `${record.resolved_at} by ${text(record.resolved_by)}` : "—"],
        ])),
      providerPanel(state),
      actionsPanel(record, state)),
    h("div", { class: "grid" }, trailPanel(record), historyPanel(order)));
  page.setAttribute("data-view", `record:${record.id}`);
  focusHeading(page);
}

function providerPanel(state) {
  const section = h("section", { class: "panel", "aria-labelledby": "provider-title", id: "provider-state" },
    h("h3", { id: "provider-title" }, "What the providers show now"));
  if (state.status !== 200) {
    section.append(h("p", { class: "why blocked" }, problem(state)));
    return section;
  }
  const { payment, reservation, steps, read_at: readAt } = state.body;
  const intent = payment.intent;
  const countdown = h("span", { class: "countdown", id: "capture-countdown" }, "—");
  if (intent && intent.capture_before && intent.capture_seconds_left !== null) {
    const deadline = Date.parse(intent.capture_before);
    const tick = () => {
      const left = (deadline - Date.now()) / 1000;
      countdown.textContent = left > 0 ? `${duration(left)} left` : "the capture window has closed";
      countdown.className = `countdown ${left < 86400 ? "soon" : "ok"}`;
    };
    tick();
    countdownTimer = setInterval(tick, 1000);
  } else if (intent) {
    countdown.textContent = `no deadline: the intent is ${intent.status}`;
  }
  section.append(
    h("p", { class: "source" }, `Read at ${readAt}`),
    h("h4", {}, "Stripe payment intent"),
    intent
      ? fields([
          ["Intent", h("span", { class: "mono" }, intent.id)],
          ["Status", h("span", { id: "intent-status" }, badge(intent.status))],
          ["Amount", `${intent.amount} ${text(intent.currency)} (capturable ${text(intent.amount_capturable)}, received ${text(intent.amount_received)})`],
          ["Capture deadline", h("span", {}, countdown, intent.capture_seconds_left !== null && intent.capture_before
            ? h("span", { class: "why" }, ` until ${intent.capture_before}`) : null)],
          ["Charge", intent.charge ? `${text(intent.charge.id)}: ${intent.charge.captured ? "captured" : "not captured"}, refunded ${text(intent.charge.amount_refunded)}` : "—"],
          ["Canceled", text(intent.canceled_at)],
        ])
      : h("p", { class: "why blocked" }, text(payment.error)),
    h("h4", {}, "Warehouse reservation"),
    reservation.reservation
      ? fields([
          ["Reservation", h("span", { class: "mono" }, reservation.reservation.id)],
          ["Status", h("span", { id: "reservation-status" }, badge(reservation.reservation.status))],
          ["Hold expires", text(reservation.reservation.expires_at)],
        ])
      : h("p", { class: "why blocked" }, text(reservation.error)),
    h("h4", {}, "Steps of this record"),
    h("ul", { class: "steps", id: "steps" }, steps.map((step) =>
      h("li", {}, h("strong", {}, step.step), " ", badge(step.state), " ", step.detail))));
  return section;
}

function actionsPanel(record, state) {
  const section = h("section", { class: "panel", "aria-labelledby": "actions-title" }, h("h3", { id: "actions-title" }, "Actions"));
  const retry = state.status === 200 ? state.body.retry : { allowed: record.status !== "resolved", reason: null };
  const open = record.status !== "resolved";

  const retryNote = h("input", { type: "text", id: "retry-note", name: "note", maxlength: 2000, disabled: !retry.allowed });
  const retryButton = h("button", { type: "submit", id: "retry", disabled: !retry.allowed, "aria-describedby": "retry-why" }, "Retry");
  const retryForm = h("form", {
    class: "action-form", "aria-labelledby": "retry-title",
    onsubmit: async (event) => {
      event.preventDefault();
      retryButton.disabled = true;
      const note = retryNote.value.trim();
      const answer = await api("POST", `/admin/compensations/${encodeURIComponent(record.id)}/retry`, note ? { note } : {});
      if (answer.status === 202) {
        flash(`Retry queued: ${record.id} is ${answer.body.status} again; the processor will try it shortly.`, "ok");
        go(location.hash);
      } else {
        flash(`Retry refused: ${problem(answer)}`, "error");
        retryButton.disabled = false;
      }
    },
  },
  h("h4", { id: "retry-title" }, "Retry"),
  h("label", { for: "retry-note" }, "Why (optional, kept on the record)"), retryNote, " ", retryButton,
  h("p", { id: "retry-why", class: retry.allowed ? "why" : "why blocked" }, retry.allowed
    ? "Queues the record again: the processor retries its steps under the order's own idempotency keys."
    : `Retry is not available: ${retry.reason}`));

  const note = h("textarea", { id: "resolve-note", name: "note", required: true, maxlength: 2000, disabled: !open,
    "aria-describedby": "resolve-why" });
  const resolveButton = h("button", { type: "submit", id: "resolve", disabled: !open }, "Resolve by hand");
  const resolveForm = h("form", {
    class: "action-form", "aria-labelledby": "resolve-title",
    onsubmit: async (event) => {
      event.preventDefault();
      if (!note.value.trim()) {
        flash("Resolve needs a note saying what you did at the provider or warehouse.", "error");
        note.focus();
        return;
      }
      resolveButton.disabled = true;
      const answer = await api("POST", `/admin/compensations/${encodeURIComponent(record.id)}/resolve`, { note: note.value.trim() });
      if (answer.status === 200) {
        flash(`Resolved: ${record.id} is resolved and order ${record.order_id} is COMPENSATED.`, "ok");
        go(location.hash);
      } else {
        flash(`Resolve refused: ${problem(answer)}`, "error");
        resolveButton.disabled = false;
      }
    },
  },
  h("h4", { id: "resolve-title" }, "Resolve by hand"),
  h("label", { for: "resolve-note" }, "What did you do? (required, kept on the record)"), note,
  h("p", { id: "resolve-why", class: "why" }, open
    ? "Only after you settled it yourself (cancelled or refunded the intent, released the stock): resolving calls no provider."
    : `Resolved at ${record.resolved_at}.`),
  resolveButton);
  section.append(retryForm, resolveForm);
  return section;
}

function trailPanel(record) {
  const actions = record.actions || [];
  return h("section", { class: "panel", "aria-labelledby": "trail-title" },
    h("h3", { id: "trail-title" }, "Actions trail"),
    actions.length
      ? h("table", { id: "trail" },
          h("thead", {}, h("tr", {}, ["When", "Action", "By", "Note"].map((n) => h("th", { scope: "col" }, n)))),
          h("tbody", {}, actions.map((a) => h("tr", {},
            h("td", {}, text(a.at)), h("td", {}, text(a.action)), h("td", { class: "mono" }, text(a.by)), h("td", {}, text(a.note))))))
      : h("p", {}, "No operator has acted on this record yet."));
}

function historyPanel(order) {
  const section = h("section", { class: "panel", "aria-labelledby": "history-title" }, h("h3", { id: "history-title" }, "Saga history of the order"));
  if (order.status !== 200) {
    section.append(h("p", { class: "why blocked" }, problem(order)));
    return section;
  }
  section.append(
    h("p", {}, "Now ", badge(order.body.saga_state), ` (order ${order.body.status})`),
    h("ol", { class: "timeline", id: "timeline" }, (order.body.history || []).map((entry) =>
      h("li", {},
        h("div", {}, h("strong", {}, `${text(entry.from)} → ${text(entry.to)}`)),
        h("div", { class: "when" }, h("time", { datetime: entry.at }, entry.at)),
        h("div", {}, text(entry.reason))))));
  return section;
}

// ---- page: KPIs ---------------------------------------------------------------------------------------
async function showKpis(page, window) {
  if (!WINDOWS.some(([value]) => value === window)) window = "24h";
  const select = h("select", { id: "kpi-window", name: "window", onchange: () => go(`#/kpis?window=${select.value}`) },
    WINDOWS.map(([value, label]) => h("option", { value, selected: value === window }, label)));
  const header = [h("h2", {}, "KPIs"),
    h("form", { class: "filters", onsubmit: (event) => { event.preventDefault(); go(`#/kpis?window=${select.value}`); } },
      h("div", {}, h("label", { for: "kpi-window" }, "Window"), select),
      h("button", { type: "submit", class: "secondary" }, "Show"))];
  show(page, ...header, h("p", {}, "Loading…"));
  const answer = await api("GET", `/admin/kpis?window=${encodeURIComponent(window)}`);
  if (answer.status !== 200) {
    show(page, ...header, h("p", { class: "why blocked" }, problem(answer)));
    return;
  }
  const k = answer.body;
  const card = (id, title, value, detail, source) => h("section", { class: "panel", id, "aria-labelledby": `${id}-title` },
    h("h3", { id: `${id}-title` }, title), h("p", { class: "kpi" }, value), h("p", {}, detail),
    h("p", { class: "source" }, `source: ${source}`));
  show(page, ...header,
    h("p", {}, `From ${k.from} to ${k.to}.`),
    k.metrics_error ? h("p", { class: "why blocked" }, k.metrics_error) : null,
    !k.metrics_error && !k.metrics_found
      ? h("p", { class: "why", id: "no-metrics" }, "CloudWatch has no checkout metrics for this window (the local stack publishes none): the rates need them.")
      : null,
    h("div", { class: "grid" },
      card("kpi-saga", "Saga success rate", percent(k.saga_success_rate.value),
        `${k.saga_success_rate.completed_in_request} of ${k.saga_success_rate.total} confirms finished in the request (confirmed or declined, no worker needed)`,
        "CloudWatch metrics (as on the dashboard)"),
      card("kpi-compensation", "Compensation failure rate", percent(k.compensation_failure_rate.value),
        `${k.compensation_failure_rate.failed} of ${k.compensation_failure_rate.total} compensations needed the failed-compensation path`,
        "CloudWatch metrics (as on the dashboard)"),
      card("kpi-resolution", "Average resolution time",
        k.average_resolution_seconds.value === null ? "no data" : duration(k.average_resolution_seconds.value),
        `${k.average_resolution_seconds.resolved} record(s) created in the window and resolved; ${k.average_resolution_seconds.still_open} still open`,
        "the failed-compensation records"),
      card("kpi-alerts", "Alert volume", k.alert_volume.value === null ? "no data" : String(k.alert_volume.value),
        `messages on the alerts topic (alarms included); the records of the window sent ${k.alert_volume.saga_alerts_of_records} saga alert(s)`,
        "CloudWatch (SNS) and the records")),
    h("section", { class: "panel", "aria-labelledby": "created-title" },
      h("h3", { id: "created-title" }, "Failed compensations created in the window, by status now"),
      h("ul", { class: "counts", id: "created" }, STATUSES.map((s) => h("li", {}, h("strong", {}, k.records_created[s]), s)))));
  page.setAttribute("data-view", `kpis:${window}`);
  focusHeading(page);
}

// ---- start ----------------------------------------------------------------------------------------------
async function start() {
  const info = await api("GET", "/console");
  document.getElementById("target").textContent = info.status === 200
    ? `Admin API: ${info.body.admin_api}`
    : `Not connected: ${problem(info)}`;
  window.addEventListener("hashchange", () => { flashOnNavigate(); route(); });
  route();
}

let lastHash = null;
function flashOnNavigate() {
  // A message stays for the page an action returns to, and clears when the operator goes elsewhere.
  const base = (location.hash || "#/").split("?")[0];
  if (lastHash !== null && lastHash !== base) flash("");
  lastHash = base;
}

document.addEventListener("DOMContentLoaded", start);
