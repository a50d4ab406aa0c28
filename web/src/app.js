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

const COLORS = ['#e63946', '#1d4ed8', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#65a30d'];
const TRAIL_POINTS = 2000;
/** Trails show the last ten minutes of event time. */
const TRAIL_MS = 10 * 60 * 1000;
/** Past this many runners, new ones are dots on a canvas (no label), trails too, and the
 * table and trails redraw at most twice a second: 1000 devices at 1 Hz stay smooth. */
const MANY = 60;
const SLOW_REDRAW_MS = 500;
/** With many runners: two minutes of trail each, and the table's first rows. */
const TRAIL_MS_MANY = 2 * 60 * 1000;
const TABLE_ROWS_MANY = 200;
const HISTORY_POINTS = 5000;
/** Numeric fields of a status row not worth charting. */
const NOT_CHARTED = new Set(['lat', 'lon', 'ts', 'rank', 'fixes', 'finished_at', 'projected_finish']);

const $ = (id) => document.getElementById(id);
const map = L.map('map', { zoomSnap: 0.25, worldCopyJump: true }).setView([0, 0], 2);
const canvas = L.canvas({ padding: 0.2 });
let lastSlowRedraw = 0;
let slowRedrawQueued = false;
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
});

async function start() {
  const config = await (await fetch('/api/v1/config')).json();
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
      for (const { key, value } of records) {
        if (!value || !value.event) continue;
        alerts.add('zone', `${value.who ?? value.device ?? key} ${value.event} (${stream})`, value.at);
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
    }
    queueRender();
  });
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

function showOfflineNote() {
  $('basemap-note').hidden = false;
}

function onStatusRows(records) {
  for (const rec of records) {
    const s = rec.value;
    if (!s || typeof s.lat !== 'number') continue;
    const r = runner(s.who);
    const last = r.points[r.points.length - 1];
    if (!last || last.lat !== s.lat || last.lng !== s.lon) {
      const point = L.latLng(s.lat, s.lon);
      point.ts = s.ts;
      r.points.push(point);
    }
    let old = 0;
    const keep = runners.size > MANY ? TRAIL_MS_MANY : TRAIL_MS;
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

function queueRender() {
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(render);
  }
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
    marker = L.circleMarker([0, 0], { renderer: canvas, radius: 5, color: '#fff', weight: 1, fillColor: color, fillOpacity: 1 });
    marker.bindTooltip(who);
  }
  marker.on('click', () => select(who));
  const trail = L.polyline([], {
    color, weight: few ? 3 : 1.5, opacity: 0.8, interactive: false, className: 'trail', renderer: few ? undefined : canvas,
  }).addTo(map);
  r = { marker, trail, color, points: [], history: [], status: null, rank: null, online: online.get(who) ?? true, added: false };
  runners.set(who, r);
  return r;
}

function render() {
  renderQueued = false;
  const now = performance.now();
  const slow = runners.size > MANY;
  const redrawSlow = !slow || now - lastSlowRedraw >= SLOW_REDRAW_MS;
  for (const [who, s] of pending) {
    const r = runner(who);
    r.status = s;
    if (replay.active) continue; // the replay decides what the map shows
    place(who, r, s);
    if (redrawSlow) r.trail.setLatLngs(r.points);
    else r.trailStale = true;
  }
  if (redrawSlow) {
    for (const r of runners.values()) {
      if (r.trailStale) r.trail.setLatLngs(r.points);
      r.trailStale = false;
      r.marker.getElement?.()?.classList.toggle('offline', !r.online);
    }
  }
  if (replay.active) $('replay-slider').max = String(latestTs());
  if (selected && pending.has(selected) && !replay.active) {
    if ($('follow').checked) map.panTo(runners.get(selected).marker.getLatLng(), { animate: false });
    renderDevice();
  }
  pending = new Map();
  if (redrawSlow) {
    lastSlowRedraw = now;
    if (!$('panel-league').hidden) renderTable();
  } else if (!slowRedrawQueued) {
    // Whatever arrives last is drawn, even if nothing follows it.
    slowRedrawQueued = true;
    setTimeout(() => {
      slowRedrawQueued = false;
      queueRender();
    }, SLOW_REDRAW_MS);
  }
}

/** Puts a runner's marker where `s` says, adding it to the map the first time. */
function place(who, r, s) {
  r.marker.setLatLng([s.lat, s.lon]);
  if (!r.added) {
    r.marker.addTo(map);
    const element = r.marker.getElement?.();
    if (element) element.dataset.who = who;
    r.added = true;
  }
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

function renderTable() {
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
  const hidden = rows.length > MANY ? rows.length - TABLE_ROWS_MANY : 0;
  if (hidden > 0) rows.length = TABLE_ROWS_MANY;
  const html = rows.map(([who, r]) => {
    const s = shown(r);
    // Highlight a change of rank as the query computed it.
    const moved = r.rank && s.rank !== r.rank ? (s.rank < r.rank ? 'moved-up' : 'moved-down') : '';
    r.rank = s.rank;
    const toFinish = s.finished_at ? `finished ${duration(s.finished_at - firstTs)}` : km(s.to_finish_m);
    const gap = s.gap_m ? `+${km(s.gap_m)}` : '—';
    const state = r.online ? 'online' : 'offline';
    return `<tr data-who="${escapeHtml(who)}" data-to-finish="${s.to_finish_m}" data-rank="${s.rank}" tabindex="0"
        class="${moved}${who === selected ? ' selected' : ''}">
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
  if (hidden > 0) html.push(`<tr class="more"><td colspan="9">and ${hidden} more (sort to see others)</td></tr>`);
  $('league-rows').innerHTML = html.join('');
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
  const until = replay.active ? replay.time : Infinity;
  const points = r.history.filter((h) => h.ts <= until && typeof h[field] === 'number').map((h) => [h.ts, h[field]]);
  chart.show(field, points);
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
$('league-rows').addEventListener('keydown', choose);
$('chart-field').addEventListener('change', renderDevice);

start().catch((e) => {
  $('connection').textContent = `error: ${e.message}`;
});
