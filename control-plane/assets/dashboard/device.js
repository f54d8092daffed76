// The device page: facts, charts over the bucketed telemetry API with live
// points from telemetry/stream appended, recent logs and events, and the
// reset / disable / delete actions behind confirmation dialogs.

import { ApiError, LiveStream, api, serverNow } from './api.js';
import { Chart } from './chart.js';
import { copyField, newInstallIdDialog, statusBadge } from './enroll.js';
import { certState, labelTexts } from './fleet.js';
import {
  badge, fmtBytes, fmtCelsius, fmtDateTime, fmtDuration, fmtNumber, fmtPercent, fmtRate, fmtRelative, fmtTimeShort, h,
  parseTime, ratio, setText,
} from './util.js';

/** The periods of `telemetry?time_period=` and their bucket sizes (ms). */
export const PERIODS = [
  ['1h', 3600e3, 60e3],
  ['6h', 6 * 3600e3, 300e3],
  ['12h', 12 * 3600e3, 600e3],
  ['24h', 24 * 3600e3, 900e3],
  ['7d', 7 * 86400e3, 3600e3],
  ['30d', 30 * 86400e3, 86400e3],
];
const DEFAULT_PERIOD = '1h';

/** Refresh intervals. Telemetry reads are limited to 60/min per device, logs to 5/min per client. */
export const DEVICE_REFRESH_MS = 5000;
export const EVENTS_REFRESH_MS = 15000;
export const LOGS_REFRESH_MS = 30000;
/** The bucketed series is fetched again every bucket (at least 1 min, at most 5 min). */
const seriesRefreshMs = (bucketMs) => Math.min(Math.max(bucketMs, 60e3), 300e3);
/** Live samples kept in memory (older ones are covered by the next series fetch). */
const LIVE_MAX = 3600;

const LOG_LIMIT = 50;
const EVENT_LIMIT = 25;
const SEVERITY_LEVEL = {
  debug: 'muted', info: 'info', notice: 'info', warning: 'warn', error: 'danger', critical: 'danger', alert: 'danger', emergency: 'danger',
};

const maxOf = (xs) => (xs.length ? Math.max(...xs) : null);
const sumOf = (xs) => xs.reduce((a, b) => a + b, 0);

/**
 * The charts. Each series reads a value from a bucket (`bucket(b, ctx)`) and
 * from a live sample (`sample(s)`); `show(device, buckets)` decides whether
 * the device has that kind of data at all.
 */
const CHARTS = [
  {
    id: 'cpu', title: 'CPU', format: fmtPercent, yMax: 100,
    series: [
      { label: 'average', cls: 's1', bucket: (b) => b.cpu_percent, sample: (s) => s.cpu_percent },
      { label: 'peak', cls: 's3', bucket: (b) => b.cpu_percent_max, sample: (s) => s.cpu_percent },
    ],
  },
  {
    id: 'memory', title: 'Memory', format: fmtPercent, yMax: 100,
    series: [{
      label: 'used', cls: 's2',
      bucket: (b) => ratio(b.memory_used_bytes, b.memory_total_bytes),
      sample: (s) => ratio(s.memory_used_bytes, s.memory_total_bytes),
    }],
  },
  {
    id: 'disk', title: 'Disk', format: fmtPercent, yMax: 100,
    series: [{
      label: 'used', cls: 's4',
      bucket: (b) => ratio(b.disk_used_bytes, b.disk_total_bytes),
      sample: (s) => ratio(s.disk_used_bytes, s.disk_total_bytes),
    }],
  },
  {
    id: 'network', title: 'Network', format: fmtRate, binary: true,
    series: [
      { label: 'rx', cls: 's1', bucket: (b, c) => c.rate(b, b.network_rx_bytes), sample: (s) => s.rxRate },
      { label: 'tx', cls: 's5', bucket: (b, c) => c.rate(b, b.network_tx_bytes), sample: (s) => s.txRate },
    ],
  },
  {
    id: 'load', title: 'Load (1 min)', format: (v) => (v === 0 ? '0' : fmtNumber(v, v < 10 ? 2 : 1)),
    series: [{ label: 'load', cls: 's3', bucket: (b) => b.load_average_1m, sample: (s) => s.load_average['1m'] }],
  },
  {
    id: 'temperature', title: 'Temperature (hottest sensor)', format: fmtCelsius,
    show: (d, bs) => (d.latest_telemetry?.temperatures?.length ?? 0) > 0 || bs.some((b) => b.temperature_max_celsius !== null),
    series: [{
      label: 'max', cls: 's5', bucket: (b) => b.temperature_max_celsius,
      sample: (s) => maxOf(s.temperatures.map((t) => t.celsius)),
    }],
  },
  {
    id: 'gpu', title: 'GPU utilisation', format: fmtPercent, yMax: 100, show: hasGpu,
    series: [{
      label: 'average', cls: 's2', bucket: (b) => b.gpu_utilization_percent,
      sample: (s) => (s.gpus.length ? sumOf(s.gpus.map((g) => g.utilization_percent)) / s.gpus.length : null),
    }],
  },
  {
    id: 'gpu-memory', title: 'GPU memory', format: fmtBytes, binary: true, show: hasGpuMemory,
    series: [{
      label: 'used', cls: 's4', bucket: (b) => b.gpu_memory_used_bytes,
      sample: (s) => (s.gpus.length ? sumOf(s.gpus.map((g) => g.memory_used_bytes)) : null),
    }],
  },
];

/** GPUs with memory of their own (a Jetson shares the system's: no chart). */
function hasGpuMemory(d, buckets) {
  return (d.latest_telemetry?.gpus ?? []).some((g) => g.memory_total_bytes > 0)
    || buckets.some((b) => (b.gpu_memory_used_bytes ?? 0) > 0);
}

function hasGpu(d, buckets) {
  return Boolean(d.hardware?.gpu) || (d.latest_telemetry?.gpus?.length ?? 0) > 0
    || buckets.some((b) => b.gpu_utilization_percent !== null);
}

/**
 * Network rate of a bucket. A bucket's network bytes are max − min of the
 * cumulative counters over its samples, i.e. the traffic between its first
 * and last sample: n samples span (n − 1) sampling intervals. The interval is
 * estimated from the fullest bucket (bucket length / its sample count).
 */
function rateContext(buckets, bucketMs) {
  const fullest = buckets.slice(0, -1).reduce((m, b) => Math.max(m, b.samples), 0)
    || buckets.reduce((m, b) => Math.max(m, b.samples), 0);
  const intervalSec = fullest > 0 ? bucketMs / 1000 / fullest : null;
  return {
    rate(b, bytes) {
      if (!intervalSec || b.samples < 2) return null;
      return bytes / ((b.samples - 1) * intervalSec);
    },
  };
}

/** "42 / 300 W", "42 W", or "–" when the reader has neither. */
function fraction(value, limit, unit) {
  if (!value && !limit) return '–';
  return limit ? `${Math.round(value)} / ${Math.round(limit)} ${unit}` : `${Math.round(value)} ${unit}`;
}

export function deviceView(root, { id, params, navigate, setFlash }) {
  const periodOf = (p) => PERIODS.find(([name]) => name === p) || PERIODS.find(([name]) => name === DEFAULT_PERIOD);
  let [period, periodMs, bucketMs] = periodOf(params.get('period'));
  let device = null;
  let buckets = []; // {t, …BucketView}
  let live = []; // samples from the stream, each with t, rxRate, txRate
  let lastSample = null; // the newest sample seen (device view or stream): the GPU table
  let prevLive = null; // the stream's previous sample (seeded with the device view's): rates, duplicates
  let historyAt = 0; // server time of the last series fetch
  let stream = null;
  let gone = false;
  let seriesTimer = null;
  let logsTimer = null;
  const charts = new Map();
  const timers = new Set();
  const controller = new AbortController();
  const signal = controller.signal;

  // ---- layout -------------------------------------------------------------
  const title = h('h1', {}, 'Device');
  const badges = h('div', { class: 'badges' });
  const facts = h('dl', { class: 'facts' });
  const waiting = h('div', { class: 'notice enroll-wait', 'data-enrollment': '', hidden: true });
  const gpus = h('div', { class: 'gpus' });
  const notice = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const liveState = h('span', { class: 'live-state', 'data-state': 'connecting' }, 'Connecting…');
  const periodButtons = PERIODS.map(([name]) => h('button', {
    type: 'button', class: 'seg', 'data-period': name, 'aria-pressed': String(name === period),
    onclick: () => setPeriod(name),
  }, name));
  const chartGrid = h('div', { class: 'charts' });
  const chartNote = h('p', { class: 'foot' });
  const toggleBtn = h('button', { type: 'button', class: 'btn', 'data-action': 'toggle', onclick: () => toggleEnabled() }, 'Disable');
  const logsBody = h('tbody');
  const logsState = h('span', { class: 'foot' });
  const severity = h('select', { 'aria-label': 'Minimum severity', onchange: () => refreshLogs(true) },
    h('option', { value: '' }, 'All severities'),
    h('option', { value: 'warning' }, 'Warning and worse'),
    h('option', { value: 'error' }, 'Error and worse'));
  const eventsList = h('ol', { class: 'events' });

  root.replaceChildren(h(
    'section',
    { class: 'page device-page', 'data-device-id': id },
    h('nav', { class: 'crumbs' }, h('a', { href: '#/' }, '← Fleet')),
    h(
      'div',
      { class: 'device-head' },
      h('div', { class: 'device-title' }, title, badges),
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'button', class: 'btn', 'data-action': 'reset', onclick: () => resetConnection() }, 'Reset connection'),
        toggleBtn,
        h('button', { type: 'button', class: 'btn btn-danger', 'data-action': 'delete', onclick: () => deleteDevice() }, 'Delete'),
      ),
    ),
    notice,
    waiting,
    h('div', { class: 'panel' }, facts, gpus),
    h(
      'div',
      { class: 'section-head' },
      h('h2', {}, 'Telemetry'),
      liveState,
      h('div', { class: 'segmented', role: 'group', 'aria-label': 'Time period' }, periodButtons),
    ),
    chartGrid,
    chartNote,
    h(
      'div',
      { class: 'two-col' },
      h(
        'section',
        { class: 'panel' },
        h('div', { class: 'section-head' }, h('h2', {}, 'Recent logs'), severity),
        h('div', { class: 'table-wrap' }, h(
          'table',
          { class: 'logs' },
          h('thead', {}, h('tr', {}, ['Time', 'Severity', 'Service', 'Message'].map((c) => h('th', { scope: 'col' }, c)))),
          logsBody,
        )),
        logsState,
      ),
      h('section', { class: 'panel' }, h('div', { class: 'section-head' }, h('h2', {}, 'Events')), eventsList),
    ),
  ));

  // ---- helpers ------------------------------------------------------------
  const later = (f, ms) => {
    const t = setTimeout(() => {
      timers.delete(t);
      if (!signal.aborted) f();
    }, ms);
    timers.add(t);
  };
  const every = (f, ms) => timers.add(setInterval(f, ms));

  function showError(text) {
    setText(notice, text);
    notice.hidden = !text;
  }

  /** The device is gone (deleted here or elsewhere): stop everything. */
  function deviceGone(message) {
    if (gone) return;
    gone = true;
    if (stream) stream.stop();
    showError(message || 'This device no longer exists.');
    setLive('ended', 'Stream ended');
  }

  function setLive(state, text) {
    liveState.dataset.state = state;
    setText(liveState, text);
  }

  // ---- facts --------------------------------------------------------------
  function renderDevice() {
    const d = device;
    document.title = `${d.name} · Outpost`;
    setText(title, d.name);
    badges.replaceChildren(statusBadge(d), d.enabled ? '' : badge('disabled'), badge(d.type, 'type'));
    renderWaiting();
    setText(toggleBtn, d.enabled ? 'Disable' : 'Enable');
    const now = serverNow();
    const t = d.latest_telemetry;
    const cert = certState(d.certificate_expires_at, now);
    const rows = [
      ['Device ID', d.id, 'mono'],
      ['Hostname', d.hostname],
      ['Platform', [d.platform, d.platform_version].filter(Boolean).join(' ')],
      ['Kernel', d.platform_release],
      ['Architecture', d.architecture],
      ['Agent', d.agent_version, 'mono'],
      ['Processor', d.hardware.processor],
      ['GPU', d.hardware.gpu],
      ['Memory', d.hardware.total_memory_mb ? fmtBytes(d.hardware.total_memory_mb * 1048576) : null],
      ['Disk', d.hardware.total_disk_space_mb ? fmtBytes(d.hardware.total_disk_space_mb * 1048576) : null],
      ['Uptime', t ? fmtDuration(t.uptime_secs * 1000) : null],
      ['Last heartbeat', fmtRelative(parseTime(d.last_heartbeat), now)],
      ['Certificate', cert.text, `level-${cert.level}`],
      ['Config', `version ${d.config_applied_version} applied of ${d.config_version}`],
      ['Artifacts', Object.entries(d.artifacts || {}).sort().map(([n, v]) => `${n}@${v}`).join(', ') || null, 'mono artifacts'],
      ['Created', fmtDateTime(parseTime(d.created_at))],
    ];
    const labels = labelTexts(d);
    if (labels.length) rows.splice(1, 0, ['Labels', labels.join(', ')]);
    if (d.description) rows.splice(1, 0, ['Description', d.description]);
    facts.replaceChildren(...rows.filter(([, v]) => v).map(([k, v, cls]) => h(
      'div',
      { class: 'fact' },
      h('dt', {}, k),
      h('dd', { class: cls || null }, v),
    )));
    renderGpus();
  }

  /** A device that has not enrolled: say so, and offer a new install ID. */
  function renderWaiting() {
    const d = device;
    if (!d.enrollment || d.enrollment === 'enrolled') {
      waiting.hidden = true;
      return;
    }
    const until = parseTime(d.install_id_expires_at);
    const text = d.enrollment === 'pending'
      ? `Waiting for the box to enroll. Its install ID is valid until ${until === null ? '–' : fmtDateTime(until)}.`
      : 'Waiting for the box to enroll, but its install ID has expired: issue a new one.';
    waiting.dataset.enrollment = d.enrollment;
    waiting.replaceChildren(
      h('span', {}, text),
      h('button', {
        type: 'button',
        class: 'btn',
        'data-action': 'new-install-id',
        onclick: () => newInstallIdDialog(d.id, () => refreshDevice()),
      }, 'New install ID'),
    );
    waiting.hidden = false;
  }

  function renderGpus() {
    const sample = lastSample;
    if (!sample || !sample.gpus.length) {
      gpus.replaceChildren();
      return;
    }
    gpus.replaceChildren(h(
      'table',
      { class: 'gpu-table' },
      h('thead', {}, h('tr', {}, ['GPU', 'Utilisation', 'Memory', 'Temperature', 'Power', 'Clock']
        .map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, sample.gpus.map((g) => h(
        'tr',
        {},
        h('td', { 'data-label': 'GPU' }, `${g.index}: ${g.name}`),
        h('td', { 'data-label': 'Utilisation' }, fmtPercent(g.utilization_percent)),
        h('td', { 'data-label': 'Memory' }, g.memory_total_bytes
          ? `${fmtBytes(g.memory_used_bytes)} / ${fmtBytes(g.memory_total_bytes)}` : 'shared with the system'),
        h('td', { 'data-label': 'Temperature' }, fmtCelsius(g.temperature_celsius)),
        h('td', { 'data-label': 'Power' }, fraction(g.power_watts, g.power_limit_watts, 'W')),
        h('td', { 'data-label': 'Clock' }, fraction(g.clock_mhz, g.max_clock_mhz, 'MHz')),
      ))),
    ));
  }

  async function refreshDevice() {
    try {
      device = await api(`devices/v2/${encodeURIComponent(id)}`, { signal });
      const t = device.latest_telemetry;
      if (t && (!lastSample || t.seq > lastSample.seq)) lastSample = { ...t, t: parseTime(t.timestamp) };
      if (notice.dataset.source === 'device') showError('');
      renderDevice();
      ensureCharts();
      return true;
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return false;
      if (e.status === 404) {
        deviceGone('This device does not exist (or was deleted).');
        return false;
      }
      notice.dataset.source = 'device';
      showError(`Could not refresh the device: ${e.message}`);
      return false;
    } finally {
      if (!gone) later(refreshDevice, DEVICE_REFRESH_MS);
    }
  }

  // ---- charts -------------------------------------------------------------
  function ensureCharts() {
    for (const def of CHARTS) {
      if (charts.has(def.id) || (def.show && !def.show(device, buckets))) continue;
      const chart = new Chart(def);
      charts.set(def.id, chart);
      // Keep the order of CHARTS whatever order they appear in.
      const after = CHARTS.slice(CHARTS.indexOf(def) + 1).map((d) => charts.get(d.id)).find(Boolean);
      chartGrid.insertBefore(chart.el, after ? after.el : null);
    }
    drawCharts();
  }

  function drawCharts() {
    const now = serverNow();
    const domain = [now - periodMs, now];
    const ctx = rateContext(buckets, bucketMs);
    // A line breaks where points are further apart than this (device offline).
    const gap = Math.max(2.5 * bucketMs, 60e3);
    for (const def of CHARTS) {
      const chart = charts.get(def.id);
      if (!chart) continue;
      const data = def.series.map((sr) => [
        ...buckets.map((b) => [b.t, sr.bucket(b, ctx) ?? null]),
        ...live.map((smp) => [smp.t, sr.sample(smp) ?? null]),
      ]);
      chart.set(data, domain, gap);
    }
  }

  async function refreshSeries() {
    const fetchedAt = serverNow();
    const [name, , bMs] = periodOf(period);
    let next = seriesRefreshMs(bMs);
    try {
      const body = await api(`devices/v2/${encodeURIComponent(id)}/telemetry`, { query: { time_period: name }, signal });
      if (name !== period) return; // the period changed meanwhile; its own fetch draws
      buckets = body.data.map((b) => ({ ...b, t: parseTime(b.timestamp) }));
      historyAt = fetchedAt;
      // Live points before the fetch are in the buckets now.
      live = live.filter((smp) => smp.t >= historyAt);
      setText(chartNote, `Averages per ${body.bucket.toLowerCase()} (CPU also its peak) since ${fmtDateTime(parseTime(body.start_time))}; live samples are appended as they arrive.`);
      if (notice.dataset.source === 'series') showError('');
      if (device) ensureCharts();
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      if (e.status === 404) {
        deviceGone();
        return;
      }
      if (e.retryAfter) next = e.retryAfter;
      notice.dataset.source = 'series';
      showError(`Could not load telemetry: ${e.message}`);
    }
    if (name === period) seriesTimer = scheduleSeries(next);
  }

  function scheduleSeries(ms) {
    clearTimeout(seriesTimer);
    const t = setTimeout(() => {
      timers.delete(t);
      if (!signal.aborted && !gone) refreshSeries();
    }, ms);
    timers.add(t);
    return t;
  }

  function setPeriod(name) {
    if (name === period) return;
    [period, periodMs, bucketMs] = periodOf(name);
    for (const b of periodButtons) b.setAttribute('aria-pressed', String(b.dataset.period === period));
    // Keep the period in the address (without a new history entry).
    history.replaceState(null, '', `#/devices/${encodeURIComponent(id)}?period=${period}`);
    buckets = [];
    drawCharts();
    clearTimeout(seriesTimer);
    refreshSeries();
  }

  function onSample(raw) {
    const smp = { ...raw, t: parseTime(raw.timestamp) };
    if (prevLive && smp.seq <= prevLive.seq) return; // already seen
    // Rates between consecutive samples; a counter that went down (reboot) gives none.
    const dt = prevLive ? (smp.t - prevLive.t) / 1000 : 0;
    const rate = (a, b) => (dt > 0 && a >= b ? (a - b) / dt : null);
    smp.rxRate = prevLive ? rate(smp.network_rx_bytes, prevLive.network_rx_bytes) : null;
    smp.txRate = prevLive ? rate(smp.network_tx_bytes, prevLive.network_tx_bytes) : null;
    prevLive = smp;
    if (smp.t >= historyAt) live.push(smp);
    if (live.length > LIVE_MAX) live = live.slice(-LIVE_MAX);
    if (!lastSample || smp.seq > lastSample.seq) lastSample = smp;
    if (device) {
      ensureCharts();
      renderGpus();
    }
  }

  function startStream() {
    const seed = device?.latest_telemetry;
    // The stream resumes right after the device view's newest sample.
    prevLive = seed ? { ...seed, t: parseTime(seed.timestamp) } : null;
    stream = new LiveStream(id, {
      afterSeq: device?.latest_telemetry?.seq ?? null,
      onSample,
      onState(state, detail) {
        if (state === 'live') setLive('live', 'Live');
        else if (state === 'connecting') setLive('connecting', 'Connecting…');
        else if (state === 'retrying') setLive('retrying', `Disconnected: ${detail}`);
        else if (state === 'ended') deviceGone(detail);
      },
    }).start();
  }

  // ---- logs and events ----------------------------------------------------
  async function refreshLogs(now) {
    if (now) clearTimeout(logsTimer);
    let next = LOGS_REFRESH_MS;
    const query = { limit: String(LOG_LIMIT) };
    if (severity.value) query.severity = severity.value;
    try {
      const body = await api(`devices/v2/${encodeURIComponent(id)}/logs`, { query, signal });
      logsBody.replaceChildren(...body.data.map((l) => {
        const ts = parseTime(l.timestamp);
        return h(
          'tr',
          { 'data-level': SEVERITY_LEVEL[l.severity] || 'info' },
          h('td', { 'data-label': 'Time', class: 'when', title: fmtDateTime(ts) }, fmtTimeShort(ts, serverNow())),
          h('td', { 'data-label': 'Severity' }, h('span', { class: 'sev' }, l.severity)),
          h('td', { 'data-label': 'Service', class: 'mono' }, l.service),
          h('td', { 'data-label': 'Message', class: 'msg' }, l.message),
        );
      }));
      if (!body.data.length) {
        logsBody.replaceChildren(h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No log lines.')));
      }
      setText(logsState, `Newest ${LOG_LIMIT} lines · updated ${fmtTimeShort(serverNow())} · every ${LOGS_REFRESH_MS / 1000} s`);
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      if (e.retryAfter) next = e.retryAfter;
      setText(logsState, e.status === 429
        ? `Log reads are rate limited (5 a minute per client); retrying in ${Math.round(next / 1000)} s`
        : `Could not load logs: ${e.message}`);
    }
    if (!gone && !signal.aborted) {
      clearTimeout(logsTimer);
      logsTimer = setTimeout(() => refreshLogs(false), next);
      timers.add(logsTimer);
    }
  }

  async function refreshEvents() {
    try {
      const body = await api(`devices/v2/${encodeURIComponent(id)}/events`, { query: { limit: String(EVENT_LIMIT) }, signal });
      eventsList.replaceChildren(...body.data.map((ev) => {
        const ts = parseTime(ev.timestamp);
        const detail = ev.detail && Object.keys(ev.detail).length
          ? Object.entries(ev.detail).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ')
          : '';
        return h(
          'li',
          { 'data-type': ev.type },
          h('span', { class: 'event-type' }, ev.type.replaceAll('_', ' ')),
          h('time', { datetime: ev.timestamp, title: fmtDateTime(ts) }, fmtRelative(ts, serverNow())),
          detail ? h('span', { class: 'event-detail' }, detail) : null,
        );
      }));
      if (!body.data.length) eventsList.replaceChildren(h('li', { class: 'empty' }, 'No events.'));
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      eventsList.replaceChildren(h('li', { class: 'empty' }, `Could not load events: ${e.message}`));
    }
    if (!gone) later(refreshEvents, EVENTS_REFRESH_MS);
  }

  // ---- actions ------------------------------------------------------------
  function resetConnection() {
    const force = h('input', { type: 'checkbox', id: 'reset-force' });
    confirmDialog({
      title: `Reset the connection of ${device ? device.name : id}?`,
      body: [
        h('p', {}, 'A new device API key is issued and the previous one stops working. A connected agent is asked to rotate its certificate now.'),
        h('label', { class: 'check', for: 'reset-force' }, force,
          h('span', {}, h('strong', {}, 'Force'), ': the box is compromised — revoke every certificate and key at once, cut its connection, and issue a new install ID (the box must enroll again).')),
      ],
      confirm: 'Reset connection',
      danger: true,
      async run() {
        const token = await api(`devices/v2/${encodeURIComponent(id)}/connections/reset`, {
          method: 'POST', query: force.checked ? { force: 'true' } : undefined,
        });
        showSecret(token);
        refreshEvents();
      },
    });
  }

  function toggleEnabled() {
    if (!device) return;
    const enable = !device.enabled;
    confirmDialog({
      title: `${enable ? 'Enable' : 'Disable'} ${device.name}?`,
      body: [h('p', {}, enable
        ? 'The device may connect and send telemetry again.'
        : 'The device is disconnected at once and refused until it is enabled again. Its data is kept.')],
      confirm: enable ? 'Enable' : 'Disable',
      danger: !enable,
      async run() {
        device = await api(`devices/v2/${encodeURIComponent(id)}`, { method: 'PATCH', body: { enabled: enable } });
        renderDevice();
      },
    });
  }

  function deleteDevice() {
    const name = device ? device.name : id;
    confirmDialog({
      title: `Delete ${name}?`,
      body: [h('p', {}, 'Its certificates and keys are revoked, its connection is cut, and it disappears from the fleet. This cannot be undone.')],
      confirm: 'Delete device',
      danger: true,
      async run() {
        await api(`devices/v2/${encodeURIComponent(id)}`, { method: 'DELETE' });
        setFlash({ kind: 'info', text: `Deleted ${name}.` });
        navigate('#/');
      },
    });
  }

  // ---- start --------------------------------------------------------------
  (async () => {
    await refreshDevice();
    if (gone || signal.aborted) return;
    refreshSeries();
    startStream();
    refreshLogs(false);
    refreshEvents();
    every(drawCharts, 10000); // slide the time axis even when no sample arrives
  })();

  return {
    destroy() {
      controller.abort();
      if (stream) stream.stop();
      for (const t of timers) {
        clearTimeout(t);
        clearInterval(t);
      }
      for (const c of charts.values()) c.destroy();
    },
  };
}

/**
 * A modal <dialog>: `run()` on confirm; its error (the server's message)
 * is shown in the dialog, which stays open for another try.
 */
export function confirmDialog({ title, body, confirm, danger, run }) {
  const error = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const ok = h('button', { type: 'submit', class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, value: 'ok' }, confirm);
  const cancel = h('button', { type: 'button', class: 'btn', value: 'cancel' }, 'Cancel');
  const form = h('form', { method: 'dialog' }, h('h2', {}, title), ...body, error, h('div', { class: 'dialog-actions' }, cancel, ok));
  const dialog = h('dialog', { class: 'dialog' }, form);
  cancel.addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => dialog.remove());
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    ok.disabled = true;
    cancel.disabled = true;
    error.hidden = true;
    try {
      await run();
      dialog.close();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        dialog.close();
        return;
      }
      setText(error, err.message || String(err));
      error.hidden = false;
      ok.disabled = false;
      cancel.disabled = false;
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  cancel.focus();
  return dialog;
}

/** Shows a reset's new credentials once, with copy buttons. */
function showSecret(token) {
  const rows = [['Device API key', token.apiKey]];
  if (token.installCommand) rows.push(['Install command', token.installCommand]);
  const close = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Done');
  const dialog = h('dialog', { class: 'dialog' }, h(
    'form',
    { method: 'dialog' },
    h('h2', {}, 'Connection reset'),
    h('p', {}, token.installId
      ? 'Every credential of the device was revoked. Enroll the box again with the install command below.'
      : token.rotationRequested
        ? 'The connected agent was asked to rotate its certificate.'
        : 'The agent is not connected; it rotates at its next connection.'),
    h('p', {}, 'These are shown only once:'),
    ...rows.map(([label, value]) => copyField(label, value)),
    h('div', { class: 'dialog-actions' }, close),
  ));
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}
