// Test helpers: start a real pacer process and wait for its ready line, publish with
// mosquitto_pub, launch Debian's Chromium.
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../..');
export const pacerBin = process.env.PACER_BIN || path.join(repoRoot, 'target/debug/pacer');
export const outputDir = process.env.PACER_CI_OUTPUT || path.join(repoRoot, 'ci-output');

/** Starts `pacer ARGS…` and resolves once it printed its ready line. */
export function startPacer(args, { readyTimeoutMs = 60_000 } = {}) {
  const child = spawn(pacerBin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr = [];
  child.stderr.on('data', (d) => stderr.push(d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`pacer did not get ready in ${readyTimeoutMs} ms:\n${Buffer.concat(stderr)}`));
    }, readyTimeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`pacer exited with ${code} before it was ready:\n${Buffer.concat(stderr)}`));
    });
    const lines = readline.createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      const m = line.match(/^pacer ready: mqtt=(\S+) http=(\S+)/);
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve({ child, mqtt: m[1], http: m[2], stop: () => child.kill('SIGTERM') });
      }
    });
  });
}

/** Adds a user to a mosquitto password file with `pacer passwd`. */
export function addUser(file, user, password) {
  const out = spawnSync(pacerBin, ['passwd', file, user, '--password', password]);
  if (out.status !== 0) throw new Error(`pacer passwd failed: ${out.stderr}`);
}

/** Debian's Chromium, headless, with nothing reaching out to the network. */
export const CHROMIUM = {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
};

/** A TCP port free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Publishes one message per line at QoS 1 with mosquitto_pub, and waits for it to finish. */
export function publish(mqttPort, topic, lines, { user, password } = {}) {
  const credentials = user ? ['-u', user, '-P', password] : [];
  return new Promise((resolve, reject) => {
    const child = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(mqttPort), '-q', '1', '-t', topic, '-l', ...credentials],
      { stdio: ['pipe', 'ignore', 'inherit'] });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`mosquitto_pub exited with ${code}`))));
    child.stdin.end(`${lines.join('\n')}\n`);
  });
}
