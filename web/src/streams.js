// The streams browser: every stream with its size and rate, and a live tail of the one
// picked (dead letters show their reasons there).
import { escapeHtml, clock, follow } from './util.js';

const TAIL_LINES = 50;

export class Streams {
  constructor(rows, title, tail) {
    this.rows = rows;
    this.title = title;
    this.tail = tail;
    this.previous = new Map(); // name -> [records, ms]
    this.source = null;
    this.timer = null;
    rows.addEventListener('click', (e) => {
      const button = e.target.closest('button[data-stream]');
      if (button) this.open(button.dataset.stream);
    });
  }

  start() {
    if (this.timer) return;
    this.refresh();
    this.timer = setInterval(() => this.refresh(), 2000);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    const { streams } = await (await fetch('/api/v1/streams')).json();
    const now = Date.now();
    const html = streams.map((s) => {
      const before = this.previous.get(s.name);
      const rate = before ? ((s.records - before[0]) * 1000) / (now - before[1]) : null;
      this.previous.set(s.name, [s.records, now]);
      return `<tr data-stream-row="${escapeHtml(s.name)}"><td><button data-stream="${escapeHtml(s.name)}">${escapeHtml(s.name)}</button></td>
        <td>${s.records}</td><td>${rate == null ? '—' : rate.toFixed(1)}</td><td>${clock(s.last_timestamp)}</td></tr>`;
    });
    this.rows.innerHTML = html.join('');
  }

  open(name) {
    this.source?.close();
    this.title.hidden = false;
    this.title.textContent = `${name}: live`;
    this.tail.textContent = '';
    const lines = [];
    this.source = follow(name, 'end', (records) => {
      for (const r of records) lines.push(`${clock(r.timestamp)} ${r.key ?? ''} ${JSON.stringify(r.value)}`);
      lines.splice(0, Math.max(0, lines.length - TAIL_LINES));
      this.tail.textContent = lines.join('\n');
    });
  }
}
