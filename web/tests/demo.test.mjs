// The walking skeleton as a user sees it: `pacer demo` in real headless Chromium. Four
// runners appear on the map, the league table has four rows ranked by remaining distance,
// and the markers move.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startPacer, outputDir } from './pacer.mjs';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

test('the demo shows four moving runners and a league table led by the least remaining distance', { timeout: 180_000 }, async () => {
  const pacer = await startPacer(['demo', '--speed', '60', '--mqtt-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--osmand-listen', '127.0.0.1:0']);
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
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
    assert.deepEqual(rows.map((r) => r.rank), [1, 2, 3, 4]);
    for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].toFinish <= rows[i].toFinish, JSON.stringify(rows));

    // Each runner leaves a trail; the course and the offline basemap are drawn (no tiles here).
    const trails = await page.$$eval('path.trail', (ps) => ps.map((p) => (p.getAttribute('d') || '').split('L').length));
    assert.equal(trails.length, 4);
    assert.ok(trails.every((points) => points >= 2), `trail points: ${trails}`);
    assert.ok(await page.$$eval('.leaflet-overlay-pane path', (p) => p.length) >= 6, 'basemap, course and trails');
    assert.ok(await page.$('.leaflet-control-scale'), 'scale bar');

    await mkdir(outputDir, { recursive: true });
    await page.screenshot({ path: path.join(outputDir, 'dashboard.png') });
  } finally {
    await browser.close();
    pacer.stop();
  }
});
