// Frame times of the dashboard in headless Chromium while devices report: opens the page,
// waits until the league table shows every device, then records the interval between
// animation frames for a while. Usage: node bench/frametime.mjs URL DEVICES SECONDS
import { chromium } from 'playwright-core';

const [url, devices = '1000', seconds = '30'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(url);
  await page.waitForFunction((n) => document.querySelectorAll('.leaflet-overlay-pane canvas').length > 0 && document.querySelectorAll('#league-rows tr[data-who]').length >= Math.min(n, 20), Number(devices), { timeout: 120_000 });
  // Long tasks (main-thread work over 50 ms) tell the page's own cost apart from a machine
  // whose cores Pacer and the simulator also want.
  const { frames, longTasks, longTaskMs } = await page.evaluate((ms) => new Promise((resolve) => {
    const intervals = [];
    let longTasks = 0;
    let longTaskMs = 0;
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        longTasks += 1;
        longTaskMs += e.duration;
      }
    }).observe({ type: 'longtask' });
    let last = null;
    const end = performance.now() + ms;
    const frame = (now) => {
      if (last !== null) intervals.push(now - last);
      last = now;
      if (now < end) requestAnimationFrame(frame);
      else resolve({ frames: intervals, longTasks, longTaskMs });
    };
    requestAnimationFrame(frame);
  }), Number(seconds) * 1000);
  frames.sort((a, b) => a - b);
  const q = (p) => frames[Math.min(frames.length - 1, Math.floor(p * frames.length))].toFixed(1);
  const slow = frames.filter((f) => f > 50).length;
  const rows = await page.evaluate(() => document.querySelectorAll('#league-rows tr[data-who]').length);
  console.log(`${devices} devices reporting (${rows} table rows drawn), ${frames.length} frames in ${seconds} s: frame interval median ${q(0.5)} ms, p95 ${q(0.95)} ms, p99 ${q(0.99)} ms, max ${frames[frames.length - 1].toFixed(1)} ms; ${slow} frames over 50 ms; ${longTasks} long tasks, ${(longTaskMs / Number(seconds) / 10).toFixed(1)}% of the time`);
} finally {
  await browser.close();
}
