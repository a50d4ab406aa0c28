// Pacer's live dashboard: the race on a map and a league table, fed by the SSE feed of the
// tracking query's status stream. Every status record is one runner's latest fix with its
// progress along the course and rank; replaying the stream from the beginning also draws
// the trails, and EventSource resumes after a network blip from the last event id.
import L from 'leaflet';
import 'leaflet/dist/leaflet.css';
import './app.css';
import { feature } from 'topojson-client';
import land from 'world-atlas/land-50m.json';

const COLORS = ['#e63946', '#1d4ed8', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#65a30d'];
const TRAIL_POINTS = 2000;

const map = L.map('map', { zoomSnap: 0.25, worldCopyJump: true }).setView([0, 0], 2);
L.control.scale({ imperial: false, maxWidth: 160 }).addTo(map);

// Offline basemap first: Natural Earth land under whatever tiles manage to load.
L.geoJSON(feature(land, land.objects.land), {
  interactive: false,
  style: { color: '#9aa99a', weight: 1, fillColor: '#eef2e6', fillOpacity: 1 },
}).addTo(map);

const runners = new Map(); // who -> { marker, trail, status, color, rank }
let pending = new Map();
let renderQueued = false;
let firstTs = null;

async function start() {
  const config = await (await fetch('/api/v1/config')).json();
  addTiles(config);
  const courses = await (await fetch('/api/v1/courses')).json();
  let bounds = null;
  for (const f of courses.features) {
    const line = L.geoJSON(f, { interactive: false, style: { color: '#14213d', weight: 4, opacity: 0.55 } }).addTo(map);
    bounds = bounds ? bounds.extend(line.getBounds()) : line.getBounds();
  }
  if (config.finish) {
    const icon = L.divIcon({ className: 'finish-flag', html: '<span>FINISH</span>', iconSize: null });
    L.marker([config.finish.lat, config.finish.lon], { icon, title: 'Finish', keyboard: false }).addTo(map);
    if (!bounds) bounds = L.latLngBounds([[config.finish.lat, config.finish.lon]]);
  }
  // The view is set once. After this only the user moves the map.
  if (bounds) map.fitBounds(bounds.pad(0.05));
  connect(config.live_stream);
}

function addTiles(config) {
  if (!config.tile_url) return showOfflineNote();
  const tiles = L.tileLayer(config.tile_url, { attribution: config.tile_attribution || '', maxZoom: 19 });
  let errors = 0;
  tiles.on('tileerror', () => {
    errors += 1;
    if (errors === 4) {
      map.removeLayer(tiles);
      showOfflineNote();
    }
  });
  tiles.addTo(map);
}

function showOfflineNote() {
  document.getElementById('basemap-note').hidden = false;
}

function connect(stream) {
  const status = document.getElementById('connection');
  const source = new EventSource(`/api/v1/live?stream=${encodeURIComponent(stream)}&from=beginning`);
  source.addEventListener('open', () => {
    status.textContent = 'live';
    status.className = 'live';
  });
  source.addEventListener('error', () => {
    status.textContent = 'reconnecting…';
    status.className = '';
  });
  source.addEventListener('records', (e) => {
    for (const rec of JSON.parse(e.data)) {
      const s = rec.value;
      if (!s || typeof s.lat !== 'number') continue;
      addTrailPoint(s);
      pending.set(s.who, s);
      if (firstTs === null || s.ts < firstTs) firstTs = s.ts;
    }
    if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(render);
    }
  });
}

function runner(who) {
  let r = runners.get(who);
  if (r) return r;
  const color = COLORS[runners.size % COLORS.length];
  const icon = L.divIcon({
    className: 'runner',
    html: `<span class="dot" style="background:${color}"></span><span class="label">${escapeHtml(who)}</span>`,
    iconSize: null,
  });
  const marker = L.marker([0, 0], { icon, title: who, riseOnHover: true });
  const trail = L.polyline([], { color, weight: 3, opacity: 0.8, interactive: false, className: 'trail' }).addTo(map);
  r = { marker, trail, color, points: [], status: null, rank: null, added: false };
  runners.set(who, r);
  return r;
}

function addTrailPoint(s) {
  const r = runner(s.who);
  r.points.push(L.latLng(s.lat, s.lon));
  if (r.points.length > TRAIL_POINTS) r.points.splice(0, r.points.length - TRAIL_POINTS);
}

function render() {
  renderQueued = false;
  for (const [who, s] of pending) {
    const r = runner(who);
    r.status = s;
    r.marker.setLatLng([s.lat, s.lon]);
    if (!r.added) {
      r.marker.addTo(map);
      r.marker.getElement().dataset.who = who;
      r.added = true;
    }
    r.trail.setLatLngs(r.points);
  }
  pending = new Map();
  renderTable();
}

function renderTable() {
  const rows = [...runners.entries()].filter(([, r]) => r.status);
  rows.sort(([a, ra], [b, rb]) => ra.status.rank - rb.status.rank || a.localeCompare(b));
  const leader = rows.length ? rows[0][1].status : null;
  const latestTs = Math.max(...rows.map(([, r]) => r.status.ts));
  const body = document.getElementById('league-rows');
  const html = [];
  rows.forEach(([who, r], i) => {
    const s = r.status;
    const rank = i + 1;
    const moved = r.rank && rank !== r.rank ? (rank < r.rank ? 'moved-up' : 'moved-down') : '';
    r.rank = rank;
    const gap = leader && s !== leader ? `+${km(s.to_finish_m - leader.to_finish_m)}` : '—';
    const toFinish = s.finished_at ? 'finished' : km(s.to_finish_m);
    html.push(`<tr data-who="${escapeHtml(who)}" data-to-finish="${s.to_finish_m}" data-rank="${rank}" class="${moved}">
      <td>${rank}</td>
      <td><span class="swatch" style="background:${r.color}"></span>${escapeHtml(who)}</td>
      <td>${toFinish}</td>
      <td>${s.progress_m == null ? '—' : km(s.progress_m)}</td>
      <td>${s.speed == null ? '—' : s.speed.toFixed(1)}</td>
      <td>${gap}</td></tr>`);
  });
  body.innerHTML = html.join('');
  if (firstTs !== null && Number.isFinite(latestTs)) {
    document.getElementById('race-clock').textContent = `race time ${duration(latestTs - firstTs)}`;
  }
}

function km(m) {
  return `${(m / 1000).toFixed(2)} km`;
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  return `${Math.floor(s / 3600)}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

start().catch((e) => {
  document.getElementById('connection').textContent = `error: ${e.message}`;
});
