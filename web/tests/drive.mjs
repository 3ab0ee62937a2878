// Drives the shardload page in headless Chromium (Debian's, through
// playwright-core) and prints the page's JSON report, plus the tab's memory,
// on stdout. The Rust tests (crates/cli/tests/web_command.rs) and the
// on-demand 17 GiB run use it; it asserts nothing itself.
//
//   node web/tests/drive.mjs URL [--pick FILE]... [--js-flags FLAGS] [--timeout SECONDS]
//
// URL is the page with its parameters (e.g. http://127.0.0.1:8080/?run=1).
// --pick gives the page's file input these files instead of loading the served model.

import { readFileSync, readdirSync } from 'node:fs';
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

// Resident memory of a process and its descendants, from /proc (Linux).
function treeRss(pid) {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch { /* gone */ }
  }
  const rss = (p) => {
    try {
      const line = readFileSync(`/proc/${p}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
      return line ? Number(line.split(/\s+/)[1]) * 1024 : 0;
    } catch { return 0; }
  };
  let total = 0;
  let largest = 0;
  const stack = [pid];
  while (stack.length) {
    const p = stack.pop();
    const r = rss(p);
    total += r;
    largest = Math.max(largest, r);
    stack.push(...(children.get(p) ?? []));
  }
  return { browser_rss: total, largest_process_rss: largest };
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
  const console = [];
  page.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`));
  await page.goto(url);
  if (picks.length) {
    await page.waitForSelector('#pick:not([disabled])', { timeout: timeout * 1e3 });
    await page.setInputFiles('#pick', picks);
  }
  await page.waitForSelector('#report[data-done="true"]', { state: 'attached', timeout: timeout * 1e3 });
  const report = JSON.parse(await page.textContent('#report'));
  const shown = await page.textContent('#error');
  Object.assign(report, { shown_error: shown || null, console, chromium: browser.version() });
  // Chromium runs as this process's child: count the tree, less this process.
  const all = treeRss(process.pid);
  report.memory = { browser_rss: all.browser_rss - process.memoryUsage().rss, largest_process_rss: all.largest_process_rss };
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (error) {
  process.stderr.write(`drive.mjs: ${error.message}\n`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
