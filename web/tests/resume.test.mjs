// A dropped connection resumes without gaps: the page follows a runner, Pacer is killed
// (kill -9) under it and started again on the same ports and data, more fixes arrive, and
// the runner's chart holds every fix exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startPacer, outputDir, CHROMIUM, freePort, publish } from './pacer.mjs';

/** Fixes of one runner walking north, a second apart, from second `from`. */
function fixes(from, count) {
  return Array.from({ length: count }, (_, i) => {
    const t = 1558212482 + from + i;
    return JSON.stringify({ who: 'tom', timeepoc: t, lat: -33.8705 + (from + i) * 0.00005, lon: 151.2129, speed: 10 + (i % 5) });
  });
}

test('after a dropped connection the page resumes without a gap or a duplicate', { timeout: 180_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pacer-resume-'));
  const [httpPort, mqttPort] = [await freePort(), await freePort()];
  const args = ['up', '--data-dir', dir, '--mqtt-listen', `127.0.0.1:${mqttPort}`,
    '--http-listen', `127.0.0.1:${httpPort}`, '--osmand-listen', ''];
  let pacer = await startPacer(args);
  const browser = await chromium.launch(CHROMIUM);
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(pacer.http);
    await publish(mqttPort, 'race/tom', fixes(0, 20));
    await page.waitForSelector('#league-rows tr[data-who="tom"]', { timeout: 30_000 });
    await page.click('#league-rows tr[data-who="tom"]');
    await page.selectOption('#chart-field', 'speed');
    await page.waitForFunction(() => document.getElementById('chart').dataset.points === '20', null, { timeout: 30_000 });

    pacer.child.kill('SIGKILL');
    await page.waitForFunction(() => document.getElementById('connection').textContent.startsWith('reconnecting'), null, { timeout: 30_000 });
    pacer = await startPacer(args);
    await publish(mqttPort, 'race/tom', fixes(20, 20));
    await page.waitForFunction(() => document.getElementById('connection').textContent === 'live', null, { timeout: 60_000 });
    await page.waitForFunction(() => Number(document.getElementById('chart').dataset.points) >= 40, null, { timeout: 60_000 });
    // Settled: nothing more is coming, and what came is every fix once.
    const rows = await page.evaluate(async () => {
      const response = await fetch('/api/v1/sql', { method: 'POST', body: JSON.stringify({ sql: "SELECT fixes FROM race_status WHERE who = 'tom'" }), headers: { 'content-type': 'application/json' } });
      return (await response.json()).rows;
    });
    assert.deepEqual(rows, [[40]], 'the league table counted every fix once');
    assert.equal(await page.getAttribute('#chart', 'data-points'), '40', 'the chart has each fix exactly once');
    await page.screenshot({ path: path.join(outputDir, 'resumed.png') });
  } finally {
    await browser.close();
    pacer.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
