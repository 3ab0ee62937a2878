// Drives the shardload page in headless Chromium (Debian's, through
// playwright-core) and prints the page's JSON report, plus the tab's memory,
// on stdout. The Rust tests (crates/cli/tests/web_command.rs) and the
// on-demand 17 GiB run use it; it asserts nothing itself.
//
//   node web/tests/drive.mjs URL [--pick FILE]... [--js-flags FLAGS] [--timeout SECONDS]
//
// URL is the page with its parameters (e.g. http://127.0.0.1:8080/?run=1).
// --pick gives the page's file input these files instead of loading the served model.

import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const url = args.shift();
const picks = [];
let jsFlags = null;
let timeout = 600;
while (args.length) {
  const flag = args.shift();
  if (flag === '--pick') picks.push(args.shift());
  else if (flag === '--js-flags') jsFlags = args.shift();
  else if (flag === '--timeout') timeout = Number(args.shift());
  else throw new Error(`unknown argument ${flag}`);
}
if (!url) throw new Error('usage: drive.mjs URL [--pick FILE]... [--js-flags FLAGS] [--timeout SECONDS]');

// Chromium's processes, from Chromium itself (CDP SystemInfo), with their
// resident memory now and at its peak (VmRSS, VmHWM) from /proc (Linux).
async function chromiumMemory(browser) {
  const cdp = await browser.newBrowserCDPSession();
  const { processInfo } = await cdp.send('SystemInfo.getProcessInfo');
  const status = (pid, key) => {
    try {
      const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${key}:`));
      return line ? Number(line.split(/\s+/)[1]) * 1024 : 0;
    } catch { return 0; }
  };
  const processes = processInfo.map((p) => ({ type: p.type, pid: p.id, rss: status(p.id, 'VmRSS'), peak_rss: status(p.id, 'VmHWM') }));
  const renderers = processes.filter((p) => p.type === 'renderer');
  return {
    browser_rss: processes.reduce((sum, p) => sum + p.rss, 0),
    renderer_rss: Math.max(0, ...renderers.map((p) => p.rss)),
    renderer_peak_rss: Math.max(0, ...renderers.map((p) => p.peak_rss)),
    processes,
  };
}

// Playwright gives Chromium a new, empty profile of its own.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ...(jsFlags ? [`--js-flags=${jsFlags}`] : []),
  ],
});
let exitCode = 0;
try {
  const page = await browser.newPage();
  const messages = [];
  page.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`));
  await page.goto(url);
  if (picks.length) {
    await page.waitForSelector('#pick:not([disabled])', { timeout: timeout * 1e3 });
    await page.setInputFiles('#pick', picks);
  }
  await page.waitForSelector('#report[data-done="true"]', { state: 'attached', timeout: timeout * 1e3 });
  const report = JSON.parse(await page.textContent('#report'));
  const shown = await page.textContent('#error');
  Object.assign(report, { shown_error: shown || null, console: messages, chromium: browser.version() });
  report.memory = await chromiumMemory(browser);
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (error) {
  process.stderr.write(`drive.mjs: ${error.message}\n`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
