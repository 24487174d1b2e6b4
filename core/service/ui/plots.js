// Small canvas plots: the score histogram, the precision-recall curve and the training loss.
function clear(canvas) {
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  return ctx;
}

function axisText(ctx, text, x, y, align = 'left') {
  ctx.fillStyle = '#98a0ad';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textAlign = align;
  ctx.fillText(text, x, y);
}

// Histogram of all scores (binned by the server) with the threshold (red) and the suggested threshold (green, dashed).
export class Histogram {
  constructor(canvas, onPick) {
    this.canvas = canvas;
    this.bins = null;
    canvas.addEventListener('click', (ev) => {
      if (!this.bins) return;
      const r = canvas.getBoundingClientRect();
      const f = (ev.clientX - r.left) / r.width;
      onPick(this.lo + f * (this.hi - this.lo));
    });
  }

  setBins(h) {  // the server's histogram: {lo, hi, counts}
    if (!h.counts.length) { this.bins = null; return; }
    this.lo = h.lo; this.hi = h.hi > h.lo ? h.hi : h.lo + 1;
    this.bins = Uint32Array.from(h.counts);
    this.max = Math.max(1, ...this.bins);
  }

  draw(threshold, suggested) {
    const c = this.canvas, ctx = clear(c);
    if (!this.bins) { axisText(ctx, 'no picks', 8, 20); return; }
    const h = c.height - 14, bw = c.width / this.bins.length;
    const x = (v) => ((v - this.lo) / (this.hi - this.lo)) * c.width;
    this.bins.forEach((v, i) => {
      const bh = Math.sqrt(v / this.max) * (h - 4);  // square root: the tail stays visible
      const left = i * bw;
      ctx.fillStyle = this.lo + (i + 1) * (this.hi - this.lo) / this.bins.length > threshold ? '#4fb3ff' : '#3a4150';
      ctx.fillRect(left + 0.5, h - bh, bw - 1, bh);
    });
    if (suggested != null) {
      ctx.strokeStyle = '#5adc7a'; ctx.setLineDash([4, 3]); ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x(suggested), 0); ctx.lineTo(x(suggested), h); ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.strokeStyle = '#ff5a5a'; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x(threshold), 0); ctx.lineTo(x(threshold), h); ctx.stroke();
    axisText(ctx, this.lo.toFixed(1), 2, c.height - 2);
    axisText(ctx, this.hi.toFixed(1), c.width - 2, c.height - 2, 'right');
    axisText(ctx, `score (logit), √count`, c.width / 2, c.height - 2, 'center');
  }
}

// The operating point at threshold t: the curve row with the smallest threshold >= t (curve thresholds descend).
export function operatingPoint(curve, t) {
  const th = curve.threshold;
  let lo = 0, hi = th.length;  // first index with threshold < t
  while (lo < hi) { const mid = (lo + hi) >> 1; if (th[mid] >= t) lo = mid + 1; else hi = mid; }
  const i = lo - 1;
  if (i < 0) return { precision: 1, recall: 0 };
  return { precision: curve.precision[i], recall: curve.recall[i] };
}

export function drawPR(canvas, pr, threshold) {
  const ctx = clear(canvas);
  const m = 24, w = canvas.width - m - 6, h = canvas.height - m - 6;
  ctx.strokeStyle = '#343a46'; ctx.strokeRect(m, 6, w, h);
  axisText(ctx, 'recall', m + w / 2, canvas.height - 4, 'center');
  axisText(ctx, 'P', 8, 6 + h / 2);
  if (!pr) { axisText(ctx, 'label particles to see the curve', m + 8, 24); return null; }
  const X = (r) => m + r * w, Y = (p) => 6 + (1 - p) * h;
  ctx.strokeStyle = '#4fb3ff'; ctx.lineWidth = 1.5; ctx.beginPath();
  ctx.moveTo(X(0), Y(1));
  const { precision, recall } = pr.curve;
  for (let i = 0; i < recall.length; i++) ctx.lineTo(X(recall[i]), Y(precision[i]));
  ctx.stroke();
  const op = operatingPoint(pr.curve, threshold);
  ctx.fillStyle = '#ff5a5a'; ctx.beginPath(); ctx.arc(X(op.recall), Y(op.precision), 4, 0, 2 * Math.PI); ctx.fill();
  return op;
}

export function drawLoss(canvas, history) {
  const ctx = clear(canvas);
  if (!history || !history.length) { axisText(ctx, 'loss per epoch', 8, 16); return; }
  const ys = history.map((r) => r.loss);
  const lo = Math.min(...ys), hi = Math.max(...ys), n = Math.max(2, history.length);
  const X = (i) => 8 + (i / (n - 1)) * (canvas.width - 16);
  const Y = (v) => 8 + (hi > lo ? (hi - v) / (hi - lo) : 0.5) * (canvas.height - 24);
  ctx.strokeStyle = '#ffb347'; ctx.lineWidth = 1.5; ctx.beginPath();
  ys.forEach((v, i) => (i ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))));
  ctx.stroke();
  ys.forEach((v, i) => { ctx.fillStyle = '#ffb347'; ctx.fillRect(X(i) - 2, Y(v) - 2, 4, 4); });
  axisText(ctx, `loss ${ys[ys.length - 1].toFixed(4)} (epoch ${history[history.length - 1].epoch})`, 8, canvas.height - 3);
}
