// watchroutes.js: keep a Map in sync with a watchroutes watch route, in the browser.
//
// A dependency-free ES module (no build step). Served by your app at a path you choose
// (see docs/client.md), it follows the wire contract of protocol.md §3 and recovers the way the
// Python informer does:
//
// - The state arrives as ADDED events, complete at the BOOKMARK annotated
//   "k8s.io/initial-events-end"; until then it is collected aside, and then it *replaces*
//   the store: keys that vanished are reported DELETED with `tombstone: true`.
// - RESET (the server no longer has our version, but has the state) starts a new collection.
// - Every event is applied once: a live event whose rv is not newer than the store's is stale.
// - Blocks without data (the server's id-only bookmarks) are never dispatched as events: they
//   only move the resume point.
// - Reconnects resume from the last id, with exponential backoff and full jitter (0.8 s,
//   doubling, 30 s cap, reset after 2 minutes without a failure), and at least the server's
//   retryAfterSeconds. A 401 calls `getToken` once; without a new token the state is
//   "signed-out". 400, 403 and 404 end in "failed": no retry can fix them.
//
// Modes: "eventsource" (default: the browser's EventSource, which sends Last-Event-ID and
// honours the server's retry by itself), "fetch" (a streaming fetch, for custom headers such
// as Authorization), "longpoll" (the default where EventSource does not exist).

export const INITIAL_EVENTS_END = "k8s.io/initial-events-end";

/** The connection states reported to `onState`. */
export const STATES = Object.freeze(["connecting", "live", "reconnecting", "signed-out", "failed"]);

export const DEFAULT_BACKOFF = Object.freeze({ initial: 800, cap: 30000, factor: 2, resetAfter: 120000 });

/** metadata.name, or namespace/name (client-go's MetaNamespaceKeyFunc). */
export function defaultKey(obj) {
  const meta = (obj && obj.metadata) || {};
  return meta.namespace ? `${meta.namespace}/${meta.name}` : meta.name;
}

/** Exponential backoff with full jitter; `failure(now)` returns the milliseconds to wait. */
export class Backoff {
  constructor(options = {}, random = Math.random) {
    this.options = { ...DEFAULT_BACKOFF, ...options };
    this.random = random;
    this.attempt = 0;
    this.lastFailure = null;
  }

  failure(now) {
    const { initial, cap, factor, resetAfter } = this.options;
    if (this.lastFailure !== null && now - this.lastFailure >= resetAfter) this.attempt = 0;
    const ceiling = Math.min(cap, initial * factor ** Math.min(this.attempt, 64));
    this.attempt += 1;
    this.lastFailure = now;
    return this.random() * ceiling;
  }

  reset() {
    this.attempt = 0;
    this.lastFailure = null;
  }
}

function objectRv(obj) {
  const rv = obj && obj.metadata && obj.metadata.resourceVersion;
  return typeof rv === "string" ? rv : null;
}

function asNumber(rv) {
  return typeof rv === "string" && /^\d+$/.test(rv) ? BigInt(rv) : null;
}

function isInitialEnd(env) {
  const meta = env.object && env.object.metadata;
  return env.type === "BOOKMARK" && !!meta && !!meta.annotations
    && meta.annotations[INITIAL_EVENTS_END] === "true";
}

/** An incremental text/event-stream parser (WHATWG rules) that also reports id-only blocks. */
export class SSEParser {
  constructor() {
    this.pending = "";
    this.skipLF = false;
    this.data = null;
    this.id = null;
    this.retry = null;
  }

  /** Feed decoded text; returns blocks {data, id, retry} (data null: no data line). */
  feed(text) {
    let buffer = this.pending + text;
    if (this.skipLF && buffer[0] === "\n") buffer = buffer.slice(1);
    // A CR at the end ends its line; an LF at the start of the next chunk is its other half.
    this.skipLF = buffer.endsWith("\r");
    const lines = buffer.split(/\r\n|\r|\n/);
    this.pending = lines.pop();
    const out = [];
    for (const line of lines) {
      if (line === "") {
        if (this.data !== null || this.id !== null || this.retry !== null) {
          out.push({ data: this.data, id: this.id, retry: this.retry });
        }
        this.data = this.id = this.retry = null;
        continue;
      }
      if (line[0] === ":") continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (name === "data") this.data = this.data === null ? value : this.data + "\n" + value;
      else if (name === "id" && !value.includes("\0") && value !== "") this.id = value;
      else if (name === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    }
    return out;
  }
}

/**
 * Keeps `store` (a Map key -> object) equal to the collection behind `url`.
 *
 * options: mode ("eventsource" | "fetch" | "longpoll"), key(obj), token, tokenParam
 * (query parameter for the token in eventsource/longpoll mode, default "access_token"),
 * getToken() (async; called once on a 401), headers (fetch mode), withCredentials,
 * onChange({type, key, object, old, resourceVersion, tombstone}), onState(state, detail),
 * onSynced(), onEvent(envelope) (every dispatched envelope, for debugging), backoff
 * ({initial, cap, factor, resetAfter} in ms), random, pollTimeout (seconds), heartbeat (the
 * server's interval, seconds, default 15) and readTimeout (fetch mode: ms of silence after
 * which the connection counts as dead, default 2 × heartbeat + 5 s), now().
 */
export class Informer {
  constructor(url, options = {}) {
    this.url = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    const hasEventSource = typeof globalThis.EventSource === "function";
    this.mode = options.mode || (hasEventSource ? "eventsource" : "longpoll");
    if (this.mode === "eventsource" && !hasEventSource) this.mode = "longpoll";
    this.options = options;
    this.key = options.key || defaultKey;
    this.token = options.token || null;
    this.tokenParam = options.tokenParam || "access_token";
    this.now = options.now || (() => Date.now());
    this.backoff = new Backoff(options.backoff, options.random || Math.random);
    this.store = new Map();
    this.synced = false;
    this.state = "connecting";
    this.resourceVersion = null;   // the resume point
    this.stats = { connects: 0, reconnects: 0, relists: 0, events: 0, bookmarks: 0, stale: 0, tombstones: 0 };
    this._collecting = new Map();  // the state being collected (null once live)
    this._newest = null;           // BigInt watermark of applied rvs
    this._source = null;
    this._abort = null;
    this._timer = null;
    this._stopped = true;
    this._refreshed = false;
    this._openedAt = 0;
  }

  /** Start watching (idempotent). Returns this. */
  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._connect();
    return this;
  }

  /** Stop watching; the store keeps its last state. */
  stop() {
    this._stopped = true;
    this._close();
    clearTimeout(this._timer);
  }

  // -- the store ---------------------------------------------------------------------------

  _apply(env) {
    const type = env.type;
    if (type === "RESET") {
      this._collecting = new Map();
      this.stats.relists += this.synced ? 1 : 0;
      return;
    }
    if (type === "BOOKMARK") {
      this.stats.bookmarks += 1;
      if (this._collecting !== null) {
        if (isInitialEnd(env)) this._replace(env.resourceVersion || objectRv(env.object));
      } else {
        this._advance(env.resourceVersion || objectRv(env.object));
      }
      return;
    }
    const obj = env.object;
    if (!obj || (type !== "ADDED" && type !== "MODIFIED" && type !== "DELETED")) return;
    this.stats.events += 1;
    const key = this.key(obj);
    if (this._collecting !== null) {
      if (type === "DELETED") this._collecting.delete(key);
      else this._collecting.set(key, obj);
      return;
    }
    const rvString = env.resourceVersion || objectRv(obj);
    const rv = asNumber(rvString);
    const old = this.store.get(key);
    if (rv !== null) {
      const oldRv = old ? asNumber(objectRv(old)) : null;
      if ((this._newest !== null && rv <= this._newest) || (oldRv !== null && rv <= oldRv)) {
        this.stats.stale += 1;
        return;
      }
    }
    this._advance(rvString);
    if (type === "DELETED") {
      if (!old) return;
      this.store.delete(key);
      this._emit({ type: "DELETED", key, object: obj, old, resourceVersion: rvString, tombstone: false });
      return;
    }
    this.store.set(key, obj);
    this._emit({ type: old ? "MODIFIED" : "ADDED", key, object: obj, old: old || null, resourceVersion: rvString, tombstone: false });
  }

  _advance(rv) {
    if (!rv) return;
    const value = asNumber(rv);
    if (value === null) { this.resourceVersion = rv; return; }
    if (this._newest === null || value > this._newest) {
      this._newest = value;
      this.resourceVersion = rv;
    }
  }

  _replace(rv) {
    const next = this._collecting;
    this._collecting = null;
    const changes = [];
    for (const [key, old] of this.store) {
      if (!next.has(key)) {
        this.stats.tombstones += 1;
        changes.push({ type: "DELETED", key, object: old, old, resourceVersion: null, tombstone: true });
      }
    }
    for (const [key, obj] of next) {
      const old = this.store.get(key);
      const newRv = objectRv(obj);
      if (!old) {
        changes.push({ type: "ADDED", key, object: obj, old: null, resourceVersion: newRv, tombstone: false });
      } else if (objectRv(old) !== newRv || (newRv === null && JSON.stringify(old) !== JSON.stringify(obj))) {
        changes.push({ type: "MODIFIED", key, object: obj, old, resourceVersion: newRv, tombstone: false });
      }
    }
    this.store = next;
    this._newest = asNumber(rv);
    this.resourceVersion = rv || this.resourceVersion;
    const first = !this.synced;
    this.synced = true;
    for (const change of changes) this._emit(change);
    if (first && this.options.onSynced) this.options.onSynced();
    this._setState("live");
  }

  _emit(change) {
    if (this.options.onChange) this.options.onChange(change);
  }

  _setState(state, detail) {
    if (this.state === state && detail === undefined) return;
    this.state = state;
    if (this.options.onState) this.options.onState(state, detail);
  }

  // -- envelopes, whatever the transport ---------------------------------------------------

  /** Returns "continue", or how the connection must end: {end: "retry"|"relist"|"auth"|"fail", ...}. */
  _envelope(text) {
    if (text === null || text === "") return null;   // an empty message is never an event
    let env;
    try { env = JSON.parse(text); } catch { return { end: "retry", message: "unreadable event" }; }
    if (!env || typeof env.type !== "string") return { end: "retry", message: "not an envelope" };
    if (this.options.onEvent) this.options.onEvent(env);
    if (env.type === "ERROR") return this._status(env.object || {});
    this._refreshed = false;   // progress: a later 401 may call getToken again
    this._apply(env);
    this._resume();
    return null;
  }

  /** The resume point is the newest rv the store applied (never a stale event's), and stays
   * put while a state is being collected: a drop there starts over. */
  _resume() {
    if (this._collecting === null && this.resourceVersion) this._lastId = this.resourceVersion;
  }

  /** What a Status (an ERROR object or an error body) means for the next attempt. */
  _status(status, retryAfterHeader) {
    const code = Number(status.code) || 0;
    const details = status.details || {};
    let floor = Number(retryAfterHeader) > 0 ? Number(retryAfterHeader) * 1000 : 0;
    if (typeof details.retryAfterSeconds === "number") floor = details.retryAfterSeconds * 1000;
    const message = status.message || `HTTP ${code}`;
    if (code === 410) return { end: "relist", message };
    if (code === 401) return { end: "auth", message };
    if (code === 429 || code >= 500) return { end: "retry", floor, message };
    return { end: "fail", code, message };
  }

  // -- connections -------------------------------------------------------------------------

  _requestUrl(extra) {
    const url = new URL(this.url);
    url.searchParams.set("watch", "true");
    for (const [k, v] of Object.entries(extra)) {
      if (v !== null && v !== undefined) url.searchParams.set(k, v);
    }
    return url.toString();
  }

  _close() {
    if (this._source) { this._source.onopen = this._source.onmessage = this._source.onerror = null; this._source.close(); }
    if (this._abort) this._abort.abort();
    this._source = this._abort = null;
  }

  _connect() {
    if (this._stopped) return;
    if (this._collecting !== null && this._collecting.size > 0) {
      // A drop in the middle of the initial state: it starts over, from nothing collected.
      this._collecting = new Map();
      this._lastId = this.synced ? this._lastId : null;
    }
    if (this.mode === "eventsource") this._openEventSource();
    else if (this.mode === "fetch") this._openFetch();
    else this._poll();
  }

  /** The end of an attempt: decide, then reconnect (or not). */
  _after(outcome) {
    this._close();
    if (this._stopped) return;
    const now = this.now();
    const out = outcome || { end: "retry" };
    if (out.end === "fail") {
      this._setState("failed", { code: out.code, message: out.message });
      this._stopped = true;
      return;
    }
    if (out.end === "auth") {
      const getToken = this.options.getToken;
      if (!getToken || this._refreshed) {
        this._setState("signed-out", { code: 401, message: out.message });
        this._stopped = true;
        return;
      }
      this._refreshed = true;
      this._setState("reconnecting", { message: out.message });
      Promise.resolve().then(getToken).then((token) => {
        if (!token) {
          this._setState("signed-out", { code: 401, message: out.message });
          this._stopped = true;
          return;
        }
        this.token = token;
        this.stats.reconnects += 1;
        this._connect();
      }, (err) => this._after({ end: "retry", message: String(err) }));
      return;
    }
    let delay;
    if (out.end === "relist") {
      this._lastId = null;
      this._collecting = new Map();
      this.stats.relists += this.synced ? 1 : 0;
      delay = 0;
    } else if (out.end === "clean" && now - this._openedAt >= 1000) {
      delay = 0;
    } else {
      delay = Math.max(this.backoff.failure(now), out.floor || 0);
    }
    this._setState("reconnecting", { message: out.message, delay });
    this.stats.reconnects += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _opened() {
    this.stats.connects += 1;
    this._openedAt = this.now();
    if (this.synced && this._collecting === null) this._setState("live");
  }

  _openEventSource() {
    const query = { lastEventId: this._lastId || null };
    if (this.token) query[this.tokenParam] = this.token;
    const source = new EventSource(this._requestUrl(query), { withCredentials: !!this.options.withCredentials });
    this._source = source;
    source.onopen = () => this._opened();
    source.onmessage = (e) => {
      const out = this._envelope(e.data);
      if (out) this._after(out);
    };
    source.onerror = () => {
      if (this._collecting !== null && this._collecting.size > 0) {
        // The browser would resume in the middle of the initial state: start over instead.
        this._after({ end: "retry", message: "dropped during the initial state" });
      } else if (source.readyState === EventSource.CLOSED) {
        // A non-200 answer or a wrong type stops EventSource for good, and hides the status:
        // ask for it with a fetch of the same URL, then decide.
        this._close();
        this._probe();
      } else {
        // The browser reconnects by itself (with Last-Event-ID, after the server's retry).
        this._setState("reconnecting");
      }
    };
  }

  async _probe() {
    const abort = new AbortController();
    this._abort = abort;
    // The same request as the EventSource's (its query token included), to see its answer.
    const query = { lastEventId: this._lastId || null };
    if (this.token) query[this.tokenParam] = this.token;
    const headers = { Accept: "text/event-stream" };
    try {
      const response = await fetch(this._requestUrl(query), {
        headers, signal: abort.signal, credentials: this.options.withCredentials ? "include" : "same-origin",
      });
      if (response.ok) {
        abort.abort();
        const type = response.headers.get("Content-Type") || "";
        this._after(type.startsWith("text/event-stream")
          ? { end: "retry", message: "the stream was interrupted" }
          : { end: "fail", code: 0, message: `not an event stream: ${type || "no type"}` });
        return;
      }
      this._after(await this._refusal(response));
    } catch (err) {
      if (!abort.signal.aborted) this._after({ end: "retry", message: String(err) });
    }
  }

  async _refusal(response) {
    let status = { code: response.status, message: `HTTP ${response.status}` };
    try {
      const body = await response.json();
      if (body && typeof body === "object") status = { ...status, ...body, code: response.status };
    } catch { /* not JSON */ }
    return this._status(status, response.headers.get("Retry-After"));
  }

  async _openFetch() {
    const abort = new AbortController();
    this._abort = abort;
    const headers = { Accept: "text/event-stream", ...(this.options.headers || {}) };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (this._lastId) headers["Last-Event-ID"] = this._lastId;
    let outcome;
    try {
      const response = await fetch(this._requestUrl({}), {
        headers, signal: abort.signal, cache: "no-store",
        credentials: this.options.withCredentials ? "include" : "same-origin",
      });
      if (!response.ok) {
        outcome = await this._refusal(response);
      } else if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
        outcome = { end: "fail", code: 0, message: "not an event stream" };
      } else {
        this._opened();
        outcome = await this._readStream(response.body, abort);
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      outcome = { end: "retry", message: String(err) };
    }
    if (!abort.signal.aborted || outcome) this._after(outcome);
  }

  async _readStream(body, abort) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser();
    let retryMs = null;
    // The server writes something every heartbeat interval: a longer silence is a dead
    // connection (a half-open one is never reported by the network stack).
    const silence = this.options.readTimeout || 2 * (this.options.heartbeat || 15) * 1000 + 5000;
    for (;;) {
      let timer;
      const idle = new Promise((resolve) => { timer = setTimeout(resolve, silence, null); });
      const result = await Promise.race([reader.read(), idle]);
      clearTimeout(timer);
      if (result === null) {
        abort.abort();
        return { end: "retry", message: `nothing received for ${silence} ms` };
      }
      const { value, done } = result;
      if (done) return { end: "clean" };
      for (const block of parser.feed(decoder.decode(value, { stream: true }))) {
        if (block.retry !== null) retryMs = block.retry;
        if (block.data === null) {
          // An id-only block is a bookmark: it moves the resume point, nothing else.
          if (block.id !== null && this._collecting === null) {
            this.stats.bookmarks += 1;
            this._advance(block.id);
            this._resume();
          }
          continue;
        }
        const out = this._envelope(block.data);
        if (out) {
          abort.abort();
          if (out.end === "retry" && !out.floor && retryMs) out.floor = retryMs;
          return out;
        }
      }
    }
  }

  async _poll() {
    const abort = new AbortController();
    this._abort = abort;
    const headers = { Accept: "application/json", ...(this.options.headers || {}) };
    const query = { feed: "longpoll", resourceVersion: this._lastId || null, timeoutSeconds: String(this.options.pollTimeout || 30) };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let outcome;
    try {
      const response = await fetch(this._requestUrl(query), {
        headers, signal: abort.signal, cache: "no-store",
        credentials: this.options.withCredentials ? "include" : "same-origin",
      });
      if (!response.ok) {
        outcome = await this._refusal(response);
      } else {
        this._opened();
        const answer = await response.json();
        const initial = !this._lastId;
        for (const env of answer.events || []) {
          const out = this._envelope(JSON.stringify(env));
          if (out) { outcome = out; break; }
        }
        if (!outcome) {
          if (initial) {
            const end = { metadata: { resourceVersion: answer.resourceVersion, annotations: { [INITIAL_EVENTS_END]: "true" } } };
            this._apply({ type: "BOOKMARK", object: end, resourceVersion: answer.resourceVersion });
          } else {
            this._advance(answer.resourceVersion);
          }
          this._resume();
          this._abort = null;
          if (!this._stopped) this._timer = setTimeout(() => this._connect(), 0);
          return;
        }
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      outcome = { end: "retry", message: String(err) };
    }
    this._after(outcome);
  }
}

/** Shorthand: `watch(url, options)` is `new Informer(url, options).start()`. */
export function watch(url, options = {}) {
  return new Informer(url, options).start();
}
