// The page: asks the server (`shardload web`) for its manifest and plan,
// loads the model with the browser host (shardload.js), verifies every
// tensor's XXH64 against the host's checksums, runs one decode-step matvec
// sweep, and shows what it measured.
//
// URL parameters, so scripts can drive it: run=1 loads the served model at
// once; sample=N verifies N tensors per shard instead of all; sweep=0 skips
// the sweep; rows=FIRST:END picks the output rows reported per weight;
// dot=plain uses the plain-SIMD guest even where relaxed SIMD exists.
// When done (or failed), the JSON report is written into #report.

import * as shardload from './shardload.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const report = { error: null };
let served = null;

function showError(message) {
  $('error').textContent = message;
  report.error = message;
}

function finish() {
  $('report').textContent = JSON.stringify(report, null, 1);
  $('report').dataset.done = 'true';
}

function row(table, cells) {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement(tr.children.length === 0 && table.id === 'results' ? 'th' : 'td');
    td.textContent = cell;
    tr.appendChild(td);
  }
  $(table.id).querySelector('tbody').appendChild(tr);
  return tr;
}

function showShards(plan, shards = [], verified = {}) {
  $('shards').querySelector('tbody').replaceChildren();
  for (const s of plan.shards) {
    row($('shards'), [s.index, shardload.human(s.bytes), s.tensors.length, s.extents.length,
      shards[s.index] ? shards[s.index].ms.toFixed(0) : '', verified[s.index] ?? '']);
  }
}

/** A URL parameter that must be a whole number of at least `least`. */
function wholeNumber(text, name, least) {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < least) {
    throw new Error(`?${name}=${text}: give a whole number of at least ${least}`);
  }
  return value;
}

/** `rows=FIRST:END` (END exclusive), as shardload run --sweep-rows takes it. */
function rowRange(text) {
  const parts = text.split(':');
  const bad = () => new Error(`?rows=${text}: give FIRST:END with END past FIRST, like 0:4`);
  if (parts.length !== 2) throw bad();
  const [first, end] = parts.map((p) => wholeNumber(p, 'rows', 0));
  if (end <= first) throw bad();
  return [first, end];
}

/** Bytes as base64, a piece at a time (spreading a large array overflows the stack). */
function base64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

const nextFrame = () => new Promise((resolve) => setTimeout(resolve, 0));

async function getJson(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch ${what} (${url}): ${response.status} ${response.statusText}`);
  return response.json();
}

async function start(source, sourceName) {
  $('load-served').disabled = true;
  $('pick').disabled = true;
  const { manifest, plan, checksums } = served;
  const started = performance.now();
  report.source = sourceName;
  const progress = $('progress');
  progress.hidden = false;
  const copyStarted = performance.now();
  const guest = await shardload.load({
    plan,
    guests: manifest.guest,
    source,
    typeIds: manifest.ggml_types,
    dot: params.get('dot') ?? 'auto',
    onProgress(copied, total) {
      progress.value = copied / total;
      const seconds = (performance.now() - copyStarted) / 1e3;
      $('status').textContent = `copying ${shardload.human(copied)} of ${shardload.human(total)} (${(copied / seconds / 1e9).toFixed(2)} GB/s)`;
    },
  });
  const readyMs = performance.now() - started;
  // Kept, so the memories stay (and stay measurable) after the run, and for
  // people to try exports from the console: shardloadGuest.exports.route(0n).
  globalThis.shardloadGuest = guest;
  const copySeconds = guest.shards.reduce((sum, s) => sum + s.ms, 0) / 1e3;
  Object.assign(report, {
    dot: guest.dot,
    ready_ms: readyMs,
    bytes_copied: guest.copied,
    copy_gb_per_s: guest.copied / Math.max(copySeconds, 1e-9) / 1e9,
    tables: base64(guest.tables),
  });
  showShards(plan, guest.shards);

  // Verify: the guest's XXH64 of each tensor, read through its shard memory,
  // against the host's of the file.
  const sample = params.has('sample') ? wholeNumber(params.get('sample'), 'sample', 1) : null;
  const chosen = shardload.selectTensors(plan, sample);
  const expected = new Map(checksums.tensors.map((t) => [t.name, t.xxh64]));
  const perShard = {};
  const failures = [];
  const hashes = {};
  let verifyMs = 0;
  let verifiedBytes = 0;
  for (const [i, t] of chosen.entries()) {
    const tensor = plan.tensors[t];
    const begun = performance.now();
    const hash = guest.xxh64Tensor(t);
    verifyMs += performance.now() - begun;
    verifiedBytes += tensor.bytes;
    hashes[tensor.name] = hash;
    perShard[tensor.shard] = (perShard[tensor.shard] ?? 0) + 1;
    if (expected.get(tensor.name) !== hash) failures.push(tensor.name);
    if (i % 16 === 15) {
      $('status').textContent = `verifying: ${i + 1} of ${chosen.length} tensors`;
      progress.value = (i + 1) / chosen.length;
      await nextFrame();
    }
  }
  Object.assign(report, {
    verified: chosen.length,
    failed: failures.length,
    failures,
    verify_ms: verifyMs,
    verify_gb_per_s: verifiedBytes / Math.max(verifyMs / 1e3, 1e-9) / 1e9,
    xxh64: hashes,
  });
  showShards(plan, guest.shards, perShard);
  if (failures.length) {
    throw new Error(`${failures.length} of ${chosen.length} tensors differ from the host's checksums (first: ${failures[0]}): the file is not the one the plan was made from`);
  }

  if (params.get('sweep') !== '0') {
    $('status').textContent = 'running one decode step\'s matvecs…';
    await nextFrame();
    const sweep = shardload.sweep(guest, manifest.kernel_types, rowRange(params.get('rows') ?? '0:4'));
    report.sweep = sweep;
    report.sweep_gb_per_s = sweep.gb_per_s;
  }
  progress.hidden = true;
  $('status').textContent = `done: ${chosen.length} tensors verified, ${failures.length} failed`;
  const results = [
    ['time to ready', `${readyMs.toFixed(0)} ms`],
    ['bytes copied', `${shardload.human(guest.copied)} (${report.copy_gb_per_s.toFixed(2)} GB/s)`],
    ['verified', `${chosen.length} of ${plan.tensors.length} tensors, ${failures.length} failed (${report.verify_gb_per_s.toFixed(2)} GB/s XXH64)`],
    ['guest', `${guest.dot === 'relaxed' ? 'relaxed SIMD' : 'plain SIMD128'} dot products`],
  ];
  if (report.sweep) {
    results.push(['decode-step sweep', `${report.sweep.matvecs} matvecs over ${shardload.human(report.sweep.bytes)} in ${report.sweep.ms.toFixed(0)} ms: ${report.sweep_gb_per_s.toFixed(2)} GB/s`]);
  }
  for (const r of results) row($('results'), r);
}

async function main() {
  report.browser = navigator.userAgent;
  const features = shardload.detectFeatures();
  report.features = features;
  $('features').replaceChildren(...Object.entries(features).map(([name, has]) => {
    const span = document.createElement('span');
    span.className = has ? 'ok' : 'missing';
    span.textContent = `${has ? '✓' : '✗'} ${name}`;
    return span;
  }));
  const reason = shardload.unsupportedReason(features);
  if (reason) throw new Error(reason);
  if (!features.relaxedSimd) {
    $('status').textContent = 'No relaxed SIMD here: the plain-SIMD guest runs instead (same numbers, slower).';
  }
  const manifest = await getJson('manifest.json', 'the manifest');
  const [plan, checksums] = await Promise.all([
    getJson(manifest.plan, 'the plan'),
    getJson(manifest.checksums, 'the checksums'),
  ]);
  served = { manifest, plan, checksums };
  report.model = manifest.model.name;
  report.tensors = plan.tensors.length;
  report.shards = plan.shards.map((s) => ({ index: s.index, bytes: s.bytes, pages: s.pages, tensors: s.tensors.length }));
  const size = manifest.model.files.reduce((sum, f) => sum + f.size, 0);
  $('model').textContent = `${manifest.model.name}: ${plan.tensors.length} tensors, ${shardload.human(size)}, planned into ${plan.shards.length} memory64 memories.`;
  showShards(plan);
  const run = (source, name) => start(source, name).catch((error) => showError(error.message)).finally(finish);
  $('load-served').disabled = false;
  $('pick').disabled = false;
  $('load-served').onclick = () => run(shardload.urlSource(manifest.model.files), 'server');
  $('pick').onchange = (event) => {
    const files = Array.from(event.target.files).sort((a, b) => a.name.localeCompare(b.name));
    if (files.length) run(shardload.fileSource(files), 'files');
  };
  if (params.get('run') === '1') $('load-served').click();
}

main().catch((error) => {
  showError(error.message);
  finish();
});
