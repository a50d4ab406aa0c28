// The SQL console: pull queries and DDL answer once; push queries (EMIT CHANGES) stream
// rows until Stop. Results show as a table, and as a chart when a column is numeric.
import { escapeHtml } from './util.js';
import { TimeChart } from './chart.js';

const MAX_ROWS = 500;

export class SqlConsole {
  constructor({ text, run, stop, status, result, chart, format, download }) {
    Object.assign(this, { text, runButton: run, stopButton: stop, status, result, format });
    this.chart = new TimeChart(chart);
    this.abort = null;
    run.addEventListener('click', () => this.run());
    download.addEventListener('click', () => this.download());
    stop.addEventListener('click', () => this.abort?.abort());
    text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.run();
      }
    });
  }

  async run() {
    this.abort?.abort();
    const abort = new AbortController();
    this.abort = abort;
    this.status.textContent = 'running…';
    this.result.innerHTML = '';
    this.chart.clear();
    try {
      const response = await fetch('/api/v1/sql', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ sql: this.text.value }),
        signal: abort.signal,
      });
      if ((response.headers.get('content-type') || '').startsWith('application/x-ndjson')) {
        await this.stream(response);
        return;
      }
      const body = await response.json();
      if (!response.ok) {
        this.status.textContent = '';
        this.result.innerHTML = `<p class="error" role="alert">${escapeHtml(body.error || response.statusText)}</p>`;
        return;
      }
      for (const one of body.results || [body]) {
        if (one.message) this.result.insertAdjacentHTML('beforeend', `<p>${escapeHtml(one.message)}</p>`);
        if (one.columns && one.rows) this.table(one.columns, one.rows);
      }
      this.status.textContent = body.rows ? `${body.rows.length} rows` : 'done';
    } catch (e) {
      if (e.name !== 'AbortError') this.status.textContent = `failed: ${e.message}`;
    }
  }

  /** The pull query's rows as a file (CSV, GeoJSON, GPX), written by Pacer. */
  async download() {
    const format = this.format.value;
    this.status.textContent = `writing ${format}…`;
    const response = await fetch('/api/v1/sql', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ sql: this.text.value, format }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      this.status.textContent = '';
      this.result.innerHTML = `<p class="error" role="alert">${escapeHtml(body.error || response.statusText)}</p>`;
      return;
    }
    const link = document.createElement('a');
    link.href = URL.createObjectURL(await response.blob());
    link.download = `pacer-query.${format}`;
    link.click();
    URL.revokeObjectURL(link.href);
    this.status.textContent = `downloaded ${link.download}`;
  }

  /** NDJSON: a `{"columns": […]}` line, then one object per row, until Stop. */
  async stream(response) {
    this.stopButton.disabled = false;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let columns = null;
    const rows = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        let end;
        while ((end = text.indexOf('\n')) >= 0) {
          const line = JSON.parse(text.slice(0, end));
          text = text.slice(end + 1);
          if (!columns) {
            columns = line.columns;
            continue;
          }
          rows.push(columns.map((c) => line[c]));
          if (rows.length > MAX_ROWS) rows.shift();
        }
        this.table(columns, rows);
        this.status.textContent = `${rows.length} rows (live)`;
      }
    } catch (e) {
      if (e.name !== 'AbortError') throw e;
    } finally {
      this.stopButton.disabled = true;
    }
  }

  table(columns, rows) {
    const head = columns.map((c) => `<th scope="col">${escapeHtml(c)}</th>`).join('');
    const body = rows
      .map((r) => `<tr>${r.map((v) => `<td>${escapeHtml(typeof v === 'object' && v !== null ? JSON.stringify(v) : v ?? '')}</td>`).join('')}</tr>`)
      .join('');
    this.result.innerHTML = `<table class="result"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
    this.plot(columns, rows);
  }

  /** Charts the first numeric column against a time column (or the row number). */
  plot(columns, rows) {
    const timeColumn = columns.findIndex((c) => /^(ts|at|rowtime|windowstart|time|timestamp)$/i.test(c));
    const numeric = columns.findIndex((c, i) => i !== timeColumn && rows.some((r) => typeof r[i] === 'number'));
    if (numeric < 0 || rows.length < 2) return;
    const points = rows
      .map((r, i) => [timeColumn >= 0 ? r[timeColumn] : i * 1000, r[numeric]])
      .filter(([t, v]) => typeof t === 'number' && typeof v === 'number')
      .sort((a, b) => a[0] - b[0]);
    this.chart.show(columns[numeric], points);
  }
}
