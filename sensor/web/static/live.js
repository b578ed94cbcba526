// Live updates for the operator page: poll the JSON API, never reload.
// Plain DOM building with textContent: nothing from the server becomes HTML.
"use strict";
(function () {
  const POLL_MS = 2000;

  function cell(row, text, cls) {
    const td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function link(td, href) {
    const text = td.textContent;
    td.textContent = "";
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  }

  function alertRow(a) {
    const tr = document.createElement("tr");
    tr.className = "new row-" + a.severity;
    tr.dataset.id = String(a.id);
    tr.dataset.precursor = a.precursor;
    link(cell(tr, String(a.id)), a.url);
    const sev = document.createElement("span");
    sev.className = "sev sev-" + a.severity;
    sev.textContent = a.severity;
    cell(tr, "").appendChild(sev);
    cell(tr, a.precursor);
    link(cell(tr, a.title), a.url);
    const src = cell(tr, a.src);
    if (a.src_url) { link(src, a.src_url); }
    const dst = cell(tr, a.dst);
    if (a.dst_url) { link(dst, a.dst_url); }
    cell(tr, String(a.count), "num");
    cell(tr, a.last_seen);
    cell(tr, a.open ? "open" : "acknowledged");
    return tr;
  }

  function setText(id, value) {
    const el = document.getElementById(id);
    if (el) { el.textContent = String(value); }
  }

  function liveAlerts(table) {
    let after = Number(table.dataset.after || "0");
    const query = table.dataset.query || "";
    const body = table.tBodies[0];
    async function poll() {
      try {
        const sep = query ? "&" : "";
        const r = await fetch("/api/alerts?" + query + sep + "after=" + after,
                              { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (r.ok) {
          const data = await r.json();
          for (const a of data.alerts) {
            const empty = body.querySelector("tr.empty");
            if (empty) { empty.remove(); }
            body.insertBefore(alertRow(a), body.firstChild);
            after = Math.max(after, a.id);
          }
          setText("count-open", data.counts.open);
          setText("count-all", data.counts.alerts);
        } else if (r.status === 401) {
          setText("live-state", "Logged out: reload to log in again.");
          return;
        }
      } catch (e) {
        setText("live-state", "Sensor not reachable; retrying.");
      }
      window.setTimeout(poll, POLL_MS);
    }
    window.setTimeout(poll, POLL_MS);
  }

  function liveHealth(table) {
    async function poll() {
      try {
        const r = await fetch("/api/health", { credentials: "same-origin" });
        if (r.ok) {
          const h = await r.json();
          const fwd = h.forwarding || {};
          const values = Object.assign({}, h, { unacked: fwd.unacked });
          for (const td of table.querySelectorAll("[data-field]")) {
            const v = values[td.dataset.field];
            if (v !== undefined && v !== null && td.dataset.field !== "last_heartbeat") {
              td.textContent = td.dataset.field === "uptime" ? v + " s" : String(v);
            }
          }
        }
      } catch (e) { /* keep the last values */ }
      window.setTimeout(poll, 5000);
    }
    window.setTimeout(poll, 5000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const table = document.getElementById("alerts");
    if (table && table.dataset.live === "1") { liveAlerts(table); }
    const health = document.getElementById("health");
    if (health && health.dataset.live === "1") { liveHealth(health); }
  });
})();
