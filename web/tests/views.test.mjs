// The device chart over a chosen range (read from the server, beyond what the page keeps),
// and the dashboard on a phone-sized screen with keyboard and screen-reader basics.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startPacer, outputDir, CHROMIUM, freePort, publish } from './pacer.mjs';

/** More fixes than the page keeps per runner (5000), a second apart. */
const FIXES = 6000;
const T0 = 1558212482;

let pacer;
let browser;
let dir;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'pacer-views-'));
  const mqttPort = await freePort();
  // The alerts feed also shows a query's alerts: the streams the config names.
  const config = path.join(dir, 'pacer.toml');
  await writeFile(config, '[http]\nalert_streams = ["race_zone_events", "generator_alarms"]\n');
  pacer = await startPacer(['up', '--config', config, '--data-dir', path.join(dir, 'data'),
    '--mqtt-listen', `127.0.0.1:${mqttPort}`, '--http-listen', '127.0.0.1:0', '--osmand-listen', '']);
  const walk = (who, count, lon) => Array.from({ length: count }, (_, i) => JSON.stringify({
    who, timeepoc: T0 + i, lat: -33.8705 + i * 0.00002, lon, speed: 10 + (i % 7),
  }));
  await publish(mqttPort, 'race/tom', walk('tom', FIXES, 151.2129));
  await publish(mqttPort, 'race/ann', walk('ann', 30, 151.2131));
  browser = await chromium.launch(CHROMIUM);
});

after(async () => {
  await browser?.close();
  pacer?.child.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

const points = (page) => page.getAttribute('#chart', 'data-points');

test('the device chart shows a chosen range read from the server', { timeout: 120_000 }, async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(pacer.http);
  await page.waitForSelector('#league-rows tr[data-who="tom"]', { timeout: 30_000 });
  // mosquitto_pub has disconnected: tom is offline, in the table and on the map.
  await page.waitForSelector('#league-rows tr[data-who="tom"] td.offline', { timeout: 30_000 });
  await page.waitForSelector('.leaflet-marker-icon.runner.offline[data-who="tom"]', { timeout: 30_000 });
  await page.click('#league-rows tr[data-who="tom"]');
  await page.selectOption('#chart-field', 'speed');
  // Live: what the page received, of which it keeps the last 5000 fixes.
  await page.waitForFunction(() => document.getElementById('chart').dataset.points === '5000', null, { timeout: 60_000 });

  const whole = page.waitForResponse((r) => r.url().includes('/api/v1/streams/race_status/records?key=tom&limit='));
  await page.selectOption('#chart-range', 'all');
  assert.ok((await whole).ok());
  await page.waitForFunction((n) => document.getElementById('chart').dataset.points === String(n), FIXES, { timeout: 30_000 });
  assert.equal(await page.textContent('#chart-status'), `${FIXES} fixes from the server`);

  // The last hour before tom's last fix, both ends included.
  const hour = page.waitForResponse((r) => r.url().includes(`key=tom&from=${(T0 + FIXES - 1 - 3600) * 1000}&`));
  await page.selectOption('#chart-range', '3600000');
  assert.ok((await hour).ok());
  await page.waitForFunction(() => document.getElementById('chart').dataset.points === '3601', null, { timeout: 30_000 });

  // Another runner reads its own history.
  await page.click('#tab-league');
  await page.click('#league-rows tr[data-who="ann"]');
  await page.waitForFunction(() => document.getElementById('chart-status').textContent === '30 fixes from the server', null, { timeout: 30_000 });
  assert.equal(await points(page), '30');
  assert.equal(await page.textContent('#device-name'), 'ann');

  await page.selectOption('#chart-range', 'live');
  assert.equal(await points(page), '30');
  assert.equal(await page.textContent('#chart-status'), '');
  await page.close();
});

test('the alerts feed shows the rows of a configured alert stream', { timeout: 60_000 }, async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(pacer.http);
  await page.waitForSelector('#league-rows tr[data-who="tom"]', { timeout: 30_000 });
  const alarm = [{ key: 'gen-7', value: { generatorID: 'gen-7', fuel: 420, alarm: 'refuel' } }];
  const response = await page.evaluate(async (body) => (await fetch('/api/v1/streams/generator_alarms/records', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  })).status, alarm);
  assert.equal(response, 200);
  await page.waitForFunction(() => document.getElementById('alert-count').textContent !== '' && !document.getElementById('alert-count').hidden);
  await page.click('#tab-alerts');
  const item = await page.waitForSelector('#alerts li[data-kind=query]', { timeout: 30_000 });
  assert.match(await item.textContent(), /generator_alarms: gen-7 generatorID gen-7, fuel 420, alarm refuel/);
  await page.close();
});

test('the SQL console downloads a history query as GPX', { timeout: 60_000 }, async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(pacer.http);
  await page.click('#tab-sql');
  await page.fill('#sql-text', "SELECT who, ROWTIME AS ts, lat, lon FROM race WHERE who = 'ann'");
  await page.selectOption('#sql-format', 'gpx');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#sql-download')]);
  assert.equal(download.suggestedFilename(), 'pacer-query.gpx');
  const gpx = await readFile(await download.path(), 'utf8');
  assert.match(gpx, /<trk>\s*<name>ann<\/name>/);
  assert.equal(gpx.match(/<trkpt /g).length, 30, 'every fix of ann');
  assert.ok(gpx.includes(`<time>${new Date((T0 + 29) * 1000).toISOString().replace('.000', '')}</time>`), 'the last fix, dated');
  // A query without positions cannot be GPX: the console says why.
  await page.fill('#sql-text', 'SELECT who FROM race');
  await page.click('#sql-download');
  await page.waitForSelector('#sql-result .error');
  assert.match(await page.textContent('#sql-result .error'), /GPX needs a lat and a lon column/);
  await page.close();
});

test('the dashboard works on a phone-sized screen, by touch and by keyboard', { timeout: 120_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const page = await context.newPage();
  await page.goto(pacer.http);
  await page.waitForSelector('#league-rows tr[data-who="ann"]', { timeout: 30_000 });

  const layout = await page.evaluate(() => {
    const box = (id) => document.getElementById(id).getBoundingClientRect();
    return {
      scrollWidth: document.documentElement.scrollWidth,
      map: box('map'),
      side: box('side'),
      tabs: [...document.querySelectorAll('[role=tab]')].map((t) => t.getBoundingClientRect().right),
    };
  });
  assert.ok(layout.scrollWidth <= 390, `nothing wider than the screen (${layout.scrollWidth} px)`);
  assert.ok(layout.map.height >= 0.3 * 844, `the map keeps a third of the screen (${layout.map.height} px)`);
  assert.ok(layout.side.top >= layout.map.bottom - 1, 'the table sits under the map');
  assert.ok(layout.tabs.every((right) => right <= 390), `every tab is on screen: ${layout.tabs}`);

  // Every control has a name a screen reader can say.
  const unnamed = await page.$$eval('button, select, input, textarea, [role=tab]', (els) => els
    .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);

  await page.tap('#league-rows tr[data-who="tom"]');
  await page.waitForFunction(() => document.getElementById('device-name').textContent === 'tom');
  assert.equal(await page.getAttribute('#tab-device', 'aria-selected'), 'true');
  await page.screenshot({ path: path.join(outputDir, 'phone.png') });

  // The tabs follow the arrow keys and take the focus with them.
  await page.focus('#tab-device');
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.getAttribute('#tab-alerts', 'aria-selected'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-alerts');
  assert.equal(await page.isVisible('#panel-alerts'), true);
  assert.equal(await page.isVisible('#panel-device'), false);
  await page.keyboard.press('ArrowLeft');
  assert.equal(await page.getAttribute('#tab-device', 'aria-selected'), 'true');
  await context.close();
});
