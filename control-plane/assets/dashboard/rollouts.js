// Rollouts: the list (#/rollouts) and one rollout (#/rollouts/ID) with its
// waves, every device's state, and pause / resume / approve / abort.
// Refreshed every ROLLOUT_REFRESH_MS while the tab is visible.

import { api, serverNow } from './api.js';
import { confirmDialog } from './device.js';
import { badge, fmtDateTime, fmtRelative, h, parseTime, setText } from './util.js';

export const ROLLOUT_REFRESH_MS = 2000;

/** Which operator actions a rollout's state allows (the server decides; this only hides buttons). */
export function allowedActions(r) {
  if (r.state === 'running') return ['pause', 'abort'];
  if (r.state === 'paused') {
    return r.reason === 'awaiting approval' ? ['approve', 'abort'] : ['resume', 'abort'];
  }
  return [];
}

const ACTION_TEXT = {
  pause: ['Pause', 'No new wave starts until it is resumed. Devices already installing finish.'],
  resume: ['Resume', 'The rollout goes on; the failures so far are accepted.'],
  approve: ['Approve next wave', 'The next wave of devices starts installing.'],
  abort: ['Abort', 'No device that has not started gets this version. Devices that have it keep it.'],
};

/** Per-state counts of a rollout's devices, e.g. {succeeded: 3, pending: 1}:
 * the server's `device_counts` (the list has no `devices`), else counted. */
export function deviceCounts(r) {
  if (r.device_counts && typeof r.device_counts === 'object') return { ...r.device_counts };
  const counts = {};
  for (const d of r.devices || []) counts[d.state] = (counts[d.state] || 0) + 1;
  return counts;
}

/** How many devices a rollout has: `devices_total` when the server sent it. */
export function deviceTotal(r) {
  return typeof r.devices_total === 'number' ? r.devices_total : (r.devices || []).length;
}

function stateBadge(state) {
  return badge(state, `rollout-${state}`);
}

/** A list answer: a bare array or an object with the list under a known key. */
function listOf(body) {
  if (Array.isArray(body)) return body;
  for (const k of ['rollouts', 'data', 'items']) if (Array.isArray(body && body[k])) return body[k];
  return [];
}

/** Refreshes with `load` every ROLLOUT_REFRESH_MS while visible; returns stop(). */
function poller(load) {
  let timer = null;
  let controller = null;
  let stopped = false;
  async function tick() {
    clearTimeout(timer);
    if (stopped || document.hidden) return;
    controller = new AbortController();
    let next = ROLLOUT_REFRESH_MS;
    try {
      await load(controller.signal);
    } catch (e) {
      if (e.name === 'AbortError' || e.status === 401) return;
      if (e.retryAfter) next = e.retryAfter;
    }
    if (!stopped) timer = setTimeout(tick, next);
  }
  const onVisible = () => {
    if (!document.hidden) tick();
  };
  document.addEventListener('visibilitychange', onVisible);
  tick();
  return {
    now: tick,
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (controller) controller.abort();
      document.removeEventListener('visibilitychange', onVisible);
    },
  };
}

export function rolloutsView(root, { navigate }) {
  document.title = 'Rollouts · Outpost';
  const notice = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'fleet rollouts', 'data-loading': '' },
    h('thead', {}, h('tr', {}, ['Rollout', 'Artifact', 'State', 'Wave', 'Devices', 'Created']
      .map((c) => h('th', { scope: 'col' }, c)))),
    tbody,
  );
  const more = h('p', { class: 'sub rollouts-more', hidden: true },
    'Showing the newest rollouts; ', h('code', {}, 'outpostctl rollout list'), ' lists them all.');
  const empty = h('div', { class: 'empty-state', hidden: true },
    h('h2', {}, 'No rollouts yet'),
    h('p', {}, 'Publish an artifact with ', h('code', {}, 'outpostctl artifact publish'),
      ', then start one with ', h('code', {}, 'outpostctl rollout create --artifact NAME@VERSION --selector key=value'), '.'));
  root.replaceChildren(h(
    'section',
    { class: 'page rollouts-page' },
    h('nav', { class: 'crumbs' }, h('a', { href: '#/' }, '← Fleet')),
    h('div', { class: 'page-head' }, h('h1', {}, 'Rollouts')),
    notice,
    h('div', { class: 'table-wrap' }, table),
    more,
    empty,
  ));

  const p = poller(async (signal) => {
    try {
      // The newest page only (the list is newest first, 50 a page).
      const body = await api('devices/v2/rollouts', { signal });
      const list = listOf(body);
      notice.hidden = true;
      table.removeAttribute('data-loading');
      more.hidden = !(body && body.pagination && body.pagination.has_more);
      render(list);
    } catch (e) {
      if (e.name !== 'AbortError') {
        setText(notice, `Could not load the rollouts: ${e.message}`);
        notice.hidden = false;
      }
      throw e;
    }
  });

  function render(list) {
    const now = serverNow();
    tbody.replaceChildren(...list.map((r) => {
      const href = `#/rollouts/${encodeURIComponent(r.id)}`;
      const counts = deviceCounts(r);
      const total = deviceTotal(r);
      const waves = r.waves || [];
      const tr = h(
        'tr',
        { 'data-rollout-id': r.id, 'data-state': r.state },
        h('td', { 'data-label': 'Rollout' }, h('a', { class: 'name mono', href }, r.id)),
        h('td', { 'data-label': 'Artifact', class: 'mono' }, r.artifact),
        h('td', { 'data-label': 'State' }, stateBadge(r.state), r.reason ? h('span', { class: 'sub' }, r.reason) : ''),
        h('td', { 'data-label': 'Wave' }, waves.length ? `${Math.min(r.current_wave || 1, waves.length)} of ${waves.length}` : '–'),
        h('td', { 'data-label': 'Devices' }, total ? `${counts.succeeded || 0} of ${total} succeeded` : '–'),
        h('td', { 'data-label': 'Created', title: fmtDateTime(parseTime(r.created_at)) }, fmtRelative(parseTime(r.created_at), now)),
      );
      tr.addEventListener('click', (e) => {
        if (!e.target.closest('a')) navigate(href);
      });
      return tr;
    }));
    table.hidden = list.length === 0;
    empty.hidden = list.length !== 0;
  }

  return { destroy: () => p.stop() };
}

export function rolloutView(root, { id, navigate }) {
  document.title = 'Rollout · Outpost';
  let rollout = null;
  const title = h('h1', { class: 'mono' }, id);
  const state = h('div', { class: 'badges' });
  const reason = h('p', { class: 'rollout-reason', hidden: true });
  const actions = h('div', { class: 'actions' });
  const notice = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const facts = h('dl', { class: 'facts' });
  const waves = h('ol', { class: 'waves' });
  const tbody = h('tbody');
  root.replaceChildren(h(
    'section',
    { class: 'page rollout-page', 'data-rollout-id': id },
    h('nav', { class: 'crumbs' }, h('a', { href: '#/rollouts' }, '← Rollouts')),
    h('div', { class: 'device-head' }, h('div', { class: 'device-title' }, title, state), actions),
    reason,
    notice,
    h('div', { class: 'panel' }, facts),
    h('div', { class: 'section-head' }, h('h2', {}, 'Waves')),
    waves,
    h('div', { class: 'section-head' }, h('h2', {}, 'Devices')),
    h('div', { class: 'table-wrap' }, h(
      'table',
      { class: 'fleet rollout-devices' },
      h('thead', {}, h('tr', {}, ['Device', 'Wave', 'State', 'Error', 'Updated'].map((c) => h('th', { scope: 'col' }, c)))),
      tbody,
    )),
  ));

  const p = poller(async (signal) => {
    try {
      rollout = await api(`devices/v2/rollouts/${encodeURIComponent(id)}`, { signal });
      notice.hidden = true;
      render();
    } catch (e) {
      if (e.name !== 'AbortError') {
        setText(notice, e.status === 404 ? 'This rollout does not exist.' : `Could not load the rollout: ${e.message}`);
        notice.hidden = false;
      }
      throw e;
    }
  });

  function act(action) {
    const [label, text] = ACTION_TEXT[action];
    confirmDialog({
      title: `${label}: ${rollout.artifact}?`,
      body: [h('p', {}, text)],
      confirm: label,
      danger: action === 'abort',
      async run() {
        rollout = await api(`devices/v2/rollouts/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
        render();
        p.now();
      },
    });
  }

  function render() {
    const r = rollout;
    const now = serverNow();
    document.title = `Rollout ${r.artifact} · Outpost`;
    setText(title, r.artifact);
    state.replaceChildren(stateBadge(r.state));
    setText(reason, r.reason || '');
    reason.hidden = !r.reason;
    actions.replaceChildren(...allowedActions(r).map((a) => h('button', {
      type: 'button',
      class: `btn ${a === 'abort' ? 'btn-danger' : a === 'approve' ? 'btn-primary' : ''}`,
      'data-action': a,
      onclick: () => act(a),
    }, ACTION_TEXT[a][0])));
    const rows = [
      ['Rollout ID', r.id, 'mono'],
      ['Selector', (r.selector || []).join(', ') || '(all devices)'],
      ['Max failures per wave', String(r.max_failures ?? '–')],
      ['Wave timeout', r.wave_timeout],
      ['Approval', r.approve_waves ? 'after every wave' : 'no'],
      ['Created', fmtDateTime(parseTime(r.created_at))],
      ['Updated', fmtRelative(parseTime(r.updated_at), now)],
    ];
    facts.replaceChildren(...rows.filter(([, v]) => v).map(([k, v, cls]) => h(
      'div', { class: 'fact' }, h('dt', {}, k), h('dd', { class: cls || null }, v),
    )));
    const devices = r.devices || [];
    waves.replaceChildren(...(r.waves || []).map((w, i) => {
      const idx = w.index ?? i + 1; // waves are numbered from 1
      const inWave = devices.filter((d) => d.wave === idx);
      const done = inWave.filter((d) => d.state === 'succeeded').length;
      return h(
        'li',
        { class: 'wave', 'data-wave': String(idx), 'data-state': w.state || '' },
        h('strong', {}, `Wave ${idx}`),
        h('span', { class: 'sub' }, w.spec ? ` (${w.spec})` : ''),
        ' ',
        w.state ? stateBadge(w.state) : '',
        h('span', { class: 'wave-count' }, ` ${done} of ${w.size ?? inWave.length} succeeded`),
      );
    }));
    tbody.replaceChildren(...devices.map((d) => h(
      'tr',
      { 'data-device-id': d.device_id, 'data-state': d.state },
      h('td', { 'data-label': 'Device' }, h('a', { class: 'name', href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.name || d.device_id)),
      h('td', { 'data-label': 'Wave' }, String(d.wave ?? '–')),
      h('td', { 'data-label': 'State' }, stateBadge(d.state)),
      h('td', { 'data-label': 'Error', class: 'error-text' }, d.error || ''),
      h('td', { 'data-label': 'Updated', title: fmtDateTime(parseTime(d.updated_at)) }, fmtRelative(parseTime(d.updated_at), now)),
    )));
  }

  return { destroy: () => p.stop() };
}
