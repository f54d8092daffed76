// Getting boxes onto the fleet: the "Add device" dialog (one device with its
// install ID, or an enrollment token for many), the install command shown
// once with a QR code drawn in the page (qrcode.js, vendored; no external
// service), and the badges of a device that has not enrolled yet.

import { ApiError, api } from './api.js';
import qrcode from './qrcode.js';
import { badge, fmtDateTime, h, parseTime, s, setText } from './util.js';

/** The status badge: `pending` / `install ID expired` until the box enrolls. */
export function statusBadge(d) {
  if (d.enrollment === 'pending') return badge('pending');
  if (d.enrollment === 'install_id_expired') return badge('install ID expired', 'expired');
  return badge(d.status);
}

/** What the fleet counts a device as: its enrollment state, else its status. */
export function statusKey(d) {
  return d.enrollment && d.enrollment !== 'enrolled' ? 'pending' : d.status;
}

/** A QR code of `text` as an SVG (one path; quiet zone of 4 modules). */
export function qrSvg(text, label) {
  const qr = qrcode(0, 'M');
  qr.addData(text, 'Byte');
  qr.make();
  const n = qr.getModuleCount();
  let d = '';
  for (let r = 0; r < n; r += 1) {
    for (let c = 0; c < n; c += 1) {
      if (qr.isDark(r, c)) d += `M${c + 4} ${r + 4}h1v1h-1z`;
    }
  }
  const size = n + 8;
  return s(
    'svg',
    { class: 'qr', viewBox: `0 0 ${size} ${size}`, role: 'img', 'aria-label': label, 'data-modules': n, 'shape-rendering': 'crispEdges' },
    s('rect', { width: size, height: size, fill: '#fff' }),
    s('path', { d, fill: '#000' }),
  );
}

/**
 * A read-only secret with its label and a Copy button: a one-line input
 * (keys) or, `multiline`, a textarea (install commands).
 */
export function copyField(label, value, { multiline = false } = {}) {
  const attrs = { readonly: true, class: 'mono secret', 'aria-label': label, spellcheck: 'false' };
  const field = multiline ? h('textarea', { ...attrs, rows: 3 }) : h('input', { ...attrs, type: 'text' });
  field.value = value;
  const copy = h('button', {
    type: 'button',
    class: 'btn btn-quiet',
    'data-action': 'copy',
    async onclick() {
      field.select();
      try {
        await navigator.clipboard.writeText(value);
        setText(copy, 'Copied');
      } catch {
        setText(copy, 'Press Ctrl+C');
      }
    },
  }, 'Copy');
  return h('div', { class: 'secret-row' }, h('span', { class: 'label' }, label), h('div', { class: 'secret-field' }, field, copy));
}

/**
 * The install command of a device or token, shown once: text to copy, a QR
 * code of the same text, when it expires, and the server's hint if any.
 */
export function installPanel({ command, expiresAt, hint, note }) {
  const expires = parseTime(expiresAt);
  return h(
    'div',
    { class: 'install-panel', 'data-install-command': '' },
    note ? h('p', {}, note) : null,
    h('p', {}, 'Run this on the box (shown only once):'),
    copyField('Install command', command, { multiline: true }),
    h('div', { class: 'qr-wrap' }, qrSvg(command, 'QR code of the install command')),
    expires !== null ? h('p', { class: 'foot' }, `Valid until ${fmtDateTime(expires)}.`) : null,
    hint ? h('p', { class: 'notice', role: 'note' }, hint) : null,
  );
}

/**
 * `key=value` pairs separated by commas or spaces into an object; the
 * control plane checks the syntax and names a bad one.
 */
export function parseLabels(text) {
  const out = {};
  for (const pair of text.split(/[\s,]+/).filter(Boolean)) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new Error(`label "${pair}" is not key=value`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

function field(label, input) {
  return h('label', { class: 'field' }, h('span', { class: 'label' }, label), input);
}

/**
 * A dialog that asks (`fields`), runs `run()` on submit — which returns the
 * panel to show in their place — and then offers only "Done". The server's
 * error stays in the dialog for another try; a 401 closes it (the sign-in
 * takes over).
 */
function showOnceDialog({ title, formClass, fields, submitLabel, action, run }) {
  const error = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', 'data-action': action }, submitLabel);
  const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
  const form = h('form', { method: 'dialog', class: formClass },
    h('h2', {}, title), fields, error, h('div', { class: 'dialog-actions' }, cancel, submit));
  const dialog = h('dialog', { class: 'dialog' }, form);
  cancel.addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => dialog.remove());
  let done = false;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (done) {
      dialog.close();
      return;
    }
    submit.disabled = true;
    error.hidden = true;
    try {
      fields.replaceChildren(await run());
      cancel.remove();
      setText(submit, 'Done');
      submit.dataset.action = 'done';
      done = true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        dialog.close();
        return;
      }
      setText(error, err.message || String(err));
      error.hidden = false;
    }
    submit.disabled = false;
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, form };
}

/**
 * "Add device": one device (name and type → its install ID) or an
 * enrollment token (name, use budget, expiry → one command for many boxes).
 * `onCreated(deviceId | null)` after success.
 */
export function addDeviceDialog({ onCreated }) {
  const mode = (v, text, checked) => h('label', { class: 'radio' },
    h('input', { type: 'radio', name: 'mode', value: v, checked }), ` ${text}`);
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: 128, autocomplete: 'off', spellcheck: 'false' });
  const type = h('select', { name: 'type' }, h('option', { value: 'edge' }, 'edge'), h('option', { value: 'ai1' }, 'ai1'));
  const labels = h('input', {
    type: 'text', name: 'labels', autocomplete: 'off', spellcheck: 'false', placeholder: 'site=berlin, role=gate',
  });
  const uses = h('input', { type: 'number', name: 'max_uses', min: 1, max: 100000, value: 10 });
  const days = h('input', { type: 'number', name: 'expires_days', min: 1, max: 365, value: 7 });
  const tokenFields = h('div', { class: 'token-fields', hidden: true },
    field('Boxes it may enroll', uses), field('Valid for (days)', days));
  const modes = h('div', { class: 'modes', role: 'radiogroup' },
    mode('device', 'One device', true), mode('token', 'Many devices (enrollment token)', false));
  const isToken = () => modes.querySelector('input[name=mode]:checked').value === 'token';
  const fields = h('div', { class: 'add-body' },
    modes, field('Name', name), field('Type', type), field('Labels (optional)', labels), tokenFields);
  const { dialog, form } = showOnceDialog({
    title: 'Add device',
    formClass: 'add-device',
    fields,
    submitLabel: 'Create',
    action: 'create',
    async run() {
      const labelMap = parseLabels(labels.value);
      if (isToken()) {
        const t = await api('devices/v2/enrollment-tokens', {
          method: 'POST',
          body: {
            name: name.value.trim(),
            max_uses: Number(uses.value),
            expires_in_secs: Number(days.value) * 86400,
            device_type: type.value,
            labels: labelMap,
          },
        });
        if (onCreated) onCreated(null);
        return installPanel({
          command: t.installCommand, expiresAt: t.expires_at, hint: t.hint,
          note: `Token “${t.name}” enrolls up to ${t.max_uses} boxes; each becomes a device named after its host name (or the agent's --device-name).`,
        });
      }
      const d = await api('devices/v2', {
        method: 'POST',
        body: { device_name: name.value.trim(), device_type: type.value, labels: labelMap },
      });
      if (onCreated) onCreated(d.deviceId);
      return installPanel({ command: d.installCommand, expiresAt: d.installIdExpiresAt, hint: d.hint });
    },
  });
  form.addEventListener('change', () => {
    tokenFields.hidden = !isToken();
  });
  name.focus();
  return dialog;
}

/** A new install ID for a device that has not enrolled: the command, once. */
export function newInstallIdDialog(deviceId, onDone) {
  return showOnceDialog({
    title: 'New install ID',
    fields: h('div', {}, h('p', {}, 'A new install ID replaces the current one (which stops working).')),
    submitLabel: 'Issue install ID',
    action: 'issue',
    async run() {
      const t = await api(`devices/v2/${encodeURIComponent(deviceId)}/install-id`, { method: 'POST' });
      if (onDone) onDone();
      return installPanel({ command: t.installCommand, expiresAt: t.installIdExpiresAt, hint: t.hint });
    },
  }).dialog;
}
