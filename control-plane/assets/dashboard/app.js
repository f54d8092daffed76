// The Outpost dashboard: sign-in, routing (#/ is the fleet, #/devices/ID a
// device, #/rollouts and #/rollouts/ID the rollouts) and the session bar. Plain ES modules, no build step.

import { api, session, setUnauthorizedHandler } from './api.js';
import { deviceView } from './device.js';
import { fleetView } from './fleet.js';
import { rolloutView, rolloutsView } from './rollouts.js';
import { h, setText } from './util.js';

const app = document.getElementById('app');
let current = null; // the mounted view: { destroy() }
let flash = null; // { kind, text }: shown once by the next view

function setFlash(f) {
  flash = f;
}

function takeFlash() {
  const f = flash;
  flash = null;
  return f ? h('p', { class: `notice notice-${f.kind}`, role: 'status' }, f.text) : null;
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (current) current.destroy();
  current = null;
  const s = session.get();
  const bar = document.getElementById('session');
  bar.hidden = !s;
  setText(document.getElementById('session-workspace'), s ? s.workspace : '');
  const notice = takeFlash();
  if (!s) {
    current = signInView(notice);
    return;
  }
  const m = /^#\/devices\/([^/?]+)(?:\?(.*))?$/.exec(location.hash);
  const r = /^#\/rollouts(?:\/([^/?]+))?$/.exec(location.hash);
  if (m) {
    current = deviceView(app, { id: decodeURIComponent(m[1]), params: new URLSearchParams(m[2] || ''), navigate, setFlash });
  } else if (r && r[1]) {
    current = rolloutView(app, { id: decodeURIComponent(r[1]), navigate });
  } else if (r) {
    current = rolloutsView(app, { navigate });
  } else {
    current = fleetView(app, { navigate, workspace: s.workspace });
  }
  for (const a of document.querySelectorAll('.nav a')) {
    a.setAttribute('aria-current', String(a.getAttribute('href') === (r ? '#/rollouts' : '#/')));
  }
  if (notice) app.querySelector('.page').prepend(notice);
}

/**
 * Workspace + API key. The inputs have no `name`, and the form posts: even
 * if this script failed, the key could not end up in a URL.
 */
function signInView(notice) {
  document.title = 'Sign in · Outpost';
  const workspace = h('input', {
    id: 'workspace', type: 'text', required: true, autocomplete: 'off', autocapitalize: 'off',
    spellcheck: 'false', placeholder: 'acme',
  });
  const key = h('input', {
    id: 'api-key', type: 'password', required: true, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'opk_…',
  });
  const error = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Sign in');
  const form = h(
    'form',
    { class: 'signin', method: 'post', id: 'signin' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'lede' }, 'Use an API key of your workspace with the device:read scope (device:update for the actions). It is kept in this tab only and sent in a header, never in a URL.'),
    notice,
    error,
    h('label', { for: 'workspace' }, 'Workspace'),
    workspace,
    h('label', { for: 'api-key' }, 'API key'),
    key,
    submit,
  );
  let controller = null;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const creds = { workspace: workspace.value.trim(), key: key.value.trim() };
    if (!creds.workspace || !creds.key) return;
    submit.disabled = true;
    error.hidden = true;
    if (notice) notice.remove();
    controller = new AbortController();
    try {
      // Any read proves the key: one device of the list.
      await api('devices/v2', { query: { limit: '1' }, credentials: creds, signingIn: true, signal: controller.signal });
      session.set(creds.workspace, creds.key);
      key.value = '';
      route();
    } catch (err) {
      if (err.name === 'AbortError') return;
      setText(error, err.status === 403
        ? `${err.message}. The dashboard needs a workspace key with the device:read scope.`
        : err.message);
      error.hidden = false;
      submit.disabled = false;
    }
  });
  app.replaceChildren(h('section', { class: 'page signin-page' }, form));
  workspace.focus();
  return {
    destroy() {
      if (controller) controller.abort();
    },
  };
}

// A refused key (401 anywhere) ends the session with the server's message.
setUnauthorizedHandler((message) => {
  if (!session.get()) return; // already handled
  session.clear();
  setFlash({ kind: 'error', text: message });
  route();
});

document.getElementById('sign-out').addEventListener('click', () => {
  session.clear();
  setFlash({ kind: 'info', text: 'Signed out.' });
  if (location.hash && location.hash !== '#/') history.replaceState(null, '', '#/');
  route();
});

window.addEventListener('hashchange', route);
route();
