// Test helpers: start a real pacer process on free ports and wait for its ready line.
import { spawn } from 'node:child_process';
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
