// Runs web/bench/wllama.html (wllama, llama.cpp in wasm) in Debian's headless
// Chromium through playwright-core, on the pattern of web/tests/drive.mjs,
// and prints the page's JSON report on one stdout line, plus what only the
// browser's side can see: the Chromium version, the web workers the tab
// made (DevTools targets: wllama's pthreads are workers nested in its own
// worker, which the page cannot count), the renderer's threads that burned
// CPU (from /proc: were n_threads really busy?), what the wasm binary's
// code holds (SIMD128 and relaxed-SIMD instructions counted by decoding it,
// memory64 or not: Chromium has no flag left to turn relaxed SIMD off), and
// the tab's memory.
// scripts/bench-web uses it for its wllama row; it asserts nothing.
//
//   node web/bench/drive-wllama.mjs MODEL.gguf --prompt TEXT [--tokens ID,ID,...] [--n N] [--threads T]
//        [--ctx N] [--warm N] [--timeout SECONDS] [--js-flags FLAGS]
//
// It serves web/bench at /, web/node_modules/@wllama/wllama at /wllama/ and
// the model's directory at /models/ from web/tests/static-server.mjs (cross-origin
// isolated, so wllama can use its multithreaded path).

import { readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { launchOptions, processMemory } from '../tests/chromium.mjs';
import { serveStatic } from '../tests/static-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const usage = 'usage: drive-wllama.mjs MODEL.gguf --prompt TEXT [--tokens ID,ID,...] [--n N] [--threads T] [--ctx N] [--warm N] [--timeout SECONDS] [--js-flags FLAGS]';
const args = process.argv.slice(2);
const model = args.shift();
const page = { n: '128', threads: '2', ctx: '4096', prompt: null };
let timeout = 600;
let jsFlags = null;
while (args.length) {
  const flag = args.shift();
  const value = args.shift();
  if (value === undefined) throw new Error(`${flag} needs a value\n${usage}`);
  if (flag === '--prompt') page.prompt = value;
  else if (flag === '--tokens') page.tokens = value;
  else if (flag === '--n') page.n = value;
  else if (flag === '--threads') page.threads = value;
  else if (flag === '--ctx') page.ctx = value;
  else if (flag === '--warm') page.warm = value;
  else if (flag === '--timeout') timeout = Number(value);
  else if (flag === '--js-flags') jsFlags = value;
  else throw new Error(`unknown argument ${flag}\n${usage}`);
}
if (!model || page.prompt === null) throw new Error(usage);

/**
 * Counts a wasm module's SIMD instructions by walking every function body
 * (a minimal decoder of the instruction encoding, immediates included), so
 * the answer to "does wllama's build use relaxed SIMD?" is read from the
 * binary itself, with its memories' kinds (memory64, shared):
 * {memories, functions, simd, relaxed, relaxed_ops}, plus error if the walk failed.
 * Each body must decode to exactly its size, else the count is refused.
 */
function simdCensus(bytes) {
  let p = 0;
  const u32 = () => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const b = bytes[p++];
      if (b === undefined) throw new Error('truncated LEB128');
      if (shift < 32) result += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if ((b & 0x80) === 0) return result;
    }
  };
  const skipLeb = () => { while (bytes[p++] & 0x80); };
  const memarg = () => { const flags = u32(); if (flags & 0x40) u32(); skipLeb(); };
  const heapType = () => skipLeb(); // abstract heap types are one byte, indices s33
  const valType = () => { const t = bytes[p++]; if (t === 0x63 || t === 0x64) heapType(); };
  const blockType = () => {
    const b = bytes[p];
    if (b === 0x40 || (b >= 0x6f && b <= 0x7f)) p += 1;
    else if (b === 0x63 || b === 0x64) { p += 1; heapType(); } else skipLeb();
  };
  const names = { 0x100: 'i8x16.relaxed_swizzle', 0x101: 'i32x4.relaxed_trunc_f32x4_s', 0x102: 'i32x4.relaxed_trunc_f32x4_u',
    0x103: 'i32x4.relaxed_trunc_f64x2_s_zero', 0x104: 'i32x4.relaxed_trunc_f64x2_u_zero', 0x105: 'f32x4.relaxed_madd',
    0x106: 'f32x4.relaxed_nmadd', 0x107: 'f64x2.relaxed_madd', 0x108: 'f64x2.relaxed_nmadd', 0x109: 'i8x16.relaxed_laneselect',
    0x10a: 'i16x8.relaxed_laneselect', 0x10b: 'i32x4.relaxed_laneselect', 0x10c: 'i64x2.relaxed_laneselect',
    0x10d: 'f32x4.relaxed_min', 0x10e: 'f32x4.relaxed_max', 0x10f: 'f64x2.relaxed_min', 0x110: 'f64x2.relaxed_max',
    0x111: 'i16x8.relaxed_q15mulr_s', 0x112: 'i16x8.relaxed_dot_i8x16_i7x16_s', 0x113: 'i32x4.relaxed_dot_i8x16_i7x16_add_s' };
  const census = { memories: [], functions: 0, simd: 0, relaxed: 0, relaxed_ops: {} };
  const name = () => { const n = u32(); p += n; };
  const limits = () => {
    const flags = bytes[p++];
    skipLeb();
    if (flags & 1) skipLeb();
    return flags;
  };
  const memory = (imported) => {
    const flags = limits();
    census.memories.push({ imported, shared: (flags & 2) !== 0, memory64: (flags & 4) !== 0 });
  };

  function instruction() {
    const op = bytes[p++];
    if (op === 0x02 || op === 0x03 || op === 0x04 || op === 0x06) blockType();
    else if ((op >= 0x07 && op <= 0x09) || op === 0x0c || op === 0x0d || (op >= 0x10 && op <= 0x12)
      || op === 0x14 || op === 0x15 || op === 0x18 || (op >= 0x20 && op <= 0x26) || op === 0x3f || op === 0x40
      || op === 0xd2 || op === 0xd5 || op === 0xd6) u32();
    else if (op === 0x0e) { const n = u32(); for (let i = 0; i <= n; i++) u32(); }
    else if (op === 0x11 || op === 0x13) { u32(); u32(); }
    else if (op === 0x1c) { const n = u32(); for (let i = 0; i < n; i++) valType(); }
    else if (op === 0x1f) {
      blockType();
      const n = u32();
      for (let i = 0; i < n; i++) { const kind = bytes[p++]; if (kind < 2) u32(); u32(); }
    } else if (op >= 0x28 && op <= 0x3e) memarg();
    else if (op === 0x41 || op === 0x42) skipLeb();
    else if (op === 0x43) p += 4;
    else if (op === 0x44) p += 8;
    else if (op === 0xd0) heapType();
    else if (op === 0xfc) {
      const sub = u32();
      if (sub === 8 || sub === 10 || sub === 12 || sub === 14) { u32(); u32(); }
      else if (sub === 9 || sub === 11 || sub === 13 || (sub >= 15 && sub <= 17)) u32();
      else if (sub > 17) throw new Error(`unknown 0xfc ${sub}`);
    } else if (op === 0xfd) {
      const sub = u32();
      census.simd += 1;
      if (sub <= 11 || sub === 92 || sub === 93) memarg();
      else if (sub === 12 || sub === 13) p += 16;
      else if (sub >= 21 && sub <= 34) p += 1;
      else if (sub >= 84 && sub <= 91) { memarg(); p += 1; }
      else if (sub >= 0x100) {
        if (sub > 0x113) throw new Error(`unknown 0xfd ${sub}`);
        census.relaxed += 1;
        census.relaxed_ops[names[sub]] = (census.relaxed_ops[names[sub]] ?? 0) + 1;
      }
    } else if (op === 0xfe) {
      const sub = u32();
      if (sub === 3) p += 1; else memarg();
    } else if (op === 0xfb) throw new Error('GC instructions are not decoded here');
    else if (op === undefined) throw new Error('truncated body');
    // Every other opcode (control without immediates, numeric) has none.
  }

  try {
    if (bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) throw new Error('not a wasm module');
    p = 8;
    while (p < bytes.length) {
      const id = bytes[p++];
      const size = u32();
      const end = p + size;
      if (id === 2) {
        const count = u32();
        for (let i = 0; i < count; i++) {
          name(); name();
          const kind = bytes[p++];
          if (kind === 0) u32();
          else if (kind === 1) { valType(); limits(); } else if (kind === 2) memory(true);
          else if (kind === 3) { valType(); p += 1; } else if (kind === 4) { p += 1; u32(); } else throw new Error(`unknown import kind ${kind}`);
        }
      } else if (id === 5) {
        const count = u32();
        for (let i = 0; i < count; i++) memory(false);
      } else if (id === 10) {
        const count = u32();
        for (let f = 0; f < count; f++) {
          const bodySize = u32();
          const bodyEnd = p + bodySize;
          const groups = u32();
          for (let g = 0; g < groups; g++) { u32(); valType(); }
          while (p < bodyEnd) instruction();
          if (p !== bodyEnd || bytes[bodyEnd - 1] !== 0x0b) throw new Error(`function ${f} did not decode to its size`);
          census.functions += 1;
        }
      }
      p = end;
    }
    return census;
  } catch (error) {
    return { error: `${error.message} (at byte ${p})`, ...census };
  }
}

/** utime + stime of one thread or process, in seconds, from /proc (Linux). */
function cpuSeconds(statPath) {
  try {
    const stat = readFileSync(statPath, 'utf8');
    // The name (field 2) may hold spaces: count fields after its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch { return 0; }
}

/** The renderer's threads (name, CPU seconds), busiest first, and the browser's processes' memory. */
async function browserSide(browser) {
  const cdp = await browser.newBrowserCDPSession();
  const { processInfo } = await cdp.send('SystemInfo.getProcessInfo');
  const { targetInfos } = await cdp.send('Target.getTargets');
  const renderers = processInfo.filter((p) => p.type === 'renderer');
  const threads = [];
  for (const r of renderers) {
    let tids = [];
    try { tids = readdirSync(`/proc/${r.id}/task`); } catch { /* gone */ }
    for (const tid of tids) {
      let name = '';
      try { name = readFileSync(`/proc/${r.id}/task/${tid}/comm`, 'utf8').trim(); } catch { /* gone */ }
      threads.push({ pid: r.id, tid: Number(tid), name, cpu_s: cpuSeconds(`/proc/${r.id}/task/${tid}/stat`) });
    }
  }
  threads.sort((a, b) => b.cpu_s - a.cpu_s);
  return {
    worker_targets: targetInfos.filter((t) => t.type.includes('worker')).map((t) => ({ type: t.type, url: t.url.slice(0, 80), title: t.title })),
    renderer_threads: threads.filter((t) => t.cpu_s >= 0.05),
    memory: processMemory(processInfo),
  };
}

const server = await serveStatic({
  '/': here,
  '/wllama/': resolve(here, '../node_modules/@wllama/wllama'),
  '/models/': dirname(resolve(model)),
});
const query = new URLSearchParams({ model: `/models/${basename(model)}`, wllama: '/wllama/', ...page });
const address = `${server.url}/wllama.html?${query}`;

const browser = await chromium.launch(launchOptions(jsFlags));
let exitCode = 0;
try {
  const tab = await browser.newPage();
  const messages = [];
  tab.on('console', (m) => messages.push(`${m.type()}: ${m.text()}`));
  tab.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`));
  const workers = [];
  tab.on('worker', (w) => workers.push(w.url().slice(0, 80)));
  // Anything but this server (wllama's CDN, say) is listed: this machine may have no internet.
  const outside = [];
  tab.on('request', (r) => { if (!r.url().startsWith(server.url) && !r.url().startsWith('blob:')) outside.push(r.url()); });
  await tab.goto(address);
  await tab.waitForSelector('#report[data-done="true"]', { state: 'attached', timeout: timeout * 1e3 });
  const report = JSON.parse(await tab.textContent('#report'));
  Object.assign(report, {
    console: messages,
    chromium: browser.version(),
    page_workers: workers,
    outside_requests: outside,
    static_bytes: server.bytesServed(),
    wasm_census: simdCensus(readFileSync(resolve(here, '../node_modules/@wllama/wllama/esm/wasm/wllama.wasm'))),
    ...(await browserSide(browser)),
  });
  process.stdout.write(`${JSON.stringify(report)}\n`);
} catch (error) {
  process.stderr.write(`drive-wllama.mjs: ${error.message}\n`);
  exitCode = 1;
} finally {
  await browser.close();
  await server.close();
}
process.exit(exitCode);
