// Logging in to a Pacer with users: the dashboard asks first, shows a device user only what
// their ACL lets them read (their own row of the league table), refuses them the catalog,
// and logging out ends the session on the server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startPacer, outputDir, CHROMIUM, freePort, publish, addUser } from './pacer.mjs';

const T0 = 1558212482;
const walk = (who, lon) => Array.from({ length: 10 }, (_, i) => JSON.stringify({
  who, timeepoc: T0 + i * 10, lat: -33.8705 + i * 0.0001, lon, speed: 10 + i,
}));

test('log in, see what the ACL allows, log out', { timeout: 180_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pacer-login-'));
  addUser(path.join(dir, 'passwd'), 'alice', 'runner-pw');
  addUser(path.join(dir, 'passwd'), 'root', 'admin-pw');
  // alice runs: she publishes her own fixes and reads her own row of the league table.
  await writeFile(path.join(dir, 'acl'), 'user alice\ntopic readwrite race/alice\ntopic read $stream/race_status/alice\n');
  await writeFile(path.join(dir, 'pacer.toml'),
    '[auth]\npassword_file = "passwd"\nacl_file = "acl"\nadmins = ["root"]\n');
  const mqttPort = await freePort();
  const pacer = await startPacer(['up', '--config', path.join(dir, 'pacer.toml'), '--data-dir', path.join(dir, 'data'),
    '--mqtt-listen', `127.0.0.1:${mqttPort}`, '--http-listen', '127.0.0.1:0', '--osmand-listen', '']);
  const browser = await chromium.launch(CHROMIUM);
  try {
    await publish(mqttPort, 'race/alice', walk('alice', 151.2129), { user: 'alice', password: 'runner-pw' });
    await publish(mqttPort, 'race/bob', walk('bob', 151.2131), { user: 'root', password: 'admin-pw' });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(pacer.http);
    await page.waitForSelector('#login-screen:not([hidden])');
    await page.screenshot({ path: path.join(outputDir, 'login.png') });

    await page.fill('#login-user', 'alice');
    await page.fill('#login-password', 'not-her-password');
    await page.click('#login-submit');
    await page.waitForFunction(() => document.getElementById('login-error').textContent !== '');
    assert.match(await page.textContent('#login-error'), /bad user name or password/);

    await page.fill('#login-password', 'runner-pw');
    await page.click('#login-submit');
    await page.waitForSelector('#login-screen', { state: 'hidden' });
    await page.waitForSelector('#league-rows tr[data-who="alice"]', { timeout: 30_000 });
    assert.equal(await page.textContent('#who'), 'alice (user)');
    // Whatever arrives, bob's row is not hers to see: the whole table came in one read.
    await page.waitForFunction(() => document.getElementById('connection').textContent === 'live');
    assert.equal(await page.locator('#league-rows tr[data-who="bob"]').count(), 0, 'bob is not in alice\'s table');
    const refused = await page.evaluate(async () => {
      const response = await fetch('/api/v1/sql', { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ sql: 'TERMINATE ALL;' }) });
      return [response.status, (await response.json()).error];
    });
    assert.equal(refused[0], 403);
    assert.match(refused[1], /only admins/);
    await page.screenshot({ path: path.join(outputDir, 'logged-in-alice.png') });

    await page.click('#logout');
    await page.waitForSelector('#login-screen:not([hidden])');
    const after = await page.evaluate(async () => (await fetch('/api/v1/config')).status);
    assert.equal(after, 401, 'the session ended on the server');

    // The admin sees every runner.
    await page.fill('#login-user', 'root');
    await page.fill('#login-password', 'admin-pw');
    await page.click('#login-submit');
    await page.waitForSelector('#league-rows tr[data-who="bob"]', { timeout: 30_000 });
    await page.waitForSelector('#league-rows tr[data-who="alice"]');
    assert.equal(await page.textContent('#who'), 'root (admin)');
  } finally {
    await browser.close();
    pacer.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});

test('where anonymous visitors may look, the page shows what they may and offers a login', { timeout: 180_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pacer-login-'));
  addUser(path.join(dir, 'passwd'), 'root', 'admin-pw');
  // Anonymous visitors read the league table (the ACL's lines before any user).
  await writeFile(path.join(dir, 'acl'), 'topic read $stream/race_status/#\n');
  await writeFile(path.join(dir, 'pacer.toml'),
    '[auth]\npassword_file = "passwd"\nacl_file = "acl"\nadmins = ["root"]\nallow_anonymous = true\n');
  const mqttPort = await freePort();
  const pacer = await startPacer(['up', '--config', path.join(dir, 'pacer.toml'), '--data-dir', path.join(dir, 'data'),
    '--mqtt-listen', `127.0.0.1:${mqttPort}`, '--http-listen', '127.0.0.1:0', '--osmand-listen', '']);
  const browser = await chromium.launch(CHROMIUM);
  try {
    await publish(mqttPort, 'race/bob', walk('bob', 151.2131), { user: 'root', password: 'admin-pw' });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(pacer.http);
    await page.waitForSelector('#league-rows tr[data-who="bob"]', { timeout: 30_000 });
    assert.equal(await page.isHidden('#login-screen'), true, 'no login asked for');
    const refused = await page.evaluate(async () => (await fetch('/api/v1/streams/race/records')).json());
    assert.deepEqual(refused.records, [], 'the raw fixes are not for anonymous visitors');
    await page.click('#login');
    await page.fill('#login-user', 'root');
    await page.fill('#login-password', 'admin-pw');
    await Promise.all([page.waitForNavigation(), page.click('#login-submit')]);
    await page.waitForFunction(() => document.getElementById('who').textContent === 'root (admin)');
    assert.equal(await page.isHidden('#login'), true);
  } finally {
    await browser.close();
    pacer.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
