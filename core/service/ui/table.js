// The micrographs table: thumbnail, pick count at the threshold, score range, failures with their error.
import { getPicture } from './api.js';
import { countAtLeast } from './viewer.js';

export class MicrographTable {
  constructor(table, { onOpen }) {
    this.body = table.querySelector('tbody');
    this.onOpen = onOpen;
    this.rows = [];
    this.sort = { key: 'name', desc: false };
    this.thumbs = new Map();  // name -> object URL
    this.queue = [];
    this.loading = 0;
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (e.isIntersecting) { this.observer.unobserve(e.target); this._queueThumb(e.target); }
      }
    });
    table.querySelectorAll('th[data-sort]').forEach((th) => th.addEventListener('click', () => {
      const key = th.dataset.sort;
      this.sort = { key, desc: this.sort.key === key ? !this.sort.desc : key === 'count' };
      this.render();
    }));
  }

  setRows(rows, scores) {  // scores: name -> descending scores
    this.rows = rows.map((r) => ({ ...r, scores: scores[r.name] || [] }));
  }

  render(threshold = this.threshold) {
    this.threshold = threshold;
    for (const r of this.rows) r.count = countAtLeast(r.scores, threshold);
    const { key, desc } = this.sort;
    const sorted = [...this.rows].sort((a, b) => {
      const v = key === 'count' ? a.count - b.count : a.name.localeCompare(b.name);
      return desc ? -v : v;
    });
    this.body.replaceChildren(...sorted.map((r) => this._row(r)));
    this.order = sorted.map((r) => r.name).filter((n) => this.rows.find((r) => r.name === n && !r.error && r.path));
  }

  updateCounts(threshold) {  // on every slider move: only the numbers change
    this.threshold = threshold;
    for (const r of this.rows) {
      r.count = countAtLeast(r.scores, threshold);
      if (r.countCell) r.countCell.textContent = String(r.count);
    }
  }

  _row(r) {
    const tr = document.createElement('tr');
    tr.dataset.name = r.name;
    const thumb = document.createElement('td');
    const img = document.createElement('img');
    img.alt = '';
    img.dataset.name = r.name;
    thumb.append(img);
    if (r.path && !r.error) {
      if (this.thumbs.has(r.name)) img.src = this.thumbs.get(r.name);
      else this.observer.observe(img);
    }
    const name = document.createElement('td');
    name.textContent = r.name;
    const count = document.createElement('td');
    count.className = 'count';
    count.textContent = String(r.count);
    r.countCell = count;
    const range = document.createElement('td');
    range.textContent = r.score_min == null ? '–' : `${r.score_min.toFixed(2)} … ${r.score_max.toFixed(2)}`;
    const status = document.createElement('td');
    status.className = 'error';
    if (r.error) { tr.className = 'failed'; status.textContent = `failed: ${r.error}`; }
    else if (!r.path) status.textContent = 'no image path known (give --micrographs)';
    else status.textContent = `${r.n} picks in all`;
    tr.append(thumb, name, count, range, status);
    if (r.path && !r.error) tr.addEventListener('click', () => this.onOpen(r.name));
    return tr;
  }

  _queueThumb(img) { this.queue.push(img); this._pump(); }

  _pump() {
    while (this.loading < 2 && this.queue.length) {  // the server renders on few cores: two at a time
      const img = this.queue.shift();
      const name = img.dataset.name;
      this.loading++;
      getPicture(name, 'thumb').then(({ blob }) => {
        const url = URL.createObjectURL(blob);
        this.thumbs.set(name, url);
        document.querySelectorAll(`img[data-name="${CSS.escape(name)}"]`).forEach((i) => { i.src = url; });
      }).catch(() => { img.alt = 'unreadable'; }).finally(() => { this.loading--; this._pump(); });
    }
  }
}
