// The REST API as the dashboard uses it: the session (workspace + API key in
// sessionStorage, sent only in the Authorization header), JSON calls with the
// server's error messages, the server's clock, and a Server-Sent Events
// reader for telemetry/stream built on fetch() (EventSource cannot send an
// Authorization header, and the key must never travel in a URL).

import { sleep } from './util.js';

const KEY = 'outpost.apiKey';
const WORKSPACE = 'outpost.workspace';

export const session = {
  get() {
    const workspace = sessionStorage.getItem(WORKSPACE);
    const key = sessionStorage.getItem(KEY);
    return workspace && key ? { workspace, key } : null;
  },
  set(workspace, key) {
    sessionStorage.setItem(WORKSPACE, workspace);
    sessionStorage.setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(WORKSPACE);
    sessionStorage.removeItem(KEY);
  },
};

/** An HTTP error with the server's message (`retryAfter` in ms on a 429). */
export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// Called with the server's message when a key is refused (401); set by app.js.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

// Server time minus local time, from the Date header of each answer, so
// "12 s ago" is right even when this machine's clock is off.
let clockOffset = 0;
export function serverNow() {
  return Date.now() + clockOffset;
}
function noteServerDate(resp) {
  const d = Date.parse(resp.headers.get('date') || '');
  // The header has whole seconds: only correct offsets larger than that.
  if (!Number.isNaN(d) && Math.abs(d + 500 - Date.now() - clockOffset) > 1500) {
    clockOffset = d + 500 - Date.now();
  }
}

function retryAfterMs(resp) {
  const secs = Number.parseInt(resp.headers.get('retry-after') || '', 10);
  return Number.isFinite(secs) ? Math.max(1, secs) * 1000 : 5000;
}

/** The message of an error answer: `{error: "…"}`, `{error: {message}}`, or plain text. */
async function errorOf(resp) {
  const text = await resp.text().catch(() => '');
  let message = text.trim() || `${resp.status} ${resp.statusText}`;
  try {
    const body = JSON.parse(text);
    if (typeof body.error === 'string') message = body.error;
    else if (body.error && typeof body.error.message === 'string') message = body.error.message;
  } catch {
    // not JSON: the plain text is the message (the logs limiter's 429)
  }
  return new ApiError(resp.status, message, resp.status === 429 ? retryAfterMs(resp) : undefined);
}

/** The workspace-relative URL of an API path, e.g. `devices/v2/ID/logs`. */
export function wsPath(path, query) {
  const s = session.get();
  const ws = encodeURIComponent(s ? s.workspace : '');
  const q = query ? `?${new URLSearchParams(query)}` : '';
  return `/${ws}/${path}${q}`;
}

function authHeaders(extra) {
  const s = session.get();
  return { ...(s ? { Authorization: `Bearer ${s.key}` } : {}), ...extra };
}

/**
 * Calls the API; resolves to the JSON body (null for 204) or throws an
 * ApiError. A 401 also ends the session (unless `signingIn`).
 */
export async function api(path, { method = 'GET', query, body, signal, credentials, signingIn } = {}) {
  const headers = authHeaders(body === undefined ? {} : { 'Content-Type': 'application/json' });
  if (credentials) headers.Authorization = `Bearer ${credentials.key}`;
  const url = credentials
    ? `/${encodeURIComponent(credentials.workspace)}/${path}${query ? `?${new URLSearchParams(query)}` : ''}`
    : wsPath(path, query);
  let resp;
  try {
    resp = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The control plane cannot be reached.');
  }
  noteServerDate(resp);
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401 && !signingIn) onUnauthorized(err.message);
    throw err;
  }
  if (resp.status === 204) return null;
  return resp.json();
}

/** Every device of the workspace (walks the pages; at most `max`, then `.truncated`). */
export async function listDevices({ signal, max = 5000 } = {}) {
  const out = [];
  let cursor = null;
  do {
    const query = { limit: '500' };
    if (cursor) query.cursor = cursor;
    const page = await api('devices/v2', { query, signal });
    out.push(...page.data);
    cursor = page.pagination && page.pagination.has_more ? page.pagination.next_cursor : null;
  } while (cursor && out.length < max);
  // More than `max`: the caller says so rather than hiding the rest.
  out.truncated = Boolean(cursor);
  return out;
}

/**
 * A device's live telemetry: `onSample(sample)` for each `sample` event,
 * resuming after the last seq (Last-Event-ID) when the connection drops,
 * with exponential backoff (1 s … 30 s, jittered; a 429 waits as told).
 * `onState(state, detail)`: 'connecting' | 'live' | 'retrying' | 'ended'.
 */
export class LiveStream {
  constructor(deviceId, { afterSeq, onSample, onState }) {
    this.deviceId = deviceId;
    this.lastId = afterSeq ?? null;
    this.onSample = onSample;
    this.onState = onState || (() => {});
    this.controller = null;
    this.stopped = false;
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let backoff = 1000;
    while (!this.stopped) {
      let retryAfter = null;
      let problem = 'the stream ended';
      this.controller = new AbortController();
      this.onState('connecting');
      try {
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (this.lastId !== null) headers['Last-Event-ID'] = String(this.lastId);
        const resp = await fetch(wsPath(`devices/v2/${encodeURIComponent(this.deviceId)}/telemetry/stream`), {
          headers,
          signal: this.controller.signal,
          cache: 'no-store',
          credentials: 'omit',
        });
        noteServerDate(resp);
        if (!resp.ok) {
          const err = await errorOf(resp);
          if (resp.status === 401) {
            onUnauthorized(err.message);
            return;
          }
          if (resp.status === 404 || resp.status === 403) {
            this.onState('ended', err.message);
            return;
          }
          if (err.retryAfter) retryAfter = err.retryAfter;
          throw err;
        }
        this.onState('live');
        const reason = await this.read(resp.body, () => {
          backoff = 1000;
        });
        if (reason === 'device_deleted') {
          this.onState('ended', 'The device was deleted.');
          return;
        }
        if (reason === 'api_key_revoked') {
          onUnauthorized('The API key was revoked.');
          return;
        }
        if (reason) problem = `the stream ended (${reason.replaceAll('_', ' ')})`;
      } catch (e) {
        if (this.stopped) return;
        problem = e instanceof ApiError ? e.message : 'connection lost';
      }
      if (this.stopped) return;
      const wait = retryAfter ?? backoff;
      this.onState('retrying', `${problem}; reconnecting in ${Math.round(wait / 1000)} s`);
      await sleep(wait * (0.8 + Math.random() * 0.4));
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  /**
   * Reads events until the stream ends; returns the `end` event's reason
   * (or null when the connection closed without one). A silent connection
   * (no keep-alive for 45 s; the server sends one every 15 s) is dropped.
   */
  async read(body, onProgress) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.controller.abort(), 45000);
    };
    const parser = new SseParser();
    try {
      arm();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return null;
        arm();
        for (const ev of parser.push(value)) {
          if (ev.id !== null) this.lastId = ev.id;
          if (ev.event === 'sample') {
            let sample;
            try {
              sample = JSON.parse(ev.data);
            } catch {
              continue;
            }
            onProgress();
            this.onSample(sample);
          } else if (ev.event === 'end') {
            try {
              return JSON.parse(ev.data).reason || 'ended';
            } catch {
              return 'ended';
            }
          }
        }
      }
    } finally {
      clearTimeout(watchdog);
      reader.cancel().catch(() => {});
    }
  }
}

/** The text/event-stream format: feed chunks, get whole events back. */
export class SseParser {
  constructor() {
    this.buf = '';
    this.reset();
  }

  reset() {
    this.event = '';
    this.data = [];
    this.id = null;
  }

  *push(chunk) {
    this.buf += chunk;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buf);
      // A lone \r at the end may be half of a \r\n: wait for more.
      if (!m || (m[0] === '\r' && m.index === this.buf.length - 1)) return;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      if (line === '') {
        if (this.data.length > 0) {
          yield { event: this.event || 'message', data: this.data.join('\n'), id: this.id };
        }
        this.reset();
        continue;
      }
      if (line.startsWith(':')) continue; // a comment (keep-alive)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.event = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
  }
}
