// pupick view: the page's state and wiring (table, viewer, threshold, labels, retraining rounds).
import { getJSON, getPicture, postJSON, putJSON } from './api.js';
import { JobPanel } from './jobs.js';
import { Histogram, drawPR, operatingPoint } from './plots.js';
import { MicrographTable } from './table.js';
import { Viewer, countAtLeast } from './viewer.js';

const $ = (id) => document.getElementById(id);
const S = {
  round: 0, range: [0, 1], diameter: null, suggested: null, pr: null, atThreshold: 0, withPicks: 0,
  labels: {}, threshold: 0, thresholdSet: false, current: null, undo: [], detail: null,
};

function say(text, kind = 'info') {
  const el = $('status');
  el.textContent = text;
  el.className = text ? kind : '';
}

// ---------------------------------------------------------------- threshold

const slider = $('threshold'), number = $('threshold-num');

function setThreshold(t, source) {
  if (!Number.isFinite(t)) return;
  S.threshold = t;
  if (source !== slider) slider.value = String(t);
  if (source !== number) number.value = t.toFixed(2);
  refreshCountsSoon(t);
  viewer.threshold = t;
  if (S.current) {
    viewer.drawOverlay();
    $('mic-count').textContent = String(countAtLeast(viewer.picks.score, t));
  }
  histogram.draw(t, S.suggested && S.suggested.threshold);
  drawPRText();
}

slider.addEventListener('input', () => setThreshold(parseFloat(slider.value), slider));
number.addEventListener('change', () => setThreshold(parseFloat(number.value), number));
$('use-suggested').addEventListener('click', () => S.suggested && setThreshold(S.suggested.threshold));

function drawPRText() {
  const op = drawPR($('pr'), S.pr, S.threshold);
  const text = $('pr-text');
  if (!S.pr) { text.textContent = 'no labels on these micrographs yet'; return; }
  text.textContent = `AP ${S.pr.ap.toFixed(3)} on ${S.pr.n_labels} labels in ${S.pr.micrographs.length} micrograph(s); ` +
    `at ${S.threshold.toFixed(2)}: precision ${op.precision.toFixed(3)}, recall ${op.recall.toFixed(3)}`;
}

// ---------------------------------------------------------------- data

// The counts at the threshold (the total and the table's window) come from the server: one request per pause
let countsTimer = null;
function refreshCountsSoon(t) {
  clearTimeout(countsTimer);
  countsTimer = setTimeout(() => {
    table.threshold = t;
    table.load().catch((e) => say(e.message, 'error'));
  }, 120);
}

function countsLoaded(r) {
  S.atThreshold = r.at_threshold;
  S.withPicks = r.with_picks;
  $('total-count').textContent = String(r.at_threshold);
}

async function loadRound(n) {
  const [scores] = await Promise.all([getJSON(`api/round/${n}/scores`)]);
  S.round = n;
  table.round = n;
  S.diameter = scores.diameter_px;
  S.range = scores.counts.length ? [scores.lo, scores.hi] : [0, 1];
  const [lo, hi] = S.range;
  slider.min = String(lo); slider.max = String(hi > lo ? hi : lo + 1);
  histogram.setBins(scores);
  await loadAnalysis();
  if (!S.thresholdSet) {
    S.thresholdSet = true;
    S.threshold = S.suggested ? S.suggested.threshold : lo;
  }
  S.threshold = Math.min(Math.max(S.threshold, lo), hi);
  table.threshold = S.threshold;
  await table.load();
  $('round').value = String(n);
  document.body.dataset.round = String(n);
  if (S.current) await openMicrograph(S.current);
  setThreshold(S.threshold);
}

async function loadAnalysis() {
  const a = await getJSON(`api/round/${S.round}/analysis`);
  S.suggested = a.suggested;
  S.pr = a.pr;
  const btn = $('use-suggested');
  btn.disabled = !S.suggested;
  btn.textContent = S.suggested ? `suggested: ${S.suggested.threshold.toFixed(2)}` : 'suggested: –';
  $('suggest-reason').textContent = S.suggested ? `(${S.suggested.reason})` : '';
  $('pr-note').textContent = a.match_radius ? `(match radius ${a.match_radius.toFixed(0)} px)` : '';
}

let analysisTimer = null;
function refreshAnalysisSoon() {
  clearTimeout(analysisTimer);
  analysisTimer = setTimeout(() => loadAnalysis().then(() => setThreshold(S.threshold)).catch((e) => say(e.message, 'error')), 700);
}

async function loadState(round) {
  const st = await getJSON('api/state');
  $('outdir').textContent = st.outdir;
  const sel = $('round');
  sel.replaceChildren(...st.rounds.filter((r) => r.picks).map((r) => {
    const o = document.createElement('option');
    o.value = String(r.round);
    o.textContent = r.round ? `round ${r.round}` : 'original';
    return o;
  }));
  const fmt = $('format');
  if (!fmt.options.length) fmt.replaceChildren(...st.formats.map((f) => Object.assign(document.createElement('option'), { value: f, textContent: f })));
  await loadRound(round ?? st.newest);
  return st;
}

$('round').addEventListener('change', (ev) => loadRound(Number(ev.target.value)).catch((e) => say(e.message, 'error')));

$('apply').addEventListener('click', async () => {
  try {
    const r = await postJSON('api/apply', { round: S.round, threshold: S.threshold, format: $('format').value });
    say(`wrote ${r.n} picks scoring ≥ ${r.threshold.toFixed(3)} to ${r.path}`);
  } catch (e) { say(e.message, 'error'); }
});

// ---------------------------------------------------------------- viewer and labels

const viewer = new Viewer($('stage'), $('img-layer'), $('pick-layer'), { onLabelsChanged: labelsChanged });
const histogram = new Histogram($('histogram'), (t) => setThreshold(t));
const table = new MicrographTable($('mics'), {
  onOpen: (name) => { location.hash = `#/m/${encodeURIComponent(name)}`; },
  onLoaded: countsLoaded,
  pager: { prev: $('page-prev'), next: $('page-next'), text: $('page-text'), filter: $('filter') },
});

let saving = Promise.resolve();
function saveLabels(name, points) {
  const copy = points.map((p) => p.slice());
  S.labels[name] = copy;
  saving = saving.then(() => putJSON(`api/labels/${encodeURIComponent(name)}`, { points: copy }))
    .then((r) => { say(`${r.n} label(s) on ${name}, ${r.total} in all, saved to ${r.file}`); document.body.dataset.saved = String(r.total); })
    .catch((e) => say(`labels not saved: ${e.message}`, 'error'));
  updateLabelInfo();
  refreshAnalysisSoon();
  return saving;
}

function labelsChanged(before, after) {
  S.undo.push({ name: S.current, points: before });
  $('undo').disabled = false;
  saveLabels(S.current, after);
}

function undo() {
  const last = S.undo.pop();
  $('undo').disabled = !S.undo.length;
  if (!last) return;
  if (last.name === S.current) { viewer.labels = last.points.map((p) => p.slice()); viewer.drawOverlay(); }
  saveLabels(last.name, last.points);
}

function updateLabelInfo() {
  const n = (S.labels[S.current] || []).length;
  $('mic-labels').textContent = `${n} label(s) here`;
}

async function openMicrograph(name) {
  const [p, pic] = await Promise.all([getJSON(`api/round/${S.round}/picks/${encodeURIComponent(name)}`),
    getPicture(name, 'view')]);
  const bitmap = await createImageBitmap(pic.blob);
  S.current = name;
  S.detail = null;
  showView('viewer');
  $('mic-name').textContent = name;
  viewer.threshold = S.threshold;
  viewer.setMicrograph({
    picture: bitmap, factor: pic.factor, shape: pic.shape, picks: p,
    labels: (S.labels[name] || []).map((q) => q.slice()), radius: (S.diameter || 40) / 2, range: S.range,
  });
  viewer.onZoom = (pxPerPicturePx) => {  // zoomed in past the picture's resolution: fetch the sharper one once
    if (pic.factor > 1 && pxPerPicturePx > 1.5 && !S.detail) {
      S.detail = name;
      getPicture(name, 'detail').then(async (d) => {
        if (S.current === name) viewer.setPicture(await createImageBitmap(d.blob), d.factor);
      }).catch((e) => say(e.message, 'error'));
    }
  };
  $('mic-count').textContent = String(countAtLeast(p.score, S.threshold));
  updateLabelInfo();
  document.body.dataset.micrograph = name;
}

async function step(delta) {  // the table's order is the server's: it names the neighbour
  try {
    const next = await table.neighbour(S.current, delta);
    if (next) location.hash = `#/m/${encodeURIComponent(next)}`;
  } catch (e) { say(e.message, 'error'); }
}

function showView(which) {
  $('table-view').hidden = which !== 'table';
  $('viewer-view').hidden = which !== 'viewer';
  document.body.dataset.view = which;
}

function setLabelMode(on) {
  viewer.labelMode = on;
  $('label-mode').checked = on;
  $('stage').classList.toggle('labelling', on);
}

function toggle(id, key) {
  const box = $(id);
  box.checked = !box.checked;
  viewer[key] = box.checked;
  viewer.drawOverlay();
}

$('show-picks').addEventListener('change', (e) => { viewer.showPicks = e.target.checked; viewer.drawOverlay(); });
$('show-labels').addEventListener('change', (e) => { viewer.showLabels = e.target.checked; viewer.drawOverlay(); });
$('label-mode').addEventListener('change', (e) => setLabelMode(e.target.checked));
$('undo').addEventListener('click', undo);
$('fit').addEventListener('click', () => viewer.fit());
$('back').addEventListener('click', () => { location.hash = '#/'; });
$('prev').addEventListener('click', () => step(-1));
$('next').addEventListener('click', () => step(1));

document.addEventListener('keydown', (ev) => {
  const tag = ev.target.tagName, type = ev.target.type;
  if ((tag === 'INPUT' && type !== 'checkbox' && type !== 'range') || tag === 'SELECT') return;
  if (type === 'range' && ev.key.startsWith('Arrow')) return;  // the slider's own keys
  if ((ev.ctrlKey || ev.metaKey) && ev.key === 'z') { ev.preventDefault(); undo(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey || !S.current || $('viewer-view').hidden) return;
  const actions = {
    n: () => step(1), ArrowRight: () => step(1), b: () => step(-1), ArrowLeft: () => step(-1),
    p: () => toggle('show-picks', 'showPicks'), l: () => toggle('show-labels', 'showLabels'),
    m: () => setLabelMode(!viewer.labelMode), u: undo, f: () => viewer.fit(), Escape: () => { location.hash = '#/'; },
    '+': () => viewer.zoomAt(viewer.stage.clientWidth / 2, viewer.stage.clientHeight / 2, 1.25),
    '-': () => viewer.zoomAt(viewer.stage.clientWidth / 2, viewer.stage.clientHeight / 2, 0.8),
  };
  if (actions[ev.key]) { ev.preventDefault(); actions[ev.key](); }
});

async function route() {
  const m = location.hash.match(/^#\/m\/(.+)$/);
  try {
    if (m) await openMicrograph(decodeURIComponent(m[1]));
    else {
      const from = S.current;
      S.current = null;
      showView('table');
      table.threshold = S.threshold;
      await table.load(from ? { at: from } : {});  // back to the page that holds the micrograph just seen
    }
  } catch (e) { say(e.message, 'error'); }
}
window.addEventListener('hashchange', route);

// ---------------------------------------------------------------- retraining

const jobs = new JobPanel({
  root: $('job-text'), train: $('train'), pick: $('pick-all'), cancel: $('cancel'), epochs: $('epochs'),
  expected: $('expected'), progress: $('job-progress'), text: $('job-text'), loss: $('loss'),
}, {
  onError: (msg) => say(msg, 'error'),
  expectedDefault: () => {  // the mean count per micrograph at the threshold the user chose
    if (!S.withPicks) return null;
    const mean = S.atThreshold / S.withPicks;
    return mean >= 1 ? Math.round(mean) : null;
  },
  onFinished: async (job) => {
    if (job.state !== 'done') { say(job.error || `${job.kind} ${job.state}`, job.state === 'failed' ? 'error' : 'info'); return; }
    if (job.kind === 'pick') {  // the newest round's picks replace the view
      await loadState(job.round);
      say(job.message);
    } else say(`${job.message}; press Pick all to re-pick every micrograph with it`);
  },
});

// ---------------------------------------------------------------- start

window.pupickView = {
  setThreshold: (t) => setThreshold(t),
  get threshold() { return S.threshold; },
  viewer,
  // milliseconds to redraw the picks at threshold t (the benchmark's slider move); reading a pixel back makes the
  // canvas rasterise now, so the time includes the drawing, not only the recording of the commands
  timeRedraw: (t) => {
    const t0 = performance.now();
    setThreshold(t);
    $('pick-layer').getContext('2d').getImageData(0, 0, 1, 1);
    $('histogram').getContext('2d').getImageData(0, 0, 1, 1);
    return performance.now() - t0;
  },
};

(async () => {
  try {
    const [st, labels] = await Promise.all([getJSON('api/state'), getJSON('api/labels')]);
    S.labels = labels.labels;
    await loadState(st.newest);
    jobs.resume(st.job);
    await route();
    document.body.dataset.ready = '1';
  } catch (e) { say(e.message, 'error'); }
})();
