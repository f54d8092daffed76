// DOM building and formatting helpers. Text from the API only ever reaches
// the page as text nodes (`h` turns strings into text nodes), never as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/'}, 'text', child, …). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces an element's text (a no-op when unchanged, to spare layout). */
export function setText(el, text) {
  const t = String(text ?? '');
  if (el.textContent !== t) el.textContent = t;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function fmtBytes(n, digits = 1) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${n < 0 ? '-' : ''}${v.toFixed(i === 0 ? 0 : v < 10 ? digits : 0)} ${UNITS[i]}`;
}

export function fmtRate(bytesPerSec) {
  if (bytesPerSec === null || bytesPerSec === undefined) return '–';
  return `${fmtBytes(bytesPerSec)}/s`;
}

export function fmtPercent(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return `${v < 10 && v > 0 ? v.toFixed(1) : Math.round(v)} %`;
}

export function fmtNumber(v, digits = 2) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return v.toFixed(digits);
}

export function fmtCelsius(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return `${Math.round(v)} °C`;
}

/** "42 s", "5 min", "3 h", "2 d" — a duration in its largest sensible unit. */
export function fmtDuration(ms) {
  const s = Math.abs(ms) / 1000;
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400 * 2) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** "12 s ago" / "in 3 d" relative to `now` (both in ms). */
export function fmtRelative(then, now) {
  if (then === null || then === undefined || Number.isNaN(then)) return 'never';
  const d = now - then;
  if (Math.abs(d) < 1000) return 'just now';
  return d >= 0 ? `${fmtDuration(d)} ago` : `in ${fmtDuration(d)}`;
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

export function fmtDateTime(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  return dateTime.format(new Date(ms));
}

const timeOfDay = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dayAndTime = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

/** A time as short as it can be: the time of day for today, else with the date. */
export function fmtTimeShort(ms, now = Date.now()) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  const d = new Date(ms);
  return d.toDateString() === new Date(now).toDateString() ? timeOfDay.format(d) : dayAndTime.format(d);
}

/** Milliseconds since the epoch of an RFC 3339 string, or null. */
export function parseTime(text) {
  if (!text) return null;
  const t = Date.parse(text);
  return Number.isNaN(t) ? null : t;
}

/** used/total as a percentage, or null when unknown. */
export function ratio(used, total) {
  return total > 0 && Number.isFinite(used) ? (100 * used) / total : null;
}

/** A horizontal meter with a label: CPU, memory and disk in the fleet table. */
export function meter() {
  const fill = h('span', { class: 'meter-fill' });
  const label = h('span', { class: 'meter-label' });
  const el = h('span', { class: 'meter' }, h('span', { class: 'meter-track' }, fill), label);
  return {
    el,
    set(percent, title) {
      if (percent === null || percent === undefined) {
        fill.style.width = '0';
        el.dataset.level = 'none';
        setText(label, '–');
      } else {
        // CSSOM writes are allowed by the page's style-src policy.
        fill.style.width = `${clamp(percent, 0, 100).toFixed(1)}%`;
        el.dataset.level = percent >= 90 ? 'danger' : percent >= 75 ? 'warn' : 'ok';
        setText(label, fmtPercent(percent));
      }
      el.title = title || '';
    },
  };
}

/** A status pill (online / offline / unknown / disabled …). */
export function badge(text, kind) {
  return h('span', { class: `badge badge-${kind || text}` }, text);
}
