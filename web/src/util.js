// Small formatting helpers shared by the views.

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

export function km(m) {
  return m == null ? '—' : `${(m / 1000).toFixed(2)} km`;
}

export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  return `${Math.floor(s / 3600)}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`;
}

/** Minutes per km as m:ss. */
export function pace(minPerKm) {
  if (minPerKm == null || !Number.isFinite(minPerKm) || minPerKm > 60) return '—';
  const whole = Math.floor(minPerKm);
  return `${whole}:${String(Math.round((minPerKm - whole) * 60)).padStart(2, '0')}`;
}

export function clock(ms) {
  return ms == null ? '—' : new Date(ms).toISOString().slice(11, 19);
}

/**
 * Follows a stream's live feed (SSE). EventSource reconnects by itself and sends the last
 * event id, so the server resumes right after the last batch it delivered: no gap, no
 * duplicate. `onRecords` gets each batch of {key, timestamp, value} records.
 */
export function follow(stream, from, onRecords, onState) {
  const source = new EventSource(`/api/v1/live?stream=${encodeURIComponent(stream)}&from=${from}&compact=true`);
  source.addEventListener('open', () => onState?.('live'));
  source.addEventListener('error', () => onState?.('reconnecting'));
  source.addEventListener('records', (e) => onRecords(JSON.parse(e.data)));
  return source;
}
