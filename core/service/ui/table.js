// The micrographs table: a window of at most 200 rows, sorted, filtered and counted by the server
// (api/round/N/micrographs); thumbnail, pick count at the threshold, score range, failures with their error.
import { getJSON, getPicture } from './api.js';

export const PAGE = 200;

export class MicrographTable {
  constructor(table, { onOpen, onLoaded, pager }) {
    this.body = table.querySelector('tbody');
    this.onOpen = onOpen;
    this.onLoaded = onLoaded || (() => {});
    this.pager = pager;  // { prev, next, text, filter }
    this.round = 0;
    this.offset = 0;
    this.total = 0;
    this.q = '';
    this.threshold = null;
    this.sort = { key: 'name', desc: false };
    this.thumbs = new Map();  // name -> object URL (the last few hundred)
    this.queue = [];
    this.loading = 0;
    this.seq = 0;
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (e.isIntersecting) { this.observer.unobserve(e.target); this._queueThumb(e.target); }
      }
    });
    table.querySelectorAll('th[data-sort]').forEach((th) => th.addEventListener('click', () => {
      const key = th.dataset.sort;
      this.sort = { key, desc: this.sort.key === key ? !this.sort.desc : key === 'count' };
      this.offset = 0;
      this.load().catch(() => {});
    }));
    pager.prev.addEventListener('click', () => { this.offset = Math.max(0, this.offset - PAGE); this.load().catch(() => {}); });
    pager.next.addEventListener('click', () => {
      if (this.offset + PAGE < this.total) { this.offset += PAGE; this.load().catch(() => {}); }
    });
    let timer = null;
    pager.filter.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => { this.q = pager.filter.value.trim(); this.offset = 0; this.load().catch(() => {}); }, 250);
    });
  }

  params(extra = {}) {
    const p = new URLSearchParams({ sort: this.sort.key, desc: String(this.sort.desc), q: this.q, ...extra });
    if (this.threshold != null && Number.isFinite(this.threshold)) p.set('threshold', String(this.threshold));
    return p;
  }

  // Fetch and show the window at this.offset (or the one holding micrograph `at`); the newest request wins.
  async load({ at } = {}) {
    const seq = ++this.seq;
    const threshold = this.threshold;
    const p = this.params({ offset: String(this.offset), limit: String(PAGE) });
    if (at) p.set('at', at);
    const r = await getJSON(`api/round/${this.round}/micrographs?${p}`);
    if (seq !== this.seq) return null;
    this.offset = r.offset;
    this.total = r.total;
    this.rows = r.micrographs;
    this.body.replaceChildren(...r.micrographs.map((row) => this._row(row)));
    this.body.dataset.threshold = String(threshold);
    this.body.dataset.offset = String(r.offset);
    const last = Math.min(r.offset + r.micrographs.length, r.total);
    this.pager.text.textContent = r.total ? `${r.offset + 1}–${last} of ${r.total}` : 'none';
    this.pager.prev.disabled = r.offset === 0;
    this.pager.next.disabled = last >= r.total;
    this.onLoaded(r);
    return r;
  }

  async neighbour(name, step) {
    const p = this.params({ name, step: String(step) });
    return (await getJSON(`api/round/${this.round}/neighbour?${p}`)).name;
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
      if (!img.isConnected) continue;  // its page was left before its turn came
      const name = img.dataset.name;
      this.loading++;
      getPicture(name, 'thumb').then(({ blob }) => {
        const url = URL.createObjectURL(blob);
        this.thumbs.set(name, url);
        if (this.thumbs.size > 2 * PAGE) {  // keep the memory bounded too
          const [old, oldUrl] = this.thumbs.entries().next().value;
          this.thumbs.delete(old);
          URL.revokeObjectURL(oldUrl);
        }
        document.querySelectorAll(`img[data-name="${CSS.escape(name)}"]`).forEach((i) => { i.src = url; });
      }).catch(() => { img.alt = 'unreadable'; }).finally(() => { this.loading--; this._pump(); });
    }
  }
}
