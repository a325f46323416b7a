/* Following an execution's events (SSE) and rendering its transcript for people.
   Resumes after a dropped connection from the last event id it has: no duplicate, no gap. */
"use strict";

class ExecutionStream {
  /** handlers: onEvent(event), onEnd(status), onState("live"|"reconnecting"|"ended", detail) */
  constructor(executionId, handlers) {
    this.id = executionId;
    this.h = handlers;
    this.last = 0;
    this.delay = 500;
    this.ended = false;
    this.es = null;
  }
  start() {
    const url = `/api/executions/${encodeURIComponent(this.id)}/events` + (this.last ? `?last_event_id=${this.last}` : "");
    const es = (this.es = new EventSource(url));
    const take = (ev) => this.take(JSON.parse(ev.data));
    es.addEventListener("open", () => {
      this.delay = 500;
      this.h.onState?.("live");
    });
    es.addEventListener("line", take);
    es.addEventListener("status", take);
    es.addEventListener("end", (ev) => {
      this.ended = true;
      es.close();
      this.h.onState?.("ended");
      this.h.onEnd?.(JSON.parse(ev.data).status);
    });
    es.addEventListener("error", () => this.dropped(es));
  }
  take(event) {
    if (event.id <= this.last) return; // already shown: no duplicate
    if (event.id !== this.last + 1) {
      this.dropped(this.es); // a gap: fetch again from what we have
      return;
    }
    this.last = event.id;
    this.h.onEvent?.(event);
  }
  dropped(es) {
    if (this.ended || es !== this.es) return;
    es.close();
    this.es = null;
    this.h.onState?.("reconnecting", this.delay);
    setTimeout(() => this.start(), this.delay);
    this.delay = Math.min(this.delay * 2, 10000);
  }
  close() {
    this.ended = true;
    if (this.es) this.es.close();
  }
}

/** Renders stream-json lines: assistant text as text, tool calls and results collapsed. */
class TranscriptView {
  constructor(readable, raw) {
    this.readable = readable;
    this.raw = raw;
    this.lines = 0;
  }
  add(event) {
    if (event.type === "status") return this.status(event);
    this.lines += 1;
    if (this.raw) this.raw.append(document.createTextNode(event.line + "\n"));
    let msg = null;
    try {
      msg = JSON.parse(event.line);
    } catch (e) {
      /* a plain text agent */
    }
    if (!msg || typeof msg !== "object" || !msg.type) return this.block("t-plain", event.line, "pre");
    if (msg.type === "assistant") return this.assistant(msg);
    if (msg.type === "user") return this.user(msg);
    if (msg.type === "system") return this.block("t-meta", `Session started${msg.model ? " · model " + msg.model : ""}`);
    if (msg.type === "result") return this.result(msg);
    this.fold("t-other", msg.type, JSON.stringify(msg, null, 2));
  }
  block(cls, text, tag = "div") {
    const el = document.createElement(tag);
    el.className = cls;
    el.textContent = text;
    this.readable.append(el);
    return el;
  }
  fold(cls, summary, body) {
    const d = document.createElement("details");
    d.className = cls;
    const s = document.createElement("summary");
    s.textContent = summary;
    const pre = document.createElement("pre");
    pre.textContent = body;
    d.append(s, pre);
    this.readable.append(d);
  }
  assistant(msg) {
    for (const part of (msg.message && msg.message.content) || []) {
      if (part.type === "text") this.block("t-text", part.text);
      else if (part.type === "tool_use") this.fold("t-tool", `Tool call · ${part.name}`, JSON.stringify(part.input, null, 2));
      else if (part.type === "thinking") this.fold("t-think", "Thinking", part.thinking || "");
      else this.fold("t-other", part.type, JSON.stringify(part, null, 2));
    }
  }
  user(msg) {
    for (const part of (msg.message && msg.message.content) || []) {
      if (part.type !== "tool_result") continue;
      const body = Array.isArray(part.content) ? part.content.map((c) => c.text || JSON.stringify(c)).join("\n") : String(part.content ?? "");
      this.fold(part.is_error ? "t-result is-error" : "t-result", part.is_error ? "Tool result · error" : "Tool result", body);
    }
  }
  result(msg) {
    const bits = [msg.is_error ? "Finished with an error" : "Finished"];
    if (msg.duration_ms !== undefined) bits.push(agx.duration(msg.duration_ms));
    if (msg.total_cost_usd !== undefined) bits.push(agx.cost(msg.total_cost_usd));
    if (msg.num_turns !== undefined) bits.push(`${msg.num_turns} turn${msg.num_turns === 1 ? "" : "s"}`);
    this.block("t-meta", bits.join(" · "));
  }
  status(event) {
    const el = this.block("t-status", event.status);
    el.dataset.status = event.status;
  }
}

/** Just the assistant's words of a run, for a chat bubble. */
function assistantText(line) {
  try {
    const msg = JSON.parse(line);
    if (msg.type !== "assistant") return "";
    return ((msg.message && msg.message.content) || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
  } catch (e) {
    return "";
  }
}
