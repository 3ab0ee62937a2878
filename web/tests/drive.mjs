// Drives the shardload page in headless Chromium (Debian's, through
// playwright-core) and prints the page's JSON report, plus the tab's memory,
// on stdout. The Rust tests (crates/cli/tests/web_command.rs) and the
// on-demand runs use it; it asserts nothing itself.
//
//   node web/tests/drive.mjs URL [--pick FILE]... [--js-flags FLAGS] [--timeout SECONDS]
//        [--profile DIR] [--quota BYTES] [--static ROUTE=DIR]... [--no-isolation]
//
// URL is the page with its parameters (e.g. http://127.0.0.1:8080/?run=1).
// --pick gives the page's file input these files instead of loading the served model.
// --profile keeps the browser's profile (and so its storage) in DIR across runs.
// --quota makes the page's origin's storage quota BYTES (DevTools' override).
// --static serves DIR at ROUTE (e.g. /=export-dir) from a static server of
// web/tests/static-server.mjs; URL is then a path on it (e.g. /?run=1), and
// the report gets `static_bytes` (bytes served per route). --no-isolation
// makes that server leave out the COOP and COEP headers.

import { chromium } from 'playwright-core';
import { launchOptions, procStatus, processMemory } from './chromium.mjs';

const args = process.argv.slice(2);
const url = args.shift();
const picks = [];
const statics = {};
let jsFlags = null;
let timeout = 600;
let profile = null;
let quota = null;
let isolate = true;
while (args.length) {
  const flag = args.shift();
  if (flag === '--pick') picks.push(args.shift());
  else if (flag === '--js-flags') jsFlags = args.shift();
  else if (flag === '--timeout') timeout = Number(args.shift());
  else if (flag === '--profile') profile = args.shift();
  else if (flag === '--quota') quota = Number(args.shift());
  else if (flag === '--static') {
    const [route, dir] = args.shift().split('=');
    statics[route] = dir;
  } else if (flag === '--no-isolation') isolate = false;
  else throw new Error(`unknown argument ${flag}`);
}
if (!url) throw new Error('usage: drive.mjs URL [--pick FILE]... [--js-flags FLAGS] [--timeout SECONDS] [--profile DIR] [--quota BYTES] [--static ROUTE=DIR]... [--no-isolation]');

// Chromium's processes, from Chromium itself (CDP SystemInfo), with their
// resident memory now and at its peak (VmRSS, VmHWM) from /proc (Linux).
async function chromiumMemory(browser) {
  const cdp = await browser.newBrowserCDPSession();
  const { processInfo } = await cdp.send('SystemInfo.getProcessInfo');
  const processes = processInfo.map((p) => ({ type: p.type, pid: p.id, rss: procStatus(p.id, 'VmRSS'), peak_rss: procStatus(p.id, 'VmHWM') }));
  return { ...processMemory(processInfo), processes };
}

let server = null;
let address = url;
if (Object.keys(statics).length) {
  const { serveStatic } = await import('./static-server.mjs');
  server = await serveStatic(statics, { isolate });
  address = new URL(url, server.url).href;
}

// Playwright gives Chromium a new, empty profile of its own, or keeps --profile's.
const options = launchOptions(jsFlags);
const context = profile ? await chromium.launchPersistentContext(profile, options) : null;
const browser = context ? context.browser() : await chromium.launch(options);
let exitCode = 0;
try {
  const page = context ? (context.pages()[0] ?? await context.newPage()) : await browser.newPage();
  const messages = [];
  page.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`));
  if (quota !== null) {
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(address).origin, quotaSize: quota });
  }
  await page.goto(address);
  if (picks.length) {
    await page.waitForSelector('#pick:not([disabled])', { timeout: timeout * 1e3 });
    await page.setInputFiles('#pick', picks);
  }
  await page.waitForSelector('#report[data-done="true"]', { state: 'attached', timeout: timeout * 1e3 });
  const report = JSON.parse(await page.textContent('#report'));
  const shown = await page.textContent('#error');
  Object.assign(report, { shown_error: shown || null, console: messages, chromium: browser?.version() ?? null });
  if (server) report.static_bytes = Object.fromEntries(Object.keys(statics).map((r) => [r, server.bytesServed(r)]));
  report.memory = browser ? await chromiumMemory(browser) : null;
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (error) {
  process.stderr.write(`drive.mjs: ${error.message}\n`);
  exitCode = 1;
} finally {
  await (context ?? browser).close();
  await server?.close();
}
process.exit(exitCode);
