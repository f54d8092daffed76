// A small SVG line chart: one or more series of [time ms, value] points over
// a time domain, a grid with value and time labels, lines broken where data
// is missing, and a readout of the point under the pointer. The chart's
// element carries `data-points` (points in its first series) for tests.

import { h, s, setText } from './util.js';

const HEIGHT = 160;
const PAD = { top: 12, right: 12, bottom: 24, left: 56 };

/**
 * A "nice" axis maximum ≥ v: 1, 2, 2.5 or 5 times a power of ten — of
 * KiB, MiB, … for byte values (`binary`), so labels read "200 KiB".
 */
function niceMax(v, binary) {
  if (!(v > 0)) return 1;
  let scale = 1;
  if (binary) while (v / scale >= 1024) scale *= 1024;
  const u = v / scale;
  const p = 10 ** Math.floor(Math.log10(u));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= u) return m * p * scale;
  return 10 * p * scale;
}

/** Steps between time labels: 1 min … 1 week. */
const TIME_STEPS = [1, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * 60e3);

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const day = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const full = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

export class Chart {
  /**
   * id: names the chart (`data-chart`); title; format(v) for labels;
   * yMax: a fixed axis maximum (100 for percentages) or null for automatic;
   * binary: byte values (axis steps in KiB, MiB, …);
   * series: [{label, cls}] — cls picks the colour (see app.css).
   */
  constructor({ id, title, format, yMax = null, binary = false, series }) {
    this.format = format;
    this.binary = binary;
    this.fixedMax = yMax;
    this.series = series;
    this.data = series.map(() => []);
    this.domain = [0, 1];
    this.gap = Infinity;
    this.hoverT = null;
    this.readout = h('span', { class: 'chart-value' });
    this.plot = h('div', { class: 'chart-plot' });
    const legend = series.length > 1
      ? h('div', { class: 'chart-legend' }, series.map((d) => h('span', { class: `key ${d.cls}` }, d.label)))
      : null;
    this.el = h(
      'figure',
      { class: 'chart', 'data-chart': id, 'data-points': '0' },
      h('figcaption', {}, h('span', { class: 'chart-title' }, title), this.readout),
      this.plot,
      legend,
    );
    this.plot.addEventListener('pointermove', (e) => this.hover(e));
    this.plot.addEventListener('pointerleave', () => {
      this.hoverT = null;
      this.render();
    });
    this.resize = new ResizeObserver(() => this.render());
    this.resize.observe(this.plot);
  }

  /** New data: per series, points [t, v|null] sorted by t; lines break across gaps > gapMs. */
  set(data, domain, gapMs) {
    this.data = data;
    this.domain = domain;
    this.gap = gapMs;
    const n = data[0].filter((p) => p[1] !== null).length;
    this.el.dataset.points = String(n);
    this.render();
  }

  destroy() {
    this.resize.disconnect();
  }

  hover(e) {
    const rect = this.plot.getBoundingClientRect();
    const [t0, t1] = this.domain;
    const x = e.clientX - rect.left;
    const w = rect.width - PAD.left - PAD.right;
    this.hoverT = t0 + ((x - PAD.left) / w) * (t1 - t0);
    this.render();
  }

  /** The point of series i nearest to time t. */
  nearest(i, t) {
    let best = null;
    for (const p of this.data[i]) {
      if (p[1] === null) continue;
      if (!best || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
    }
    return best;
  }

  render() {
    const width = Math.round(this.plot.clientWidth);
    if (width === 0) return; // not laid out yet; the observer calls again
    const [t0, t1] = this.domain;
    const innerW = width - PAD.left - PAD.right;
    const innerH = HEIGHT - PAD.top - PAD.bottom;
    let max = 0;
    for (const series of this.data) for (const [, v] of series) if (v !== null && v > max) max = v;
    const yMax = this.fixedMax ?? niceMax(max * 1.1, this.binary);
    const x = (t) => PAD.left + ((t - t0) / (t1 - t0 || 1)) * innerW;
    const y = (v) => PAD.top + (1 - Math.min(v, yMax) / yMax) * innerH;

    const svg = s('svg', {
      class: 'chart-svg', width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: 'img',
      'aria-label': this.el.querySelector('.chart-title').textContent,
    });
    // Grid and value labels.
    for (const frac of [0, 0.5, 1]) {
      const v = yMax * frac;
      svg.append(
        s('line', { class: 'grid', x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v) }),
        s('text', { class: 'axis', x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, this.format(v)),
      );
    }
    // Time labels at round times (local hours and days), as many as fit.
    const span = t1 - t0;
    const fmt = span > 36 * 3600e3 ? day : clock;
    const fit = Math.max(2, Math.floor(innerW / 64));
    const step = TIME_STEPS.find((st) => span / st <= fit) || TIME_STEPS[TIME_STEPS.length - 1];
    const tz = new Date(t0).getTimezoneOffset() * 60e3;
    for (let t = Math.ceil((t0 - tz) / step) * step + tz; t <= t1; t += step) {
      const px = x(t);
      const label = fmt.format(new Date(t));
      const half = label.length * 3; // about half the label's width at the axis font size
      if (px - half < PAD.left - 8 || px + half > width) continue; // would be cut off
      svg.append(s('text', { class: 'axis', x: px, y: HEIGHT - 6, 'text-anchor': 'middle' }, label));
    }
    // Lines (and the first series' area), broken at gaps and missing values.
    this.series.forEach((def, i) => {
      const segments = [];
      let cur = [];
      let prevT = null;
      for (const [t, v] of this.data[i]) {
        if (t < t0 || t > t1) continue;
        if (v === null || (prevT !== null && t - prevT > this.gap)) {
          if (cur.length) segments.push(cur);
          cur = [];
        }
        if (v !== null) cur.push([x(t), y(v)]);
        prevT = t;
      }
      if (cur.length) segments.push(cur);
      for (const seg of segments) {
        const line = seg.map(([px, py], j) => `${j ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join('');
        if (seg.length === 1) {
          svg.append(s('circle', { class: `dot ${def.cls}`, cx: seg[0][0], cy: seg[0][1], r: 2 }));
          continue;
        }
        if (i === 0) {
          const base = y(0).toFixed(1);
          const area = `${line}L${seg[seg.length - 1][0].toFixed(1)},${base}L${seg[0][0].toFixed(1)},${base}Z`;
          svg.append(s('path', { class: `area ${def.cls}`, d: area }));
        }
        svg.append(s('path', { class: `line ${def.cls}`, d: line }));
      }
    });
    // Readout: the hovered point, else the latest.
    const at = this.hoverT;
    const shown = this.series.map((_, i) => (at === null ? this.latest(i) : this.nearest(i, at)));
    if (at !== null && shown[0]) {
      const px = x(shown[0][0]);
      svg.append(s('line', { class: 'crosshair', x1: px, x2: px, y1: PAD.top, y2: PAD.top + innerH }));
      shown.forEach((p, i) => {
        if (p) svg.append(s('circle', { class: `dot ${this.series[i].cls}`, cx: x(p[0]), cy: y(p[1]), r: 3.5 }));
      });
    } else if (shown[0]) {
      svg.append(s('circle', { class: `dot head ${this.series[0].cls}`, cx: x(shown[0][0]), cy: y(shown[0][1]), r: 3 }));
    }
    const values = shown.map((p, i) => {
      const v = p ? this.format(p[1]) : '–';
      return this.series.length > 1 ? `${this.series[i].label} ${v}` : v;
    });
    const when = at !== null && shown[0] ? ` · ${full.format(new Date(shown[0][0]))}` : '';
    setText(this.readout, values.join(' · ') + when);
    if (this.data[0].every((p) => p[1] === null)) {
      svg.append(s('text', { class: 'empty', x: PAD.left + innerW / 2, y: PAD.top + innerH / 2, 'text-anchor': 'middle' },
        'No data in this period'));
    }
    this.plot.replaceChildren(svg);
  }

  latest(i) {
    const d = this.data[i];
    for (let j = d.length - 1; j >= 0; j -= 1) if (d[j][1] !== null) return d[j];
    return null;
  }
}
