/* What each page does beyond showing: picked by <body data-page>. */
"use strict";

const pages = {};

pages["sign-in"] = () => {
  const form = document.getElementById("sign-in");
  const error = document.getElementById("sign-in-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = form.api_key.value.trim();
    if (!key) return agx.showError(error, "Enter an API key.");
    agx.showError(error, "");
    try {
      await agx.api("POST", "/api/session", { api_key: key });
      location.assign(form.dataset.next || "/executions");
    } catch (e) {
      agx.showError(error, e.status === 401 ? "That API key is not valid." : e.message);
      form.api_key.focus();
    }
  });
};

/** Date inputs show the browser's days; the URL keeps the API's ISO times (since/until). */
function bindDayFilters(form) {
  form.querySelectorAll("[data-day-for]").forEach((day) => {
    const hidden = form.querySelector(`input[name="${day.dataset.dayFor}"]`);
    if (hidden.value) {
      const d = new Date(hidden.value);
      if (!isNaN(d)) {
        if (day.dataset.endOfDay !== undefined) d.setDate(d.getDate() - 1);
        day.value = `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
      }
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    form.querySelectorAll("[data-day-for]").forEach((day) => {
      const hidden = form.querySelector(`input[name="${day.dataset.dayFor}"]`);
      if (!day.value) return (hidden.value = "");
      const [y, m, d] = day.value.split("-").map(Number);
      const local = new Date(y, m - 1, d + (day.dataset.endOfDay !== undefined ? 1 : 0));
      hidden.value = local.toISOString();
    });
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) params.append(k, v);
    location.assign(`/executions${params.toString() ? "?" + params : ""}`);
  });
}

pages.executions = () => {
  bindDayFilters(document.getElementById("filters"));
  const table = document.querySelector("[data-live-table]");
  if (table) new agx.LiveStatuses(table).start();
};

pages.execution = () => {
  const head = document.getElementById("execution");
  const id = head.dataset.id;
  const agent = head.dataset.agent;
  const state = document.querySelector("[data-stream-state]");
  const live = document.querySelector("[data-live-indicator]");
  const view = new TranscriptView(document.getElementById("transcript"), document.getElementById("raw"));
  const say = (text) => (state.textContent = text);
  const stream = new ExecutionStream(id, {
    onEvent: (ev) => {
      view.add(ev);
      if (ev.type === "status") setStatus(ev.status);
    },
    onState: (s, delay) => {
      if (s === "live") {
        say(head.dataset.status === "pending" ? "Waiting for a free slot…" : "Streaming live.");
        live.querySelector("[data-live-text]").textContent = "Live";
        delete live.dataset.state;
      }
      if (s === "reconnecting") {
        say(`The connection dropped. Reconnecting in ${Math.round(delay / 100) / 10} s, from event ${stream.last}…`);
        live.querySelector("[data-live-text]").textContent = "Reconnecting";
        live.dataset.state = "reconnecting";
      }
    },
    onEnd: (status) => finish(status),
  });
  function setStatus(status) {
    head.dataset.status = status;
    agx.setBadge(head.querySelector("[data-badge]"), status);
    if (status === "running") say("Streaming live.");
  }
  async function finish(status) {
    setStatus(status);
    live.hidden = true;
    document.querySelector("[data-stop]").hidden = true;
    say(view.lines ? `${view.lines} line${view.lines === 1 ? "" : "s"} of output.` : "No output.");
    try {
      fill(await agx.api("GET", `/api/agents/${agent}/executions/${id}`));
    } catch (e) {
      agx.notice(e.message, "error");
    }
  }
  function fill(e) {
    const set = (name, value) => {
      const dd = document.querySelector(`[data-field="${name}"]`);
      if (dd) dd.replaceChildren(value);
    };
    set("started_at", agx.timeHtml(e.started_at));
    set("completed_at", agx.timeHtml(e.completed_at));
    set("duration", agx.duration(e.duration_ms));
    set("cost", agx.cost(e.cost));
    set("tokens", e.input_tokens === null ? "—" : `${e.input_tokens} in · ${e.output_tokens} out`);
    set("model", e.model_used || e.model || "default");
    document.querySelector("[data-queue]").hidden = true;
    const text = document.querySelector("[data-outcome-text]");
    document.querySelector("[data-outcome-title]").textContent = e.error ? "Error" : "Response";
    text.classList.toggle("is-error", !!e.error);
    text.textContent = e.error || e.response || "No response.";
    const cont = document.querySelector("[data-continue]");
    if (cont) cont.hidden = !e.claude_session_id;
    document.querySelector("[data-repeat]").hidden = e.status !== "completed";
  }
  bindStop(id, agent);
  bindTranscriptToggle();
  stream.start();
};

function bindStop(id, agent) {
  const button = document.querySelector("[data-stop]");
  const dialog = document.getElementById("stop-dialog");
  button.addEventListener("click", () => dialog.showModal());
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "stop") return button.focus();
    button.disabled = true;
    button.textContent = "Stopping…";
    try {
      await agx.api("POST", `/api/agents/${agent}/executions/${id}/stop`);
      agx.notice("Stop requested. The execution ends as soon as its process has exited.");
    } catch (e) {
      agx.notice(e.message, "error");
      button.disabled = false;
      button.textContent = "Stop";
    }
  });
}

function bindTranscriptToggle() {
  const buttons = document.querySelectorAll("[data-view]");
  buttons.forEach((b) =>
    b.addEventListener("click", () => {
      buttons.forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
      document.getElementById("transcript").hidden = b.dataset.view !== "readable";
      document.getElementById("raw").hidden = b.dataset.view !== "raw";
    })
  );
}

/** Ctrl/Cmd+Enter in a textarea submits its form. */
function submitOnCtrlEnter(form) {
  form.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
}

pages.tasks = () => {
  const agent = document.getElementById("agent").dataset.agent;
  const form = document.getElementById("task-form");
  const error = document.getElementById("task-error");
  let live = null;
  const follow = () => {
    const table = document.querySelector("#history [data-live-table]");
    if (live) live.stop();
    if (table) (live = new agx.LiveStatuses(table)).start();
  };
  submitOnCtrlEnter(form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const message = form.message.value;
    if (!message.trim()) return agx.showError(error, "Write a message first.");
    const body = { message };
    if (form.model.value) body.model = form.model.value;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    agx.showError(error, "");
    try {
      const sent = await agx.api("POST", `/api/agents/${agent}/task`, body);
      form.message.value = "";
      await agx.refresh("history");
      follow();
      const where = sent.queue_position ? ` It waits in line at position ${sent.queue_position}.` : "";
      agx.notice(`Sent as ${sent.execution_id}.${where}`);
    } catch (e) {
      agx.showError(error, e.message);
    } finally {
      button.disabled = false;
    }
  });
  follow();
};

pages.chat = () => {
  const box = document.getElementById("chat");
  if (!box) return;
  const agent = document.getElementById("agent").dataset.agent;
  const form = document.getElementById("chat-form");
  const turns = document.getElementById("turns");
  const error = document.getElementById("chat-error");
  submitOnCtrlEnter(form);
  function bubble(cls, text) {
    const el = document.createElement("div");
    el.className = `bubble ${cls}`;
    el.textContent = text;
    return el;
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const message = form.message.value;
    if (!message.trim()) return agx.showError(error, "Write a message first.");
    agx.showError(error, "");
    turns.querySelector(".chat-empty")?.remove();
    const li = document.createElement("li");
    li.className = "turn";
    const reply = bubble("agent pending", "…");
    li.append(bubble("user", message), reply);
    turns.append(li);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    form.message.value = "";
    try {
      const sent = await send(message);
      box.dataset.session = sent.session_id;
      box.dataset.continue = "";
      history.replaceState(null, "", `/agents/${agent}/chat?session=${encodeURIComponent(sent.session_id)}`);
      document.querySelector("[data-session-label]").innerHTML = "Session <code></code>";
      document.querySelector("[data-session-label] code").textContent = sent.session_id;
      await followReply(sent.execution_id, reply, li);
    } catch (e) {
      reply.classList.remove("pending");
      reply.classList.add("is-error");
      reply.textContent = e.message;
    } finally {
      button.disabled = false;
      form.message.focus();
    }
  });
  function send(message) {
    const body = { message };
    if (form.model.value) body.model = form.model.value;
    if (box.dataset.continue) return agx.api("POST", `/api/agents/${agent}/executions/${box.dataset.continue}/continue`, body);
    if (box.dataset.session) body.session_id = box.dataset.session;
    return agx.api("POST", `/api/agents/${agent}/chat`, body);
  }
  function followReply(executionId, reply, li) {
    return new Promise((resolve) => {
      let text = "";
      const stream = new ExecutionStream(executionId, {
        onEvent: (ev) => {
          if (ev.type !== "line") return;
          const words = assistantText(ev.line);
          if (!words) return;
          text = text ? `${text}\n${words}` : words;
          reply.textContent = text;
        },
        onState: (s) => {
          if (s === "reconnecting") reply.dataset.state = "reconnecting";
          else delete reply.dataset.state;
        },
        onEnd: async (status) => {
          reply.classList.remove("pending");
          try {
            const e = await agx.api("GET", `/api/agents/${agent}/executions/${executionId}`);
            reply.textContent = e.error || e.response || text || `(${status})`;
            reply.classList.toggle("is-error", !!e.error);
          } catch (err) {
            reply.textContent = text || `(${status})`;
          }
          const link = document.createElement("a");
          link.className = "turn-link muted";
          link.href = `/executions/${executionId}`;
          link.textContent = `${status} · details`;
          li.append(link);
          resolve();
        },
      });
      stream.start();
    });
  }
};

pages.schedules = () => {
  document.querySelectorAll("[data-toggle-schedule]").forEach((button) =>
    button.addEventListener("click", async () => {
      const card = button.closest("[data-schedule]");
      const enabled = button.getAttribute("aria-checked") !== "true";
      button.disabled = true;
      try {
        const s = await agx.api("PATCH", `/api/schedules/${card.dataset.schedule}`, { enabled });
        button.setAttribute("aria-checked", String(s.enabled));
        button.querySelector(".switch-label").textContent = s.enabled ? "Enabled" : "Paused";
        card.dataset.enabled = String(s.enabled);
        card.querySelector("[data-next-run]").replaceChildren(s.next_run_at ? agx.timeHtml(s.next_run_at) : "paused");
      } catch (e) {
        agx.notice(e.message, "error");
      } finally {
        button.disabled = false;
      }
    })
  );
};

pages["schedule-new"] = () => {
  const agent = document.getElementById("agent").dataset.agent;
  const form = document.getElementById("schedule-form");
  const list = document.getElementById("preview");
  const previewError = document.getElementById("preview-error");
  const error = document.getElementById("schedule-error");
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  // the browser's zone as the default, unless someone typed one before this script ran
  if (zone && form.timezone.value === form.timezone.defaultValue) form.timezone.value = zone;
  let timer = null;
  let asked = 0;
  async function preview() {
    const tz = form.timezone.value.trim();
    const ask = ++asked;
    const q = new URLSearchParams({ cron: form.cron.value, timezone: tz, count: "5" });
    try {
      const p = await agx.api("GET", `/api/schedules/preview?${q}`);
      if (ask !== asked) return;
      agx.showError(previewError, "");
      document.querySelector("[data-preview-zone]").textContent = `in ${p.timezone}`;
      const fmt = new Intl.DateTimeFormat(undefined, { timeZone: p.timezone, weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit" });
      list.replaceChildren(
        ...p.next_runs.map((iso, i) => {
          const li = document.createElement("li");
          const t = document.createElement("time");
          t.dateTime = iso;
          t.title = p.next_runs_local[i];
          t.textContent = fmt.format(new Date(iso));
          li.append(t);
          return li;
        })
      );
      if (!p.next_runs.length) list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "This cron never fires." }));
    } catch (e) {
      if (ask !== asked) return;
      list.replaceChildren();
      agx.showError(previewError, e.message);
    }
  }
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(preview, 250);
  };
  form.cron.addEventListener("input", later);
  form.timezone.addEventListener("input", later);
  form.timezone.addEventListener("change", later);
  preview();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {
      cron: form.cron.value,
      timezone: form.timezone.value.trim(),
      message: form.message.value,
      model: form.model.value.trim() || null,
      overlap: form.overlap.value,
      enabled: form.enabled.checked,
    };
    const name = form.elements["name"].value.trim();
    if (name) body.name = name;
    if (form.dataset.from) body.from_execution_id = form.dataset.from;
    agx.showError(error, "");
    try {
      const s = await agx.api("POST", `/api/agents/${agent}/schedules`, body);
      location.assign(`/agents/${agent}/schedules#s-${s.id}`);
    } catch (e) {
      agx.showError(error, e.message);
    }
  });
};

document.addEventListener("DOMContentLoaded", () => {
  const init = pages[document.body.dataset.page];
  if (init) init();
});
