// wcsync's dashboard: times in the viewer's zone, and the live refresh of the queues and of one queue.
// A plain ES module (no build step, no library); it polls the page's live JSON (main[data-live]) every
// POLL_MS while the tab is visible, and stops when it is hidden or the session has ended.

const POLL_MS = 1500;

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function localTimes(root) {
  for (const node of root.querySelectorAll("time[datetime]")) {
    const moment = new Date(node.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) node.textContent = timeFormat.format(moment);
  }
  // The chart's time labels (SVG text): the viewer's zone, the UTC value left in their <title>.
  for (const label of root.querySelectorAll("text[data-time]")) {
    const moment = new Date(label.getAttribute("data-time") || "");
    const shown = label.lastChild;
    if (!Number.isNaN(moment.getTime()) && shown && shown.nodeType === Node.TEXT_NODE) {
      shown.textContent = timeFormat.format(moment);
    }
  }
}

function timeNode(iso, title) {
  if (!iso) return document.createTextNode("—");
  const node = document.createElement("time");
  node.setAttribute("datetime", iso);
  node.setAttribute("title", title);
  node.textContent = title;
  const moment = new Date(iso);
  if (!Number.isNaN(moment.getTime())) node.textContent = timeFormat.format(moment);
  return node;
}

function setText(root, field, value) {
  const node = root.querySelector(`[data-field="${field}"]`);
  if (node && node.textContent !== String(value)) node.textContent = String(value);
}

function setProgress(root, processed, total) {
  const bar = root.querySelector('progress[data-field="progress"]');
  if (!bar) return;
  if (total > 0) bar.max = total; else bar.removeAttribute("max");
  bar.value = processed;
  bar.textContent = `${processed} of ${total}`;
  setText(root, "processed-text", `${processed} / ${total}`);
}

function setState(root, state) {
  const node = root.querySelector('[data-field="state"]');
  if (node) node.className = `state state-${state}`;
  setText(root, "state", state);
}

// ----- the queues table ---------------------------------------------------------------------------

function newQueueRow(row) {
  const tr = document.createElement("tr");
  tr.dataset.queueId = row.queueId;
  const cell = () => tr.appendChild(document.createElement("td"));
  const link = document.createElement("a");
  link.href = `/queues/${row.queueId}`;
  link.className = "mono";
  link.textContent = row.queueId.slice(0, 8);
  const full = document.createElement("span");
  full.className = "visually-hidden";
  full.textContent = ` ${row.queueId}`;
  link.appendChild(full);
  cell().appendChild(link);
  const state = document.createElement("span");
  state.dataset.field = "state";
  cell().appendChild(state);
  cell().dataset.field = "store";
  const progressCell = cell();
  const bar = document.createElement("progress");
  bar.dataset.field = "progress";
  bar.setAttribute("aria-label", "lines processed");
  const text = document.createElement("span");
  text.dataset.field = "processed-text";
  progressCell.append(bar, " ", text);
  for (const field of ["done", "failed", "rate", "eta", "reason"]) cell().dataset.field = field;
  const created = cell();
  created.dataset.field = "created";
  created.appendChild(timeNode(row.createdAt, row.createdTitle));
  return tr;
}

function fillQueueRow(tr, row) {
  tr.dataset.state = row.state;
  setState(tr, row.state);
  setText(tr, "store", row.store);
  setProgress(tr, row.processed, row.total);
  for (const field of ["done", "failed", "rate", "eta", "reason"]) setText(tr, field, row[field]);
}

// The table becomes the answer's rows, in its order: a known queue keeps its element (moved if the order
// changed), a new one is made, and a queue no longer in the answer (past the newest 100) is removed.
function showQueues(data) {
  const table = document.getElementById("queues");
  const body = table.tBodies[0];
  const known = new Map([...body.rows].map((tr) => [tr.dataset.queueId, tr]));
  let previous = null;
  for (const row of data.queues) {
    let tr = known.get(row.queueId);
    known.delete(row.queueId);
    if (!tr) tr = newQueueRow(row);
    const expected = previous ? previous.nextElementSibling : body.firstElementChild;
    if (tr !== expected) {
      if (previous) previous.after(tr); else body.prepend(tr);
    }
    fillQueueRow(tr, row);
    previous = tr;
  }
  for (const gone of known.values()) gone.remove();
  table.dataset.count = String(data.queues.length);
  const empty = document.getElementById("no-queues");
  if (empty) empty.hidden = data.queues.length > 0;
  table.dataset.updatedAt = data.updatedAt;
}

// ----- one queue --------------------------------------------------------------------------------------

function chosenType() {
  const select = document.getElementById("activity-type");
  return select ? select.value : "";
}

function filterActivity() {
  const type = chosenType();
  for (const li of document.querySelectorAll("#activity li")) li.hidden = Boolean(type) && li.dataset.type !== type;
}

function showActivity(entries) {
  const list = document.getElementById("activity");
  if (!list) return;
  const items = entries.map((entry) => {
    const li = document.createElement("li");
    li.dataset.type = entry.type;
    li.dataset.status = entry.status;
    const type = document.createElement("span");
    type.className = "type";
    type.textContent = entry.type;
    li.append(timeNode(entry.at, entry.title), " ", type, ` ${entry.message}`);
    return li;
  });
  list.replaceChildren(...items);
  filterActivity();
}

// The filter's options: the queue's activity types as the server last read them (the choice kept).
function showActivityTypes(types) {
  const select = document.getElementById("activity-type");
  if (!select || !types) return;
  const offered = [...select.options].slice(1).map((option) => option.value);
  if (offered.join("\n") === types.join("\n")) return;
  const chosen = select.value;
  const options = types.map((type) => new Option(type, type, false, type === chosen));
  select.replaceChildren(new Option("all", "", false, chosen === ""), ...options);
  if (chosen && !types.includes(chosen)) select.value = "";
}

// The failed lines as the server last read them (a retry that fixed them empties the table).
function showFailed(lines, total) {
  const table = document.getElementById("failed-lines");
  if (!table || !lines) return;
  const rows = lines.map((line) => {
    const tr = document.createElement("tr");
    tr.dataset.lineId = String(line.lineId);
    const cell = (field, value) => {
      const td = tr.appendChild(document.createElement("td"));
      if (field) td.dataset.field = field;
      if (value !== undefined) td.textContent = String(value);
      return td;
    };
    cell(null, line.lineId);
    cell("error", line.error);
    cell("attempts", line.attempts);
    cell(null).appendChild(timeNode(line.at, line.title));
    return tr;
  });
  table.tBodies[0].replaceChildren(...rows);
  const none = document.getElementById("no-failed-lines");
  if (none) none.hidden = lines.length > 0;
  const shown = document.getElementById("failed-shown");
  if (shown) {
    shown.hidden = lines.length === 0 || lines.length >= total;
    shown.dataset.shown = String(lines.length);
    shown.dataset.total = String(total);
    setText(shown, "failed-shown", lines.length);
    setText(shown, "failed-total", total);
  }
}

function showQueue(data) {
  const main = document.getElementById("main");
  const counts = document.getElementById("counts");
  setState(main, data.row.state);
  for (const field of ["rate", "eta", "store", "reason"]) setText(main, field, data.row[field]);
  const reasonLine = main.querySelector('[data-field="reason-line"]');
  if (reasonLine) reasonLine.hidden = !data.row.reason;
  setProgress(main, data.row.processed, data.row.total);
  for (const [name, value] of Object.entries(data.counts)) setText(counts, name, value);
  const chart = document.getElementById("chart");
  if (chart && chart.dataset.svg !== data.chart) {
    // The server's own SVG: numbers and escaped text only (views.chart_svg).
    chart.innerHTML = data.chart;
    chart.dataset.svg = data.chart;
    localTimes(chart);
  }
  showActivityTypes(data.activityTypes);
  showActivity(data.activity);
  showFailed(data.failed, data.failedTotal);
  counts.dataset.updatedAt = data.updatedAt;
}

// ----- polling ----------------------------------------------------------------------------------------

function poll(url, show) {
  let timer = null;
  let stopped = false;
  async function once() {
    timer = null;
    if (stopped || document.hidden) return;
    try {
      const type = chosenType();
      const answer = await fetch(type ? `${url}?type=${encodeURIComponent(type)}` : url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (answer.status === 401) {
        stopped = true;
        window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname)}`);
        return;
      }
      if (answer.status === 404) {
        stopped = true;
        return;
      }
      if (answer.ok) show(await answer.json());
    } catch (error) {
      // The server restarting, the network away: the next round tries again.
    }
    schedule();
  }
  function schedule() {
    if (!stopped && !document.hidden && timer === null) timer = window.setTimeout(once, POLL_MS);
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (timer !== null) window.clearTimeout(timer);
      timer = null;
    } else {
      schedule();
    }
  });
  schedule();
}

// An action's answer is served at /queues/QID/retry (POST only): the address becomes the queue's own page,
// so a reload does not post the form again and a sign-in comes back to the page, not to the action.
function canonicalAddress(main) {
  const path = main ? main.dataset.path : undefined;
  if (path && window.location.pathname !== path) window.history.replaceState(null, "", path);
}

function start() {
  localTimes(document);
  const main = document.getElementById("main");
  canonicalAddress(main);
  const live = main ? main.dataset.live : undefined;
  if (document.getElementById("queues") && live) poll(live, showQueues);
  if (document.getElementById("counts") && live) poll(live, showQueue);
  const select = document.getElementById("activity-type");
  if (select) select.addEventListener("change", filterActivity);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
