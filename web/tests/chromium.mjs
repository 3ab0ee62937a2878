// What every script that drives Debian's headless Chromium shares: how it is
// launched on this kind of machine (as root in a sandbox, with no network
// beyond localhost: without the background-networking flags it keeps trying
// hosts it cannot reach), and how its processes' memory is read.

import { readFileSync } from 'node:fs';

/** playwright-core launch options: Debian's Chromium (or $CHROMIUM), headless, extra V8 flags if given. */
export function launchOptions(jsFlags = null) {
  return {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(jsFlags ? [`--js-flags=${jsFlags}`] : []),
    ],
  };
}

/** A process's /proc/PID/status value in bytes (VmRSS, VmHWM), 0 if it is gone. */
export function procStatus(pid, key) {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${key}:`));
    return line ? Number(line.split(/\s+/)[1]) * 1024 : 0;
  } catch { return 0; }
}

/**
 * Chromium's processes (CDP SystemInfo.getProcessInfo's `processInfo`) as
 * memory: all of them resident now, the largest renderer now and at its peak.
 */
export function processMemory(processInfo) {
  const renderers = processInfo.filter((p) => p.type === 'renderer');
  return {
    browser_rss: processInfo.reduce((sum, p) => sum + procStatus(p.id, 'VmRSS'), 0),
    renderer_rss: Math.max(0, ...renderers.map((p) => procStatus(p.id, 'VmRSS'))),
    renderer_peak_rss: Math.max(0, ...renderers.map((p) => procStatus(p.id, 'VmHWM'))),
  };
}
