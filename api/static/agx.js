/* agx pages: what every page shares. Plain JavaScript, no build step, nothing fetched
   from elsewhere. Every change goes to the REST API with the session's CSRF token. */
"use strict";

const agx = (() => {
  const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  /** Say an API refusal in words a person can act on. */
  function explain(status, body) {
    const err = (body && body.error) || {};
    if (status === 401) return "Your session has ended. Sign in again to continue.";
    if (status === 403 && err.code === "csrf") return "This page is out of date. Reload it and try again.";
    if (status === 503) return "agx is busy or cannot reach its database right now (503). Try again in a moment.";
    if (status === 429) return err.message || "Too many requests right now. Try again shortly.";
    if (status === 404) return err.message || "That no longer exists.";
    return err.message || `The request failed (${status}).`;
  }

  /** Call the REST API as the signed-in browser session. */
  async function api(method, url, body) {
    const init = {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, "network", "agx cannot be reached. Check the connection and try again.");
    }
    const data = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(resp.status, err.code || "error", explain(resp.status, data), err.field);
    }
    return data;
  }

  const pad = (n) => String(n).padStart(2, "0");

  /** A time in the browser's zone: "14:03:22" today, else "12 May, 14:03". */
  function localTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const now = new Date();
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === now.toDateString()) return `today ${time}`;
    const opts = { day: "numeric", month: "short" };
    if (d.getFullYear() !== now.getFullYear()) opts.year = "numeric";
    return `${d.toLocaleDateString(undefined, opts)}, ${time}`;
  }

  function localizeTimes(root = document) {
    root.querySelectorAll("time[data-local]").forEach((t) => {
      t.textContent = localTime(t.dateTime);
      t.title = t.dateTime;
    });
  }

  function timeHtml(iso) {
    if (!iso) return "—";
    const t = document.createElement("time");
    t.dateTime = iso;
    t.dataset.local = "";
    t.textContent = localTime(iso);
    t.title = iso;
    return t;
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return `${ms} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${pad(Math.floor(s) % 60)} s`;
    return `${Math.floor(m / 60)} h ${pad(m % 60)} min`;
  }

  const cost = (usd) => (usd === null || usd === undefined ? "—" : usd >= 1 ? `$${usd.toFixed(2)}` : `$${usd.toFixed(4)}`);

  function notice(message, kind = "info") {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = message;
    box.dataset.kind = kind;
    box.hidden = !message;
  }

  function showError(el, message) {
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  /** Set a status badge (the label says it; colour and icon only repeat it). */
  function setBadge(badge, status) {
    if (!badge) return;
    badge.dataset.status = status;
    badge.querySelector(".label").textContent = status;
  }

  /** Update a list row from a status event of /live/statuses. */
  function updateRow(row, data) {
    row.dataset.status = data.status;
    row.dataset.started = data.started_at || "";
    setBadge(row.querySelector("[data-badge]"), data.status);
    const set = (name, text) => {
      const cell = row.querySelector(`[data-field="${name}"]`);
      if (cell) cell.textContent = text;
    };
    if (data.duration_ms !== null) set("duration", duration(data.duration_ms));
    set("cost", cost(data.cost));
    if (data.model_used) set("model", data.model_used);
  }

  /** One event stream per page for the status of the pending and running rows shown. */
  class LiveStatuses {
    constructor(root) {
      this.root = root;
      this.state = document.querySelector("[data-live-state]");
      this.delay = 1000;
      this.es = null;
    }
    ids() {
      return [...this.root.querySelectorAll("tr[data-execution]")]
        .filter((r) => r.dataset.status === "pending" || r.dataset.status === "running")
        .map((r) => r.dataset.execution);
    }
    say(text) {
      if (!this.state) return;
      this.state.textContent = text;
      this.state.hidden = !text;
    }
    start() {
      this.stop();
      const ids = this.ids();
      if (!ids.length) return this.say("");
      const es = (this.es = new EventSource(`/live/statuses?ids=${ids.join(",")}`));
      es.addEventListener("open", () => {
        this.delay = 1000;
        this.say(`Following ${ids.length} live execution${ids.length > 1 ? "s" : ""}.`);
      });
      es.addEventListener("status", (ev) => {
        const data = JSON.parse(ev.data);
        this.root.querySelectorAll(`tr[data-execution="${data.id}"]`).forEach((r) => updateRow(r, data));
      });
      es.addEventListener("end", () => {
        this.stop();
        this.say("");
      });
      es.addEventListener("error", () => {
        if (this.es !== es) return;
        this.stop();
        this.say("Live updates dropped. Reconnecting…");
        setTimeout(() => this.start(), this.delay);
        this.delay = Math.min(this.delay * 2, 15000);
      });
    }
    stop() {
      if (this.es) this.es.close();
      this.es = null;
    }
  }

  /** Running rows and pages show how long they have run, ticking each second. */
  function tickElapsed() {
    document.querySelectorAll('[data-status="running"][data-started]').forEach((el) => {
      if (!el.dataset.started) return;
      const cell = el.querySelector('[data-field="duration"]');
      if (cell) cell.textContent = duration(Date.now() - new Date(el.dataset.started).getTime());
    });
  }

  /** Replace an element with the same one from a fresh copy of this page. */
  async function refresh(id) {
    const resp = await fetch(location.href, { credentials: "same-origin" });
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.getElementById(id);
    const old = document.getElementById(id);
    if (fresh && old) old.replaceWith(fresh);
    localizeTimes(fresh || document);
    return fresh;
  }

  function bindCommon() {
    localizeTimes();
    setInterval(tickElapsed, 1000);
    document.querySelectorAll("[data-sign-out]").forEach((b) =>
      b.addEventListener("click", async () => {
        try {
          await api("DELETE", "/api/session");
        } catch (e) {
          /* signed out already: go on */
        }
        location.assign("/sign-in");
      })
    );
    document.addEventListener("click", (ev) => {
      const row = ev.target.closest("tr[data-execution]");
      if (!row || ev.target.closest("a, button")) return;
      const link = row.querySelector("[data-row-link]");
      if (link) location.assign(link.href);
    });
  }

  document.addEventListener("DOMContentLoaded", bindCommon);
  return { api, ApiError, localTime, localizeTimes, timeHtml, duration, cost, notice, showError, setBadge, LiveStatuses, refresh };
})();
