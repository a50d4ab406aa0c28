// The demo as a user sees it: `pacer demo` in real headless Chromium. Four runners appear
// on the map and move, the league table ranks them by remaining distance and reorders on an
// overtake, a runner's panel charts its fixes, the alerts, streams and SQL console work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startPacer, outputDir, CHROMIUM } from './pacer.mjs';

test('the demo shows four moving runners and a league table led by the least remaining distance', { timeout: 300_000 }, async () => {
  const pacer = await startPacer(['demo', '--speed', '20', '--mqtt-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--osmand-listen', '127.0.0.1:0']);
  const browser = await chromium.launch(CHROMIUM);
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(pacer.http);

    await page.waitForFunction(() => document.querySelectorAll('.leaflet-marker-icon.runner').length === 4, null, { timeout: 60_000 });
    await page.waitForFunction(() => document.querySelectorAll('#league-rows tr').length === 4, null, { timeout: 60_000 });
    const names = await page.$$eval('.leaflet-marker-icon.runner', (els) => els.map((e) => e.dataset.who).sort());
    assert.deepEqual(names, ['alice', 'ben', 'derek', 'simon']);

    // Markers move: a runner's position on screen changes as fixes arrive.
    const where = () => page.$$eval('.leaflet-marker-icon.runner', (els) => els.map((e) => e.style.transform).join('|'));
    const before = await where();
    await page.waitForFunction((b) => [...document.querySelectorAll('.leaflet-marker-icon.runner')]
      .map((e) => e.style.transform).join('|') !== b, before, { timeout: 60_000 });

    // Once the field has spread out, the leader is the runner with the least remaining distance.
    await page.waitForFunction(() => {
      const d = [...document.querySelectorAll('#league-rows tr')].map((r) => Number(r.dataset.toFinish));
      return Math.max(...d) - Math.min(...d) > 200;
    }, null, { timeout: 90_000 });
    const rows = await page.$$eval('#league-rows tr', (trs) => trs.map((r) => ({
      who: r.dataset.who, rank: Number(r.dataset.rank), toFinish: Number(r.dataset.toFinish),
    })));
    assert.equal(rows.length, 4);
    const least = rows.reduce((a, b) => (b.toFinish < a.toFinish ? b : a));
    assert.equal(rows[0].who, least.who, `leader ${rows[0].who} but ${least.who} has the least to go: ${JSON.stringify(rows)}`);
    // RANK as SQL computes it: equal distances share a rank (alice, ben and derek ran the
    // same track, so they can be level).
    const ranks = rows.map((r) => r.rank);
    assert.equal(ranks[0], 1);
    assert.deepEqual(ranks, [...ranks].sort((a, b) => a - b), `rows in rank order: ${ranks}`);
    for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].toFinish <= rows[i].toFinish, JSON.stringify(rows));

    // Each runner leaves a trail; the course and the offline basemap are drawn (no tiles here).
    const trails = await page.$$eval('path.trail', (ps) => ps.map((p) => (p.getAttribute('d') || '').split('L').length));
    assert.equal(trails.length, 4);
    assert.ok(trails.every((points) => points >= 2), `trail points: ${trails}`);
    assert.ok(await page.$$eval('.leaflet-overlay-pane path', (p) => p.length) >= 6, 'basemap, course and trails');
    assert.ok(await page.$('.leaflet-control-scale'), 'scale bar');
    assert.ok(await page.$('path.grid'), 'metric grid');
    assert.match(await page.textContent('.grid-label'), /^grid \d+(\.\d+)? k?m$/);
    assert.equal(await page.$$eval('path.zone', (p) => p.length), 1, 'the finish area is drawn');

    await mkdir(outputDir, { recursive: true });
    await page.screenshot({ path: path.join(outputDir, 'dashboard.png') });

    // The league table reorders when a runner overtakes: the order changes while running
    // (at 20× ben passes simon, who started 330 m up the course, about 70 s in).
    const order = () => page.$$eval('#league-rows tr', (trs) => trs.map((r) => r.dataset.who).join(','));
    const firstOrder = await order();
    await page.waitForFunction((o) => [...document.querySelectorAll('#league-rows tr')].map((r) => r.dataset.who).join(',') !== o,
      firstOrder, { timeout: 90_000 });
    const ranksNow = await page.$$eval('#league-rows tr', (trs) => trs.map((r) => Number(r.dataset.rank)));
    assert.deepEqual(ranksNow, [...ranksNow].sort((a, b) => a - b), `still in rank order after the overtake: ${ranksNow}`);

    // A runner's panel: its chart has the points of its fixes so far, and grows.
    await page.click('#league-rows tr[data-who="ben"]');
    await page.waitForSelector('#panel-device:not([hidden])');
    assert.equal(await page.textContent('#device-name'), 'ben');
    await page.waitForFunction(() => Number(document.getElementById('chart').dataset.points) > 5, null, { timeout: 30_000 });
    const points = Number(await page.getAttribute('#chart', 'data-points'));
    await page.waitForFunction((n) => Number(document.getElementById('chart').dataset.points) > n, points, { timeout: 30_000 });
    assert.ok(await page.$('#chart canvas'), 'uPlot drew a canvas');
    await page.screenshot({ path: path.join(outputDir, 'device.png') });

    // Alerts: the replay's runners came online (device_status).
    await page.click('#tab-alerts');
    await page.waitForFunction(() => document.querySelectorAll('#alerts li[data-kind=online]').length >= 4, null, { timeout: 30_000 });

    // Streams: the race stream is listed, and its live tail shows new fixes.
    await page.click('#tab-streams');
    await page.waitForSelector('#stream-rows button[data-stream="race"]');
    await page.click('#stream-rows button[data-stream="race"]');
    await page.waitForFunction(() => document.getElementById('tail').textContent.includes('"who"'), null, { timeout: 30_000 });

    // The SQL console answers a pull query on the league table with its rows.
    await page.click('#tab-sql');
    await page.fill('#sql-text', 'SELECT who, rank, to_finish_m FROM race_status');
    await page.click('#sql-run');
    await page.waitForFunction(() => document.querySelectorAll('#sql-result tbody tr').length === 4, null, { timeout: 30_000 });
    const who = await page.$$eval('#sql-result tbody tr td:first-child', (tds) => tds.map((t) => t.textContent).sort());
    assert.deepEqual(who, ['alice', 'ben', 'derek', 'simon']);
    // The seed's ksqlDB table, verbatim in the built-in SQL: rows per runner and window.
    await page.fill('#sql-text', 'SELECT * FROM runner_status');
    await page.click('#sql-run');
    await page.waitForFunction(() => document.querySelectorAll('#sql-result tbody tr').length >= 4
      && [...document.querySelectorAll('#sql-result thead th')].some((th) => th.textContent === 'dist_to_finish'), null, { timeout: 30_000 });
    // A history query over the race's first minute: what the stream holds for ben then.
    const from = await page.evaluate(async () => (await (await fetch('/api/v1/streams/race/records?limit=1')).json()).records[0].timestamp);
    const to = from + 60_000;
    const stored = await page.evaluate(async ([f, t]) => (await (await fetch(`/api/v1/streams/race/records?key=ben&from=${f}&to=${t}&limit=100000`)).json()).records.length, [from, to]);
    assert.ok(stored > 5, `ben has fixes in the first minute: ${stored}`);
    await page.fill('#sql-text', `SELECT who, COUNT(*) AS fixes FROM race WHERE who = 'ben' AND ROWTIME BETWEEN ${from} AND ${to} GROUP BY who`);
    await page.click('#sql-run');
    await page.waitForFunction(() => [...document.querySelectorAll('#sql-result thead th')].some((th) => th.textContent === 'fixes'), null, { timeout: 30_000 });
    assert.deepEqual(await page.$$eval('#sql-result tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent))), [['ben', String(stored)]]);
    await page.fill('#sql-text', 'SELECT who FROM race_status WHERE rank = = 1');
    await page.click('#sql-run');
    await page.waitForSelector('#sql-result .error');
    assert.match(await page.textContent('#sql-result .error'), /Line: 1, Column/);
    await page.screenshot({ path: path.join(outputDir, 'sql.png') });

    // Replay: back to the start, the markers stand where the runners were then; playing
    // moves them; leaving it returns to live.
    const liveWhere = await where();
    await page.click('#replay-toggle');
    await page.waitForSelector('#replay-bar:not([hidden])');
    const startWhere = await where();
    assert.notEqual(startWhere, liveWhere, 'at the start of the replay the markers are elsewhere');
    await page.selectOption('#replay-speed', '300');
    await page.click('#replay-play');
    await page.waitForFunction((b) => [...document.querySelectorAll('.leaflet-marker-icon.runner')]
      .map((e) => e.style.transform).join('|') !== b, startWhere, { timeout: 30_000 });
    // simon's first fix came 11 s after the others': the table fills as the replay runs.
    await page.waitForFunction(() => document.querySelectorAll('#league-rows tr').length === 4, null, { timeout: 30_000 });
    await page.screenshot({ path: path.join(outputDir, 'replay.png') });
    await page.click('#replay-toggle');
    await page.waitForSelector('#replay-bar', { state: 'hidden' });
  } finally {
    await browser.close();
    pacer.stop();
  }
});
