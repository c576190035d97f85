// The daemon's API as the studio calls it: same origin, JSON, the session cookie (when the daemon has a
// token) sent by the browser itself. Errors keep the daemon's stable code and message.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err.details || {};
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    // The daemon did not answer at all (stopped, restarting): one code the page knows, not "Failed to fetch".
    throw new ApiError(0, { error: { code: "daemon_offline", message: "The daemon is not answering." } });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// One /events WebSocket for the whole page, reconnecting with backoff. Listeners get every event; on
// (re)connect they get {type: "open"} so a view can catch up with one GET (events missed meanwhile).
// The socket closing is how the page learns the daemon went away: at once on a stop (the TCP connection
// ends), so `offlineSince` is set within a moment and the retries stay short (at most 2 s apart) to say
// "back" soon after it is.
export class Events {
  constructor() {
    this.listeners = new Set();
    this.state = "connecting";
    this.retry = 250;
    this.offlineSince = null;
    this.onstate = () => {};
  }
  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/events`);
    ws.onopen = () => {
      const back = this.offlineSince !== null;
      this.retry = 250;
      this.offlineSince = null;
      this.setState("live");
      this.emit({ type: "open", reconnected: back });
    };
    ws.onmessage = (msg) => { try { this.emit(JSON.parse(msg.data)); } catch { /* not ours */ } };
    ws.onclose = () => {
      if (this.offlineSince === null) this.offlineSince = new Date();
      this.setState("offline");
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 2000);
    };
    this.ws = ws;
  }
  get online() { return this.state === "live"; }
  setState(state) { this.state = state; this.onstate(state); }
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  emit(ev) { for (const fn of [...this.listeners]) { try { fn(ev); } catch (e) { console.warn(e); } } }
}
