// Retraining from the page: Train (a new round's model from the labels), Pick all (re-pick with it), live progress.
import { deleteJSON, getJSON, postJSON } from './api.js';
import { drawLoss } from './plots.js';

export class JobPanel {
  constructor(el, { onFinished, onError, expectedDefault }) {
    this.el = el;
    this.onFinished = onFinished;
    this.onError = onError;
    this.expectedDefault = expectedDefault;
    this.timer = null;
    el.train.addEventListener('click', () => this.start('api/train', {
      epochs: el.epochs.value ? Number(el.epochs.value) : null,
      expected_particles: el.expected.value ? Number(el.expected.value) : this.expectedDefault(),
    }));
    el.pick.addEventListener('click', () => this.start('api/pick', {}));
    el.cancel.addEventListener('click', () => deleteJSON('api/job').catch((e) => this.onError(e.message)));
  }

  async start(path, body) {
    try {
      const job = await postJSON(path, body);
      this.show(job);
      this.poll();
    } catch (e) { this.onError(e.message); }
  }

  poll() {
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      try {
        const { job } = await getJSON('api/job');
        this.show(job);
        if (job && job.state === 'running') this.poll();
        else if (job) this.onFinished(job);
      } catch (e) { this.onError(e.message); }
    }, 400);
  }

  show(job) {
    const { el } = this;
    const running = !!job && job.state === 'running';
    el.train.disabled = el.pick.disabled = running;
    el.cancel.disabled = !running;
    el.root.dataset.state = job ? `${job.kind}:${job.state}` : '';
    if (!job) return;
    el.progress.max = Math.max(1, job.total);
    el.progress.value = job.done;
    const secs = `${job.seconds.toFixed(1)} s`;
    if (job.kind === 'train') {
      const loss = job.loss == null ? '' : `, loss ${job.loss.toFixed(4)}`;
      el.text.textContent = job.state === 'running'
        ? `round ${job.round}: training, epoch ${job.epoch}/${job.epochs}${loss} (${secs})`
        : `round ${job.round}: training ${job.state}${loss} (${secs})${job.error ? ': ' + job.error : ''}`;
      drawLoss(el.loss, job.history);
    } else {
      el.text.textContent = job.state === 'running'
        ? `round ${job.round}: picking ${job.done}/${job.total} (${secs})`
        : `${job.message || 'picking ' + job.state} (${secs})${job.error ? ': ' + job.error : ''}`;
    }
  }

  resume(job) { this.show(job); if (job && job.state === 'running') this.poll(); }
}
