// The micrograph viewer: a picture layer (redrawn on zoom/pan) and an overlay layer with the picks and labels
// (redrawn on every threshold move, from picks loaded once). Coordinates are kept in original pixels.
const BINS = 16;
// viridis-like ramp, low score -> high score
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function rampColour(f) {
  const x = Math.min(1, Math.max(0, f)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), t = x - i;
  const c = RAMP[i].map((v, k) => Math.round(v + (RAMP[i + 1][k] - v) * t));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
export const BIN_COLOURS = Array.from({ length: BINS }, (_, i) => rampColour(i / (BINS - 1)));

// Number of scores >= t in a descending array.
export function countAtLeast(desc, t) {
  let lo = 0, hi = desc.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (desc[mid] >= t) lo = mid + 1; else hi = mid; }
  return lo;
}

export class Viewer {
  constructor(stage, imgCanvas, pickCanvas, { onLabelsChanged }) {
    this.stage = stage;
    this.img = imgCanvas;
    this.overlay = pickCanvas;
    this.onLabelsChanged = onLabelsChanged;
    this.picture = null;   // ImageBitmap
    this.factor = 1;       // original px per picture px
    this.k = 1; this.ox = 0; this.oy = 0;  // screen = original * k + offset
    this.picks = { x: [], y: [], score: [] };
    this.labels = [];
    this.threshold = 0;
    this.range = [0, 1];
    this.radius = 20;
    this.showPicks = true;
    this.showLabels = true;
    this.labelMode = false;
    this.drawn = 0;
    this._bind();
    new ResizeObserver(() => this.resize()).observe(stage);
  }

  _bind() {
    const st = this.stage;
    let down = null;
    st.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0) return;
      down = { x: ev.clientX, y: ev.clientY, ox: this.ox, oy: this.oy, moved: false };
      st.setPointerCapture(ev.pointerId);
    });
    st.addEventListener('pointermove', (ev) => {
      if (!down) return;
      const dx = ev.clientX - down.x, dy = ev.clientY - down.y;
      if (!down.moved && Math.hypot(dx, dy) < 4) return;
      down.moved = true;
      st.classList.add('panning');
      this.ox = down.ox + dx; this.oy = down.oy + dy; this.moved = true;
      this.redraw();
    });
    st.addEventListener('pointerup', (ev) => {
      if (!down) return;
      const wasClick = !down.moved;
      down = null;
      st.classList.remove('panning');
      if (wasClick && this.labelMode) {
        const r = st.getBoundingClientRect();
        this.click(ev.clientX - r.left, ev.clientY - r.top);
      }
    });
    st.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const r = st.getBoundingClientRect();
      this.zoomAt(ev.clientX - r.left, ev.clientY - r.top, Math.exp(-ev.deltaY * 0.0015));
    }, { passive: false });
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.stage.clientWidth, h = this.stage.clientHeight;
    for (const c of [this.img, this.overlay]) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    if (this.picture && !this.moved) this.fit(); else this.redraw();  // untouched views keep fitting
  }

  setMicrograph({ picture, factor, shape, picks, labels, radius, range }) {
    this.picture = picture; this.factor = factor; this.shape = shape;
    this.picks = picks; this.labels = labels; this.radius = radius; this.range = range;
    this.fit();
  }

  setPicture(picture, factor) {  // a sharper picture of the same micrograph: the view does not move
    this.picture = picture; this.factor = factor; this.drawImage();
  }

  fit() {
    if (!this.shape) return;
    const w = this.stage.clientWidth, h = this.stage.clientHeight;
    if (!w || !h) return;
    const [ny, nx] = this.shape;
    this.k = Math.min(w / nx, h / ny);
    this.ox = (w - nx * this.k) / 2; this.oy = (h - ny * this.k) / 2;
    this.moved = false;
    this.redraw();
  }

  zoomAt(sx, sy, f) {
    const k = Math.min(64, Math.max(0.02, this.k * f));
    f = k / this.k;
    this.ox = sx - (sx - this.ox) * f; this.oy = sy - (sy - this.oy) * f; this.k = k; this.moved = true;
    this.redraw();
    if (this.onZoom) this.onZoom(this.k * this.factor);
  }

  toOriginal(sx, sy) { return [(sx - this.ox) / this.k, (sy - this.oy) / this.k]; }

  redraw() { this.drawImage(); this.drawOverlay(); }

  _ctx(canvas) {
    const ctx = canvas.getContext('2d');
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }

  drawImage() {
    const ctx = this._ctx(this.img);
    if (!this.picture) return;
    ctx.imageSmoothingEnabled = this.k * this.factor < 2;
    // picture pixel i covers original pixels i*f ... i*f+f-1, and original pixel x is centred on x*k + ox
    const s = this.k * this.factor;
    ctx.drawImage(this.picture, this.ox - 0.5 * this.k, this.oy - 0.5 * this.k, this.picture.width * s, this.picture.height * s);
  }

  // One pre-drawn circle per colour bin at the current radius: blitting 3,000 sprites is far cheaper than stroking
  // 3,000 anti-aliased arcs, which matters on a software canvas.
  _sprites(r) {
    const key = r.toFixed(2);
    if (this._spriteKey === key) return this._spriteCache;
    const half = Math.ceil(r + 2), size = 2 * half;
    this._spriteCache = BIN_COLOURS.map((colour) => {
      const c = document.createElement('canvas');
      c.width = c.height = size;
      const g = c.getContext('2d');
      g.lineWidth = 1.6; g.strokeStyle = colour;
      g.beginPath(); g.arc(half, half, r, 0, 2 * Math.PI); g.stroke();
      return c;
    });
    this._spriteKey = key; this._spriteHalf = half;
    return this._spriteCache;
  }

  // Circles at the particle diameter for every pick >= threshold that lies in view; returns how many were drawn.
  drawOverlay() {
    const ctx = this._ctx(this.overlay);
    const { x, y, score } = this.picks;
    const n = countAtLeast(score, this.threshold);
    let drawn = 0;
    if (this.showPicks && n) {
      const [lo, hi] = this.range, span = hi > lo ? hi - lo : 1;
      const k = this.k, ox = this.ox, oy = this.oy, r = Math.max(1, this.radius * k);
      const w = this.stage.clientWidth, h = this.stage.clientHeight;
      if (r <= 48) {
        const sprites = this._sprites(r), half = this._spriteHalf;
        for (let i = 0; i < n; i++) {
          const sx = x[i] * k + ox, sy = y[i] * k + oy;
          if (sx < -half || sy < -half || sx > w + half || sy > h + half) continue;
          const b = Math.min(BINS - 1, Math.max(0, Math.floor(((score[i] - lo) / span) * BINS)));
          ctx.drawImage(sprites[b], Math.round(sx - half), Math.round(sy - half));  // whole pixels: a plain blit
          drawn++;
        }
      } else {  // zoomed far in: few circles, large ones; paths per colour bin
        const paths = Array.from({ length: BINS }, () => new Path2D());
        for (let i = 0; i < n; i++) {
          const sx = x[i] * k + ox, sy = y[i] * k + oy;
          if (sx < -r || sy < -r || sx > w + r || sy > h + r) continue;
          const b = Math.min(BINS - 1, Math.max(0, Math.floor(((score[i] - lo) / span) * BINS)));
          paths[b].moveTo(sx + r, sy);
          paths[b].arc(sx, sy, r, 0, 2 * Math.PI);
          drawn++;
        }
        ctx.lineWidth = 1.6;
        for (let b = 0; b < BINS; b++) { ctx.strokeStyle = BIN_COLOURS[b]; ctx.stroke(paths[b]); }
      }
    }
    if (this.showLabels && this.labels.length) {
      const p = new Path2D(), r = Math.max(2, this.radius * this.k * 0.8), c = Math.max(2, r * 0.25);
      for (const [lx, ly] of this.labels) {
        const sx = lx * this.k + this.ox, sy = ly * this.k + this.oy;
        p.moveTo(sx + r, sy); p.arc(sx, sy, r, 0, 2 * Math.PI);
        p.moveTo(sx - c, sy); p.lineTo(sx + c, sy); p.moveTo(sx, sy - c); p.lineTo(sx, sy + c);
      }
      ctx.lineWidth = 2; ctx.strokeStyle = '#ff3df2'; ctx.stroke(p);
    }
    this.drawn = drawn;
    this.overlay.dataset.drawn = String(drawn);
    this.overlay.dataset.labels = String(this.labels.length);
    return drawn;
  }

  // Label mode: a click on a label's circle removes it, anywhere else adds one (original pixels).
  click(sx, sy) {
    const [x, y] = this.toOriginal(sx, sy);
    if (!this.shape || x < 0 || y < 0 || x > this.shape[1] - 1 || y > this.shape[0] - 1) return;
    const before = this.labels.map((p) => p.slice());
    let best = -1, bestD = this.radius * 0.8;
    this.labels.forEach(([lx, ly], i) => { const d = Math.hypot(lx - x, ly - y); if (d <= bestD) { best = i; bestD = d; } });
    if (best >= 0) this.labels.splice(best, 1);
    else this.labels.push([Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
    this.drawOverlay();
    this.onLabelsChanged(before, this.labels);
  }
}
