// The fleet page: every device of the workspace in a table (cards on a
// phone), refreshed every FLEET_REFRESH_MS while the tab is visible.

import { listDevices, serverNow } from './api.js';
import { addDeviceDialog, statusBadge, statusKey } from './enroll.js';
import {
  badge, fmtBytes, fmtDateTime, fmtRelative, h, meter, parseTime, ratio, setText,
} from './util.js';

/** How often the device list is fetched (device list reads are not rate limited). */
export const FLEET_REFRESH_MS = 5000;

/**
 * Certificates closer than this to expiry are flagged. Agents rotate at two
 * thirds of the lifetime (2.3 days before the end with the default 7-day
 * certificates), so a healthy device never gets here.
 */
export const CERT_WARN_MS = 2 * 86400 * 1000;

const COLUMNS = ['Device', 'Status', 'Last heartbeat', 'CPU', 'Memory', 'Disk', 'Agent', 'Certificate', 'Type'];
const CELL_CLASSES = ['name', 'status', 'heartbeat', 'cpu', 'memory', 'disk', 'agent', 'cert', 'type'];
/** Labels of the cells when the table is shown as cards (phones). */
const CARD_LABELS = ['Device', 'Status', 'Heartbeat', 'CPU', 'Memory', 'Disk', 'Agent', 'Certificate', 'Type'];

/** Text and level of a certificate expiry: ok, warn (soon) or danger (expired). */
export function certState(expiresAt, now) {
  const t = parseTime(expiresAt);
  if (t === null) return { text: '–', level: 'none' };
  if (t <= now) return { text: `expired ${fmtRelative(t, now)}`, level: 'danger' };
  return { text: `expires ${fmtRelative(t, now)}`, level: t - now < CERT_WARN_MS ? 'warn' : 'ok' };
}

function makeRow(navigate) {
  const link = h('a', { class: 'name' });
  const sub = h('span', { class: 'sub' });
  const labels = h('span', { class: 'labels' });
  const status = h('span', { class: 'badges' });
  const heartbeat = h('span', { class: 'when' });
  const cpu = meter();
  const mem = meter();
  const disk = meter();
  const agent = h('span', { class: 'mono' });
  const cert = h('span', { class: 'cert' });
  const type = h('span', { class: 'type' });
  const cells = [[link, sub, labels], status, heartbeat, cpu.el, mem.el, disk.el, agent, cert, type];
  const tr = h(
    'tr',
    {},
    cells.map((c, i) => h('td', { 'data-label': CARD_LABELS[i], class: `cell-${CELL_CLASSES[i]}` }, c)),
  );
  // The whole row opens the device; the name stays a real link (keyboard, new tab).
  tr.addEventListener('click', (e) => {
    if (!e.target.closest('a') && !window.getSelection().toString()) navigate(link.getAttribute('href'));
  });
  return { tr, link, sub, labels, status, heartbeat, cpu, mem, disk, agent, cert, type, device: null };
}

function fillRow(r, d) {
  const prev = r.device;
  r.device = d;
  r.tr.dataset.deviceId = d.id;
  r.tr.dataset.status = statusKey(d);
  r.link.setAttribute('href', `#/devices/${encodeURIComponent(d.id)}`);
  setText(r.link, d.name);
  setText(r.sub, d.hostname || d.id);
  if (!prev || prev.status !== d.status || prev.enabled !== d.enabled || prev.enrollment !== d.enrollment) {
    r.status.replaceChildren(statusBadge(d), d.enabled ? '' : badge('disabled'));
  }
  const shownLabels = labelTexts(d).join(' ');
  if (!prev || labelTexts(prev).join(' ') !== shownLabels) {
    r.labels.replaceChildren(...labelTexts(d).map((l) => h('span', { class: 'label-chip' }, l)));
  }
  const t = d.latest_telemetry;
  r.cpu.set(t ? t.cpu_percent : null, t ? `CPU ${t.cpu_percent.toFixed(1)} %` : '');
  r.mem.set(
    t ? ratio(t.memory_used_bytes, t.memory_total_bytes) : null,
    t ? `${fmtBytes(t.memory_used_bytes)} of ${fmtBytes(t.memory_total_bytes)}` : '',
  );
  r.disk.set(
    t ? ratio(t.disk_used_bytes, t.disk_total_bytes) : null,
    t ? `${fmtBytes(t.disk_used_bytes)} of ${fmtBytes(t.disk_total_bytes)}` : '',
  );
  setText(r.agent, d.agent_version || '–');
  setText(r.type, d.type);
  tick(r);
}

/** The parts of a row that change with the clock alone. */
function tick(r) {
  const now = serverNow();
  const d = r.device;
  const hb = parseTime(d.last_heartbeat);
  setText(r.heartbeat, fmtRelative(hb, now));
  r.heartbeat.title = hb === null ? '' : fmtDateTime(hb);
  const c = certState(d.certificate_expires_at, now);
  setText(r.cert, c.text);
  r.cert.dataset.level = c.level;
  r.cert.title = d.certificate_expires_at ? fmtDateTime(parseTime(d.certificate_expires_at)) : '';
}

/** A device's labels as `key=value` texts, sorted. */
export function labelTexts(d) {
  return Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`).sort();
}

/**
 * The filter: every word must match something — a field, or a label given
 * as `key=value` (exactly) or `key` (has it).
 */
export function matches(d, q) {
  if (!q) return true;
  const labels = d.labels || {};
  const fields = [d.name, d.id, d.hostname, d.agent_version, d.status, statusKey(d), d.type, d.platform];
  return q.split(/\s+/).every((word) => {
    const eq = word.indexOf('=');
    if (eq > 0) {
      const k = word.slice(0, eq);
      const v = word.slice(eq + 1);
      return Object.entries(labels).some(([lk, lv]) => lk.toLowerCase() === k && lv.toLowerCase() === v);
    }
    return Object.keys(labels).some((k) => k.toLowerCase() === word)
      || fields.some((v) => v && v.toLowerCase().includes(word));
  });
}

export function fleetView(root, { navigate, workspace }) {
  document.title = 'Fleet · Outpost';
  const rows = new Map();
  let devices = [];
  let loadedAt = null;
  let timer = null;
  let ticker = null;
  let controller = null;
  let destroyed = false;

  const summary = h('div', { class: 'summary', 'aria-live': 'polite' });
  const filter = h('input', {
    type: 'search', class: 'filter', placeholder: 'Filter: text, key=value', 'aria-label': 'Filter devices',
    autocomplete: 'off', spellcheck: 'false',
  });
  const notice = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const addBtn = h('button', {
    type: 'button',
    class: 'btn btn-primary',
    'data-action': 'add-device',
    onclick: () => addDeviceDialog({ onCreated: () => poll() }),
  }, 'Add device');
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'fleet', 'data-loading': '' },
    h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', { scope: 'col' }, c)))),
    tbody,
  );
  const empty = h('div', { class: 'empty-state', hidden: true });
  const updated = h('p', { class: 'foot' });
  root.replaceChildren(
    h(
      'section',
      { class: 'page fleet-page' },
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Fleet'), summary), h('div', { class: 'head-tools' }, filter, addBtn)),
      notice,
      h('div', { class: 'table-wrap' }, table),
      empty,
      updated,
    ),
  );

  function render() {
    const q = filter.value.trim().toLowerCase();
    const shown = devices
      .filter((d) => matches(d, q))
      .sort((a, b) => a.name.localeCompare(b.name, undefined, { sensitivity: 'base' }) || a.id.localeCompare(b.id));
    const seen = new Set();
    shown.forEach((d, i) => {
      seen.add(d.id);
      let r = rows.get(d.id);
      if (!r) {
        r = makeRow(navigate);
        rows.set(d.id, r);
      }
      fillRow(r, d);
      if (tbody.children[i] !== r.tr) tbody.insertBefore(r.tr, tbody.children[i] || null);
    });
    for (const [id, r] of rows) {
      if (!seen.has(id)) {
        r.tr.remove();
        rows.delete(id);
      }
    }
    const count = (st) => devices.filter((d) => statusKey(d) === st).length;
    summary.replaceChildren(
      h('span', {}, `${devices.length} device${devices.length === 1 ? '' : 's'}`),
      ...['online', 'offline', 'unknown', 'pending']
        .filter((st) => st !== 'pending' || count(st) > 0)
        .map((st) => h('span', { class: `count count-${st}` }, `${count(st)} ${st}`)),
    );
    table.hidden = shown.length === 0;
    empty.hidden = shown.length !== 0;
    if (devices.length === 0) {
      empty.replaceChildren(
        h('h2', {}, 'No devices yet'),
        h('p', {}, 'Use ', h('strong', {}, 'Add device'), ' (or ', h('code', {}, `POST /${workspace}/devices/v2`),
          ', or outpostctl), then run the install command it shows on the box.'),
      );
    } else if (shown.length === 0) {
      empty.replaceChildren(h('p', {}, 'No device matches the filter.'));
    }
  }

  async function poll() {
    clearTimeout(timer);
    if (destroyed || document.hidden) return; // resumed by visibilitychange
    controller = new AbortController();
    let next = FLEET_REFRESH_MS;
    try {
      devices = await listDevices({ signal: controller.signal });
      loadedAt = serverNow();
      table.removeAttribute('data-loading');
      notice.hidden = true;
      render();
      everySecond();
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      setText(notice, `Could not refresh the fleet: ${e.message}`);
      notice.hidden = false;
      if (e.retryAfter) next = e.retryAfter;
    }
    if (!destroyed) timer = setTimeout(poll, next);
  }

  function everySecond() {
    for (const r of rows.values()) tick(r);
    setText(updated, loadedAt === null ? 'Loading…'
      : `Updated ${fmtRelative(loadedAt, serverNow())} · refreshes every ${FLEET_REFRESH_MS / 1000} s`
        + (devices.truncated ? ` · showing the first ${devices.length} devices (use outpostctl or the API for the rest)` : ''));
  }

  const onVisible = () => {
    if (!document.hidden) poll();
  };
  filter.addEventListener('input', render);
  document.addEventListener('visibilitychange', onVisible);
  ticker = setInterval(everySecond, 1000);
  everySecond();
  poll();

  return {
    destroy() {
      destroyed = true;
      clearTimeout(timer);
      clearInterval(ticker);
      if (controller) controller.abort();
      document.removeEventListener('visibilitychange', onVisible);
    },
  };
}
