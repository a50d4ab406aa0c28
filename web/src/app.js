// Pacer's live dashboard: the race on a map, the league table, a device panel with charts,
// alerts, the streams and a SQL console. The map and table follow the league table's stream
// (one row per runner, re-sent whenever its rank, progress or gap changes) over SSE;
// replaying it from the beginning also draws the trails and fills the charts. Updates are
// drawn once per animation frame, however many arrive.
import L from 'leaflet';
import 'leaflet/dist/leaflet.css';
import './app.css';
import { feature } from 'topojson-client';
import land from 'world-atlas/land-50m.json';
import { escapeHtml, km, duration, pace, clock, follow } from './util.js';
import { TimeChart } from './chart.js';
import { Alerts } from './alerts.js';
import { Streams } from './streams.js';
import { SqlConsole } from './sql.js';
import { Replay } from './replay.js';
import { MetricGrid } from './grid.js';
import { signIn } from './login.js';

const COLORS = ['#e63946', '#1d4ed8', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#65a30d'];
const TRAIL_POINTS = 2000;
/** A device that went offline, as a dot on the canvas (labelled markers use .offline). */
const OFFLINE_COLOR = '#94a3b8';
/** Trails show the last ten minutes of event time. */
const TRAIL_MS = 10 * 60 * 1000;
/** Past this many runners, new ones are dots on a canvas (no label), trails too, and the page
 * redraws on a tick (4 times a second) instead of every frame: dots every tick, trails and the
 * table (only its rows in view) in turns. 1000 devices at 1 Hz stay smooth. */
const MANY = 60;
const TICK_MS = 250;
/** With many runners: two minutes of trail each, a point every 5 s. */
const TRAIL_MS_MANY = 2 * 60 * 1000;
const TRAIL_STEP_MS_MANY = 5000;
/** Rows drawn beyond the visible ones, either side, so scrolling shows no blank. */
const ROWS_AROUND = 10;
const HISTORY_POINTS = 5000;
/** Numeric fields of a status row not worth charting. */
const NOT_CHARTED = new Set(['lat', 'lon', 'ts', 'rank', 'fixes', 'finished_at', 'projected_finish']);

const $ = (id) => document.getElementById(id);
const map = L.map('map', { zoomSnap: 0.25, worldCopyJump: true }).setView([0, 0], 2);
// Dots and trails on separate canvases: a dot that moves redraws the dots, not 1000 trails.
const dotCanvas = L.canvas();
const trailCanvas = L.canvas();
let lastRender = 0;
let tick = 0;
/** Trails or a status colour on the map, and the table, wait to be redrawn. */
let mapStale = false;
let tableStale = false;
L.control.scale({ imperial: false, maxWidth: 160 }).addTo(map);

// Offline basemap first: Natural Earth land under whatever tiles manage to load.
L.geoJSON(feature(land, land.objects.land), {
  interactive: false,
  style: { color: '#9aa99a', weight: 1, fillColor: '#eef2e6', fillOpacity: 1 },
}).addTo(map);

const runners = new Map(); // who -> { marker, trail, color, points, history, status, rank, online }
let pending = new Map();
let renderQueued = false;
let firstTs = null;
let selected = null;
let sort = { key: 'rank', descending: false };
/** A league row's height (px), measured after each draw. */
let rowHeight = 29;

const tabs = [...document.querySelectorAll('[role=tab]')];
const alerts = new Alerts($('alerts'), $('alert-count'), () => !$('panel-alerts').hidden);
const streams = new Streams($('stream-rows'), $('tail-title'), $('tail'));
const chart = new TimeChart($('chart'));
const replay = new Replay(
  {
    toggle: $('replay-toggle'),
    bar: $('replay-bar'),
    play: $('replay-play'),
    speed: $('replay-speed'),
    slider: $('replay-slider'),
    label: $('replay-time'),
  },
  () => [firstTs, latestTs()],
  () => drawAll(),
);
new SqlConsole({
  text: $('sql-text'),
  run: $('sql-run'),
  stop: $('sql-stop'),
  status: $('sql-status'),
  result: $('sql-result'),
  chart: $('sql-chart'),
  format: $('sql-format'),
  download: $('sql-download'),
});

async function start() {
  await signIn({
    screen: $('login-screen'),
    form: $('login-form'),
    user: $('login-user'),
    password: $('login-password'),
    error: $('login-error'),
    who: $('who'),
    logout: $('logout'),
    login: $('login'),
  });
  const config = await (await fetch('/api/v1/config')).json();
  liveStream = config.live_stream;
  addTiles(config);
  const courses = await (await fetch('/api/v1/courses')).json();
  let bounds = null;
  for (const f of courses.features) {
    const line = L.geoJSON(f, { interactive: false, style: { color: '#14213d', weight: 4, opacity: 0.55 } }).addTo(map);
    bounds = bounds ? bounds.extend(line.getBounds()) : line.getBounds();
  }
  const zones = await (await fetch('/api/v1/zones')).json();
  for (const z of zones.features) drawZone(z);
  if (config.finish) {
    const icon = L.divIcon({ className: 'finish-flag', html: '<span>FINISH</span>', iconSize: null });
    L.marker([config.finish.lat, config.finish.lon], { icon, title: 'Finish', keyboard: false }).addTo(map);
    if (!bounds) bounds = L.latLngBounds([[config.finish.lat, config.finish.lon]]);
  }
  // The view is set once. After this only the user moves the map (or Follow, which they chose).
  if (bounds) map.fitBounds(bounds.pad(0.05));
  const connection = $('connection');
  follow(config.live_stream, 'beginning', onStatusRows, (state) => {
    connection.textContent = state === 'live' ? 'live' : 'reconnecting…';
    connection.className = state === 'live' ? 'live' : '';
  });
  for (const stream of config.alert_streams || []) {
    follow(stream, 'beginning', (records) => {
      for (const { key, value, timestamp } of records) {
        if (!value) continue;
        // A geofence event says who entered or left; any other alert row shows its fields.
        if (value.event) alerts.add('zone', `${value.who ?? value.device ?? key} ${value.event} (${stream})`, value.at);
        else alerts.add('query', `${stream}: ${key ?? ''} ${summary(value)}`, timestamp);
      }
    });
  }
  follow('device_status', 'beginning', (records) => {
    for (const { value } of records) {
      if (!value || !value.device) continue;
      alerts.status(value);
      const r = runners.get(value.device);
      if (r) r.online = value.status === 'online';
      online.set(value.device, value.status === 'online');
      mapStale = true;
      tableStale = true;
    }
    queueRender();
  });
}

/** The stream of status rows the map and the table follow. */
let liveStream = null;

/** An alert row's fields in a line: `name value`, the window bounds as times. */
function summary(value) {
  return Object.entries(value)
    .map(([k, v]) => `${k} ${/^window_?(start|end)$/i.test(k) && typeof v === 'number' ? clock(v) : typeof v === 'number' ? Number(v.toFixed(2)) : v}`)
    .join(', ');
}

/** Device status by device, for runners that appear after their status did. */
const online = new Map();

/** A zone on the map: circles in metres, polygons, corridors as dashed lines. */
function drawZone(f) {
  const style = { color: '#7c3aed', weight: 2, fillOpacity: 0.08, interactive: false, className: 'zone' };
  const [lon, lat] = f.geometry.type === 'Point' ? f.geometry.coordinates : [0, 0];
  const layer = f.properties.kind === 'circle'
    ? L.circle([lat, lon], { ...style, radius: f.properties.radius_m })
    : L.geoJSON(f, { style: () => ({ ...style, dashArray: f.properties.kind === 'corridor' ? '6 4' : null }) });
  layer.addTo(map);
  layer.bindTooltip?.(f.properties.name);
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

/** No tiles: the bundled land, a metric grid and the scale bar carry the map. */
function showOfflineNote() {
  $('basemap-note').hidden = false;
  grid ??= new MetricGrid(map);
}
let grid = null;

function onStatusRows(records) {
  for (const rec of records) {
    const s = rec.value;
    if (!s || typeof s.lat !== 'number') continue;
    const r = runner(s.who);
    const last = r.points[r.points.length - 1];
    const many = runners.size > MANY;
    if (!last || last.lat !== s.lat || last.lng !== s.lon) {
      const point = L.latLng(s.lat, s.lon);
      point.ts = s.ts;
      // With many runners a trail keeps a point every TRAIL_STEP_MS_MANY (and the latest).
      const before = r.points[r.points.length - 2];
      if (many && before && s.ts - before.ts < TRAIL_STEP_MS_MANY) r.points[r.points.length - 1] = point;
      else r.points.push(point);
    }
    let old = 0;
    const keep = many ? TRAIL_MS_MANY : TRAIL_MS;
    while (old < r.points.length && r.points[old].ts < s.ts - keep) old += 1;
    if (r.points.length - old > TRAIL_POINTS) old = r.points.length - TRAIL_POINTS;
    if (old > 0) r.points.splice(0, old);
    if (!r.history.length || r.history[r.history.length - 1].ts !== s.ts) r.history.push(s);
    if (r.history.length > HISTORY_POINTS) r.history.splice(0, r.history.length - HISTORY_POINTS);
    if (s.finished_at && !r.finishedNoted) {
      r.finishedNoted = true;
      alerts.add('finish', `${s.who} finished, rank ${s.rank}`, s.finished_at);
    }
    pending.set(s.who, s);
    if (firstTs === null || s.ts < firstTs) firstTs = s.ts;
  }
  queueRender();
}

/** Draws what arrived: in the next frame, or with many runners on the next tick. */
function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  if (runners.size <= MANY) requestAnimationFrame(render);
  else setTimeout(() => requestAnimationFrame(render), Math.max(0, lastRender + TICK_MS - performance.now()));
}

function runner(who) {
  let r = runners.get(who);
  if (r) return r;
  const color = COLORS[runners.size % COLORS.length];
  const few = runners.size < MANY;
  let marker;
  if (few) {
    const icon = L.divIcon({
      className: 'runner',
      html: `<span class="dot" style="background:${color}"></span><span class="label">${escapeHtml(who)}</span>`,
      iconSize: null,
    });
    marker = L.marker([0, 0], { icon, title: who, alt: who, riseOnHover: true });
  } else {
    marker = L.circleMarker([0, 0], { renderer: dotCanvas, radius: 5, color: '#fff', weight: 1, fillColor: color, fillOpacity: 1 });
    marker.bindTooltip(who);
  }
  marker.on('click', () => select(who));
  const trail = L.polyline([], {
    color, weight: few ? 3 : 1.5, opacity: 0.8, interactive: false, className: 'trail', renderer: few ? undefined : trailCanvas,
  }).addTo(map);
  r = { marker, trail, color, points: [], history: [], status: null, rank: null, online: online.get(who) ?? true, added: false };
  runners.set(who, r);
  return r;
}

function render() {
  renderQueued = false;
  lastRender = performance.now();
  const many = runners.size > MANY;
  // With many runners the dots move every tick, and the trails and the table take turns.
  tick += 1;
  const drawTrails = !many || tick % 2 === 0;
  const drawTable = !many || tick % 2 === 1;
  for (const [who, s] of pending) {
    const r = runner(who);
    r.status = s;
    tableStale = true;
    if (replay.active) continue; // the replay decides what the map shows
    // Most rows of a busy league only change ranks: the dot stays where it is.
    if (place(who, r, s)) {
      r.trailStale = true;
      mapStale = true;
    }
  }
  if (drawTrails && mapStale) {
    mapStale = false;
    for (const r of runners.values()) {
      if (r.trailStale) r.trail.setLatLngs(r.points);
      r.trailStale = false;
      if (r.drawnOnline !== r.online) {
        r.drawnOnline = r.online;
        const element = r.marker.getElement?.();
        if (element) element.classList.toggle('offline', !r.online);
        else r.marker.setStyle({ fillColor: r.online ? r.color : OFFLINE_COLOR });
      }
    }
  }
  if (replay.active) $('replay-slider').max = String(latestTs());
  if (selected && pending.has(selected) && !replay.active) {
    if ($('follow').checked) map.panTo(runners.get(selected).marker.getLatLng(), { animate: false });
    renderDevice();
  }
  pending = new Map();
  if (drawTable && tableStale) {
    tableStale = false;
    if (!$('panel-league').hidden) renderTable();
  }
  // Whatever arrives last is drawn, even if nothing follows it.
  if (mapStale || tableStale) queueRender();
}

/** Puts a runner's marker where `s` says, adding it to the map the first time; whether it moved. */
function place(who, r, s) {
  const at = r.marker.getLatLng();
  const moved = !r.added || at.lat !== s.lat || at.lng !== s.lon;
  if (moved) r.marker.setLatLng([s.lat, s.lon]);
  if (!r.added) {
    r.marker.addTo(map);
    const element = r.marker.getElement?.();
    if (element) element.dataset.who = who;
    r.added = true;
  }
  return moved;
}

function latestTs() {
  let latest = null;
  for (const r of runners.values()) if (r.status && (latest === null || r.status.ts > latest)) latest = r.status.ts;
  return latest;
}

/** What a runner's row was at replay time `t`: its last row at or before it. */
function statusAt(r, t) {
  const h = r.history;
  let lo = 0;
  let hi = h.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (h[mid].ts <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 ? h[lo - 1] : null;
}

/** The row shown for a runner: live, or at the replay time. */
function shown(r) {
  return replay.active ? statusAt(r, replay.time) : r.status;
}

/** Redraws markers, trails, table and panel for the replay time (or live). */
function drawAll() {
  for (const [who, r] of runners) {
    const s = shown(r);
    if (!s) {
      // Not started yet at the replay time: off the map.
      r.trail.setLatLngs([]);
      if (r.added) {
        r.marker.remove();
        r.added = false;
      }
      continue;
    }
    place(who, r, s);
    const upTo = replay.active ? r.history.filter((h) => h.ts <= replay.time).map((h) => L.latLng(h.lat, h.lon)) : r.points;
    r.trail.setLatLngs(upTo);
  }
  renderTable();
  if (selected) renderDevice();
}

function value(who, r, key) {
  if (key === 'who') return who;
  if (key === 'online') return r.online ? 1 : 0;
  return shown(r)[key];
}

/** Whether a pointer is down on the table: redrawing then would lose the click. */
let tablePressed = false;
let tableDeferred = false;

function renderTable() {
  if (tablePressed) {
    tableDeferred = true;
    return;
  }
  const rows = [...runners.entries()].filter(([, r]) => shown(r));
  const direction = sort.descending ? -1 : 1;
  rows.sort(([a, ra], [b, rb]) => {
    const x = value(a, ra, sort.key);
    const y = value(b, rb, sort.key);
    if (x == null && y != null) return 1;
    if (y == null && x != null) return -1;
    const c = typeof x === 'string' ? x.localeCompare(y) : x - y;
    return direction * c || a.localeCompare(b);
  });
  const latest = rows.reduce((m, [, r]) => Math.max(m, shown(r).ts), -Infinity);
  // Only the rows in view (and a few either side) are in the DOM; spacers keep the scroll
  // height, so 1000 runners cost what 40 do.
  const panel = $('panel-league');
  const body = $('league-rows');
  const above = panel.getBoundingClientRect().top - body.getBoundingClientRect().top;
  const first = Math.max(0, Math.floor(above / rowHeight) - ROWS_AROUND);
  const last = Math.min(rows.length, first + Math.ceil(panel.clientHeight / rowHeight) + 2 * ROWS_AROUND);
  const html = rows.slice(first, last).map(([who, r], i) => {
    const s = shown(r);
    // Highlight a change of rank as the query computed it.
    const moved = r.rank && s.rank !== r.rank ? (s.rank < r.rank ? 'moved-up' : 'moved-down') : '';
    r.rank = s.rank;
    const toFinish = s.finished_at ? `finished ${duration(s.finished_at - firstTs)}` : km(s.to_finish_m);
    const gap = s.gap_m ? `+${km(s.gap_m)}` : '—';
    const state = r.online ? 'online' : 'offline';
    return `<tr data-who="${escapeHtml(who)}" data-to-finish="${s.to_finish_m}" data-rank="${s.rank}" tabindex="0"
        aria-rowindex="${first + i + 2}" class="${moved}${who === selected ? ' selected' : ''}">
      <td>${s.rank ?? '—'}</td>
      <td><span class="swatch" style="background:${r.color}"></span>${escapeHtml(who)}</td>
      <td>${toFinish}</td>
      <td>${km(s.progress_m)}</td>
      <td>${s.speed == null ? '—' : Number(s.speed).toFixed(1)}</td>
      <td>${pace(s.pace_min_km)}</td>
      <td>${gap}</td>
      <td>${clock(s.ts)}</td>
      <td class="${state}">${state}</td></tr>`;
  });
  const spacer = (n) => `<tr class="spacer" aria-hidden="true"><td colspan="9" style="height:${n * rowHeight}px"></td></tr>`;
  if (first > 0) html.unshift(spacer(first));
  if (last < rows.length) html.push(spacer(rows.length - last));
  // Keyboard focus stays on the runner it was on.
  const focused = document.activeElement?.closest?.('#league-rows tr')?.dataset.who;
  body.innerHTML = html.join('');
  if (focused) body.querySelector(`tr[data-who="${CSS.escape(focused)}"]`)?.focus({ preventScroll: true });
  $('league').setAttribute('aria-rowcount', String(rows.length + 1));
  const row = body.querySelector('tr[data-who]');
  if (row) rowHeight = row.getBoundingClientRect().height || rowHeight;
  if (firstTs !== null && Number.isFinite(latest)) {
    $('race-clock').textContent = `race time ${duration(latest - firstTs)}`;
  }
}

function select(who) {
  selected = who;
  showTab('device');
  renderDevice();
  renderTable();
}

function renderDevice() {
  const r = runners.get(selected);
  $('device-none').hidden = Boolean(r);
  $('device-detail').hidden = !r;
  const s = r && shown(r);
  if (!s) return;
  $('device-name').textContent = selected;
  const facts = [
    ['Rank', s.rank],
    ['Covered', km(s.progress_m)],
    ['To finish', s.finished_at ? 'finished' : km(s.to_finish_m)],
    ['Speed', s.speed == null ? '—' : `${Number(s.speed).toFixed(1)} km/h`],
    ['Pace', `${pace(s.pace_min_km)} /km`],
    ['Heading', s.heading == null ? '—' : `${Math.round(s.heading)}°`],
    ['Altitude', s.alt == null ? '—' : `${s.alt} m`],
    ['Projected finish', clock(s.projected_finish)],
    ['Last fix', clock(s.ts)],
    ['Status', r.online ? 'online' : 'offline'],
  ];
  $('device-facts').innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${escapeHtml(v ?? '—')}</dd>`).join('');
  const select = $('chart-field');
  const fields = Object.keys(s).filter((k) => typeof s[k] === 'number' && !NOT_CHARTED.has(k));
  if ([...select.options].map((o) => o.value).join() !== fields.join()) {
    const keep = select.value;
    select.innerHTML = fields.map((f) => `<option>${escapeHtml(f)}</option>`).join('');
    select.value = fields.includes(keep) ? keep : fields.includes('speed') ? 'speed' : fields[0];
  }
  const field = select.value;
  const points = chartRows(selected, r).filter((h) => typeof h[field] === 'number').map((h) => [h.ts, h[field]]);
  chart.show(field, points);
}

/** The chosen range of one runner's rows, read from the server: { who, range, rows }. */
let ranged = null;

/**
 * The rows the device chart shows: what the page received ("Live"), or the chosen range read
 * from the server followed by what arrived since; with replay, up to the replay time.
 */
function chartRows(who, r) {
  const range = $('chart-range').value;
  let rows = r.history;
  if (range !== 'live') {
    if (ranged?.who !== who || ranged?.range !== range) loadRange(who, r, range);
    const stored = ranged.rows ?? [];
    const last = stored.length ? stored[stored.length - 1].ts : -Infinity;
    rows = stored.concat(r.history.filter((h) => h.ts > last));
    if (range !== 'all') {
      const from = r.status.ts - Number(range);
      rows = rows.filter((h) => h.ts >= from);
    }
  }
  return replay.active ? rows.filter((h) => h.ts <= replay.time) : rows;
}

/** Reads a runner's rows over `range` (ms before its last fix, or 'all') from the stream. */
async function loadRange(who, r, range) {
  const request = { who, range, rows: null };
  ranged = request;
  const status = $('chart-status');
  status.textContent = 'reading history…';
  const from = range === 'all' ? '' : `&from=${r.status.ts - Number(range)}`;
  try {
    const url = `/api/v1/streams/${encodeURIComponent(liveStream)}/records?key=${encodeURIComponent(who)}${from}&limit=100000`;
    const response = await fetch(url);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ?? response.statusText);
    // A runner's row is sent again when others overtake it: keep one row per fix, the last.
    const rows = [];
    for (const { value } of body.records) {
      if (!value || typeof value.ts !== 'number') continue;
      if (rows.length && rows[rows.length - 1].ts === value.ts) rows[rows.length - 1] = value;
      else rows.push(value);
    }
    request.rows = rows;
    if (ranged === request) status.textContent = `${rows.length} fixes from the server`;
  } catch (e) {
    request.rows = [];
    if (ranged === request) status.textContent = `history could not be read: ${e.message}`;
  }
  if (ranged === request && selected === who) renderDevice();
}

function showTab(name) {
  for (const tab of tabs) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute('aria-controls')).hidden = !on;
  }
  if (name === 'alerts') alerts.seen();
  if (name === 'streams') streams.start();
  else streams.stop();
  if (name === 'device') renderDevice();
  if (name === 'league') renderTable();
}

for (const tab of tabs) {
  tab.addEventListener('click', () => showTab(tab.id.slice(4)));
  tab.addEventListener('keydown', (e) => {
    const i = tabs.indexOf(tab);
    const next = e.key === 'ArrowRight' ? tabs[(i + 1) % tabs.length] : e.key === 'ArrowLeft' ? tabs[(i + tabs.length - 1) % tabs.length] : null;
    if (next) {
      next.focus();
      showTab(next.id.slice(4));
    }
  });
}

document.querySelector('#league thead').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-sort]');
  if (!button) return;
  const key = button.dataset.sort;
  sort = { key, descending: sort.key === key ? !sort.descending : false };
  for (const b of document.querySelectorAll('#league th')) b.removeAttribute('aria-sort');
  button.closest('th').setAttribute('aria-sort', sort.descending ? 'descending' : 'ascending');
  renderTable();
});

const choose = (e) => {
  const row = e.target.closest('tr[data-who]');
  if (row && (e.type === 'click' || e.key === 'Enter')) select(row.dataset.who);
};
$('league-rows').addEventListener('click', choose);
$('league-rows').addEventListener('pointerdown', () => {
  tablePressed = true;
});
for (const type of ['pointerup', 'pointercancel']) {
  window.addEventListener(type, () => {
    tablePressed = false;
    if (tableDeferred) {
      tableDeferred = false;
      requestAnimationFrame(renderTable);
    }
  });
}
$('panel-league').addEventListener('scroll', () => requestAnimationFrame(renderTable), { passive: true });
$('league-rows').addEventListener('keydown', choose);
$('chart-field').addEventListener('change', renderDevice);
$('chart-range').addEventListener('change', () => {
  if ($('chart-range').value === 'live') {
    ranged = null; // a read still under way is no longer wanted
    $('chart-status').textContent = '';
  }
  renderDevice();
});

start().catch((e) => {
  $('connection').textContent = `error: ${e.message}`;
});
