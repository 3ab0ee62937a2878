// The page: loads the model the manifest names (from the server, the
// cache, or files a person picks) into shared memory64 memories, starts the
// guest on web workers with the forward-pass program `shardload web` built,
// and chats: the model's own chat template (@huggingface/jinja), the
// tokenizer resolved from the GGUF (tokenizer.js), and the CLI's sampler
// (sampler.js). Verification against the host's checksums and a decode-step
// sweep stay in a panel.
//
// URL parameters, so scripts can drive it (the report goes into #report
// once the load and what the parameters ask for are done):
//   run=1            load the served model at once (else on a click, or files picked)
//   workers=T        web workers (default: navigator.hardwareConcurrency)
//   prompt=TEXT or tokens=ID,ID,...   generate as `shardload generate` does:
//                    n=N tokens (default 32), temp, seed, top_k, top_p, min_p
//   messages=JSON    [{role, content}, ...]: the chat prompt, rendered and
//                    tokenized; with n=N, the reply as `shardload chat` makes it
//   verify=1         verify tensors (sample=N per shard) and sweep (sweep=0 skips; rows=FIRST:END)
//   dot=plain        the plain-SIMD guest even where relaxed SIMD exists
//   cache=0          neither read nor keep the model in the browser's storage

import * as shardload from './shardload.js';
import { openCache } from './cache.js';
import { Session } from './session.js';
import { Sampler } from './sampler.js';
import { Tokenizer } from './tokenizer.js';
import { Template } from './vendor/jinja.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const report = { error: null };
let served = null;
let loaded = null;

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
  table.querySelector('tbody').appendChild(tr);
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

/** A URL parameter that must be a number (not NaN) of at least `least`. */
function number(text, name, least) {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || value < least) {
    throw new Error(`?${name}=${text}: give a number of at least ${least}`);
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

async function getBytes(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch ${what} (${url}): ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** The sampler's settings: the manifest's defaults (the CLI's), then the page's controls or URL. */
function samplerConfig() {
  const config = { ...served.manifest.sampler };
  const fromUrl = { temp: 'temperature', top_k: 'top_k', top_p: 'top_p', min_p: 'min_p', seed: 'seed' };
  for (const [param, key] of Object.entries(fromUrl)) {
    if (params.has(param)) config[key] = key === 'top_k' || key === 'seed' ? wholeNumber(params.get(param), param, 0) : number(params.get(param), param, 0);
  }
  if ($('temperature').value !== '') config.temperature = number($('temperature').value, 'temperature', 0);
  if ($('seed').value !== '') config.seed = wholeNumber($('seed').value, 'seed', 0);
  return config;
}

/** The chat prompt's tokens, as ChatTemplate::prompt_tokens makes them. */
function promptTokens(messages) {
  const { tokenizer, template } = loaded;
  const chat = served.manifest.chat_template;
  if (!template) throw new Error(`this model cannot chat: ${chat.error}`);
  if (!tokenizer) throw new Error(`this model cannot chat: ${served.manifest.tokenizer.error}`);
  const rendered = template.render({
    messages, add_generation_prompt: true, bos_token: chat.bos_token, eos_token: chat.eos_token,
  });
  const tokens = tokenizer.encode(rendered, false, true);
  if (tokenizer.addsBos && tokenizer.bos !== null && tokens[0] !== tokenizer.bos) tokens.unshift(tokenizer.bos);
  return { rendered, tokens };
}

/**
 * Samples up to `limit` tokens after `logits`, as `shardload generate` and
 * `chat` do: an end-of-generation token stops (and is kept in `tokens` for
 * generate's report), each piece is streamed to `onText`, and the context's
 * end stops. Returns {tokens, text, stop, firstTokenMs, generateMs}.
 */
async function sampleReply(logits, limit, onText, shouldStop = () => false) {
  const { session, tokenizer } = loaded;
  const sampler = new Sampler(samplerConfig());
  const decoder = tokenizer?.decoder();
  const tokens = [];
  let text = '';
  let stop = 'token limit';
  const started = performance.now();
  let firstTokenMs = null;
  while (tokens.length < limit) {
    if (shouldStop()) { stop = 'stopped'; break; }
    const token = sampler.sample(logits);
    firstTokenMs ??= performance.now() - started;
    tokens.push(token);
    if (tokenizer?.isEog(token)) { stop = 'end of generation'; break; }
    const piece = decoder ? decoder.push(token) : `${token} `;
    text += piece;
    onText(piece, tokens.length);
    if (tokens.length === limit) break;
    if (session.position >= session.ctx) { stop = 'the context is full'; break; }
    logits = await session.eval([token]);
  }
  if (decoder) {
    const rest = decoder.finish();
    text += rest;
    onText(rest, tokens.length);
  }
  return { tokens, text, stop, firstTokenMs, generateMs: performance.now() - started };
}

// ---- loading ---------------------------------------------------------------

async function start(source, sourceName) {
  $('load-served').disabled = true;
  $('pick').disabled = true;
  $('workers').disabled = true;
  const { manifest, plan } = served;
  const started = performance.now();
  report.source = sourceName;
  const progress = $('progress');
  progress.hidden = false;
  const threads = wholeNumber($('workers').value, 'workers', 1);
  let cacheStats = null;
  if (sourceName === 'server' && params.get('cache') !== '0' && loaded.cache) {
    cacheStats = {};
    source = loaded.cache.through(source, plan, cacheStats);
  }
  const [program, tokenizerData] = await Promise.all([
    getBytes(manifest.program.url, 'the forward-pass program'),
    manifest.tokenizer.url ? getJson(manifest.tokenizer.url, 'the tokenizer') : null,
  ]);
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
      const from = cacheStats && cacheStats.from_cache > 0 ? ' from the browser\'s cache' : '';
      $('status').textContent = `copying ${shardload.human(copied)} of ${shardload.human(total)}${from} (${(copied / seconds / 1e9).toFixed(2)} GB/s)`;
    },
  });
  if (guest.scratchFree !== manifest.scratch_free) {
    throw new Error(`the page's routing tables end at ${guest.scratchFree}, the server's at ${manifest.scratch_free}: the page and the server are from different versions`);
  }
  $('status').textContent = `starting ${threads} worker${threads === 1 ? '' : 's'}…`;
  const session = await Session.create({ manifest, guest, program, threads });
  loaded.guest = guest;
  loaded.session = session;
  loaded.tokenizer = tokenizerData ? new Tokenizer(tokenizerData) : null;
  loaded.template = manifest.chat_template.source ? new Template(manifest.chat_template.source) : null;
  const readyMs = performance.now() - started;
  // Kept, so the memories stay (and stay measurable), and for the console.
  globalThis.shardloadGuest = guest;
  const copySeconds = guest.shards.reduce((sum, s) => sum + s.ms, 0) / 1e3;
  Object.assign(report, {
    dot: guest.dot,
    workers: threads,
    ready_ms: readyMs,
    bytes_copied: guest.copied,
    copy_gb_per_s: guest.copied / Math.max(copySeconds, 1e-9) / 1e9,
    cache: cacheStats,
    tables: base64(guest.tables),
  });
  if (cacheStats?.error) $('cache-status').textContent = cacheStats.error;
  await showCache();
  showShards(plan, guest.shards);
  progress.hidden = true;
  const where = cacheStats?.from_cache ? `, ${shardload.human(cacheStats.from_cache)} from the browser's cache` : '';
  $('status').textContent = `ready in ${(readyMs / 1e3).toFixed(1)} s: ${shardload.human(guest.copied)} in ${plan.shards.length} ${plan.shards.length === 1 ? 'memory' : 'memories'}${where}, ${threads} worker${threads === 1 ? '' : 's'}, ${guest.dot === 'relaxed' ? 'relaxed SIMD' : 'plain SIMD128'}`;
  $('verify').disabled = false;
  $('chat').hidden = false;
  showStats();
}

// ---- scripted runs ---------------------------------------------------------

/** ?prompt= or ?tokens=: `shardload generate`'s run, ids into the report. */
async function scriptedGenerate() {
  const { session, tokenizer } = loaded;
  let prompt;
  if (params.has('tokens')) {
    prompt = params.get('tokens').split(',').map((t) => wholeNumber(t.trim(), 'tokens', 0));
  } else {
    if (!tokenizer) throw new Error(`?prompt needs the model's tokenizer: ${served.manifest.tokenizer.error}; give ?tokens=ID,ID,... instead`);
    prompt = tokenizer.encode(params.get('prompt'), true, true);
  }
  if (prompt.length === 0) throw new Error('the prompt is empty (no tokens); give some text or ?tokens=');
  const n = params.has('n') ? wholeNumber(params.get('n'), 'n', 1) : 32;
  const started = performance.now();
  const logits = await session.eval(prompt);
  const promptMs = performance.now() - started;
  const reply = await sampleReply(logits, n, () => {});
  Object.assign(report, {
    prompt_tokens: prompt,
    tokens: reply.tokens,
    text: reply.text,
    stop: reply.stop,
    timings_ms: { prompt: promptMs, generate: reply.generateMs, first_token: promptMs + reply.firstTokenMs },
    tokens_per_s: {
      prompt: prompt.length / Math.max(promptMs / 1e3, 1e-9),
      // The first token comes from the prompt's logits: the rest each cost a forward pass.
      generate: Math.max(reply.tokens.length - 1, 0) / Math.max((reply.generateMs - reply.firstTokenMs) / 1e3, 1e-9),
    },
  });
}

/** ?messages=: the chat prompt as `shardload chat` builds it, and with ?n= the reply. */
async function scriptedChat() {
  let messages;
  try {
    messages = JSON.parse(params.get('messages'));
  } catch (error) {
    throw new Error(`?messages= is not JSON: ${error.message}`);
  }
  if (!Array.isArray(messages) || messages.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string')) {
    throw new Error('?messages= must be a JSON array of {"role": "...", "content": "..."}');
  }
  const { rendered, tokens } = promptTokens(messages);
  Object.assign(report, { rendered, prompt_tokens: tokens });
  if (params.has('n')) {
    const logits = await loaded.session.eval(tokens);
    const reply = await sampleReply(logits, wholeNumber(params.get('n'), 'n', 1), () => {});
    Object.assign(report, { tokens: reply.tokens, text: reply.text, stop: reply.stop });
  }
}

// ---- the conversation ------------------------------------------------------

const conversation = [];
let cached = [];
let stopRequested = false;
let busy = false;

function addTurn(role, text) {
  const div = document.createElement('div');
  div.className = `turn ${role}`;
  const who = document.createElement('b');
  who.textContent = role;
  const body = document.createElement('span');
  body.textContent = text;
  div.append(who, body);
  $('conversation').appendChild(div);
  $('conversation').scrollTop = $('conversation').scrollHeight;
  return body;
}

function showStats(extra = '') {
  const { session } = loaded;
  if (!session) return;
  $('stats').textContent = `${extra}context ${session.position} of ${session.ctx} tokens`;
}

/** One user turn: the conversation's prompt, the cached prefix kept, the reply streamed. */
async function send(text) {
  if (busy || !text.trim()) return;
  busy = true;
  stopRequested = false;
  $('send').disabled = true;
  $('stop').disabled = false;
  try {
    conversation.push({ role: 'user', content: text });
    addTurn('user', text);
    const { tokens } = promptTokens(conversation);
    const { session } = loaded;
    if (tokens.length > session.ctx) {
      throw new Error(`the conversation is ${tokens.length} tokens, more than the context's ${session.ctx}: start a new chat (or serve with a larger --ctx)`);
    }
    // Keep the cached prefix the new prompt shares; evaluate at least one token for logits.
    let common = 0;
    while (common < cached.length && common < tokens.length && cached[common] === tokens[common]) common += 1;
    common = Math.min(common, tokens.length - 1);
    session.truncate(common);
    cached = cached.slice(0, common);
    const body = addTurn('assistant', '');
    const started = performance.now();
    const logits = await session.eval(tokens.slice(common));
    cached.push(...tokens.slice(common));
    const promptMs = performance.now() - started;
    const limit = wholeNumber($('max-tokens').value, 'max tokens', 1);
    const reply = await sampleReply(logits, limit, (piece, n) => {
      body.textContent += piece;
      $('conversation').scrollTop = $('conversation').scrollHeight;
      const seconds = (performance.now() - started - promptMs) / 1e3;
      showStats(`${n} tokens, ${(n / Math.max(seconds, 1e-9)).toFixed(1)} tok/s · `);
    }, () => stopRequested);
    // What the cache holds: every sampled token but the last was evaluated.
    const evaluated = reply.tokens.slice(0, Math.max(0, session.position - cached.length));
    cached.push(...evaluated);
    conversation.push({ role: 'assistant', content: reply.text });
    const generated = reply.tokens.length;
    const rate = Math.max(generated - 1, 0) / Math.max((reply.generateMs - reply.firstTokenMs) / 1e3, 1e-9);
    showStats(`prompt ${tokens.length - common} tokens in ${promptMs.toFixed(0)} ms · first token ${(promptMs + (reply.firstTokenMs ?? 0)).toFixed(0)} ms · ${generated} tokens at ${rate.toFixed(1)} tok/s (${reply.stop}) · `);
    report.turns = (report.turns ?? 0) + 1;
  } catch (error) {
    showError(error.message);
  } finally {
    busy = false;
    $('send').disabled = false;
    $('stop').disabled = true;
  }
}

function newChat() {
  if (busy) return;
  conversation.length = 0;
  cached = [];
  loaded.session?.truncate(0);
  $('conversation').replaceChildren();
  $('error').textContent = '';
  showStats();
}

// ---- verification ----------------------------------------------------------

/** The guest's XXH64 of tensors, read through their shard memories, against the host's of the file; then the sweep. */
async function verify() {
  $('verify').disabled = true;
  const { manifest, plan } = served;
  const { guest } = loaded;
  const progress = $('progress');
  progress.hidden = false;
  if (!served.checksums) served.checksums = await getJson(manifest.checksums, 'the checksums');
  const sample = params.has('sample') ? wholeNumber(params.get('sample'), 'sample', 1) : null;
  const chosen = shardload.selectTensors(plan, sample);
  const expected = new Map(served.checksums.tensors.map((t) => [t.name, t.xxh64]));
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
    throw new Error(`${failures.length} of ${chosen.length} tensors differ from the host's checksums (first: ${failures[0]}): the file is not the one the plan was made from (clear the cached model if it came from there)`);
  }
  if (params.get('sweep') !== '0') {
    $('status').textContent = 'running one decode step\'s matvecs…';
    await nextFrame();
    const sweep = shardload.sweep(guest, manifest.kernel_types, rowRange(params.get('rows') ?? '0:4'));
    report.sweep = sweep;
    report.sweep_gb_per_s = sweep.gb_per_s;
  }
  progress.hidden = true;
  $('status').textContent = `verified: ${chosen.length} tensors, ${failures.length} failed`;
  const results = [
    ['time to ready', `${report.ready_ms.toFixed(0)} ms`],
    ['bytes copied', `${shardload.human(guest.copied)} (${report.copy_gb_per_s.toFixed(2)} GB/s)`],
    ['verified', `${chosen.length} of ${plan.tensors.length} tensors, ${failures.length} failed (${report.verify_gb_per_s.toFixed(2)} GB/s XXH64)`],
    ['guest', `${guest.dot === 'relaxed' ? 'relaxed SIMD' : 'plain SIMD128'} dot products`],
  ];
  if (report.sweep) {
    results.push(['decode-step sweep', `${report.sweep.matvecs} matvecs over ${shardload.human(report.sweep.bytes)} in ${report.sweep.ms.toFixed(0)} ms: ${report.sweep_gb_per_s.toFixed(2)} GB/s`]);
  }
  $('results').querySelector('tbody').replaceChildren();
  for (const r of results) row($('results'), r);
  $('verify').disabled = false;
}

// ---- start -----------------------------------------------------------------

async function showCache() {
  const { cache } = loaded;
  if (!cache) {
    $('cache-status').textContent = 'This browser has no Origin Private File System: the model is downloaded at each load.';
    return;
  }
  const { usage, quota } = await cache.estimate();
  if (!$('cache-status').textContent.startsWith('the ')) {
    $('cache-status').textContent = `This site stores ${shardload.human(usage)} (of ${shardload.human(quota)} allowed) in this browser.`;
  }
  $('clear-cache').disabled = false;
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
  if (manifest.format !== 'shardload-web/2') {
    throw new Error(`manifest.json is ${manifest.format ?? 'of no known format'}, this page reads shardload-web/2: serve it with this version of shardload web`);
  }
  const plan = await getJson(manifest.plan, 'the plan');
  served = { manifest, plan, checksums: null };
  loaded = { cache: await openCache() };
  report.model = manifest.model.name;
  report.tensors = plan.tensors.length;
  report.shards = plan.shards.map((s) => ({ index: s.index, bytes: s.bytes, pages: s.pages, tensors: s.tensors.length }));
  const size = manifest.model.files.reduce((sum, f) => sum + f.size, 0);
  $('model').textContent = `${manifest.model.name}: ${plan.tensors.length} tensors, ${shardload.human(size)}, planned into ${plan.shards.length} memory64 ${plan.shards.length === 1 ? 'memory' : 'memories'}; context ${manifest.program.ctx} tokens.`;
  const workers = Math.min(manifest.program.max_workers, navigator.hardwareConcurrency || 1);
  $('workers').max = manifest.program.max_workers;
  $('workers').value = params.has('workers') ? wholeNumber(params.get('workers'), 'workers', 1) : workers;
  $('temperature').placeholder = String(Number(manifest.sampler.temperature.toPrecision(6)));
  $('seed').placeholder = String(manifest.sampler.seed);
  showShards(plan);
  await showCache();

  const run = async (source, name) => {
    try {
      await start(source, name);
      if (params.has('prompt') || params.has('tokens')) await scriptedGenerate();
      if (params.has('messages')) await scriptedChat();
      if (params.get('verify') === '1') await verify();
    } catch (error) {
      showError(error.message);
    } finally {
      finish();
    }
  };
  $('load-served').disabled = false;
  $('pick').disabled = false;
  $('load-served').onclick = () => run(shardload.urlSource(manifest.model.files), 'server');
  $('pick').onchange = (event) => {
    const files = Array.from(event.target.files).sort((a, b) => a.name.localeCompare(b.name));
    if (files.length) run(shardload.fileSource(files), 'files');
  };
  $('clear-cache').onclick = async () => {
    await loaded.cache.clear();
    $('cache-status').textContent = '';
    await showCache();
  };
  $('verify').onclick = () => verify().catch((error) => showError(error.message)).finally(finish);
  $('composer').onsubmit = (event) => {
    event.preventDefault();
    const text = $('input').value;
    $('input').value = '';
    send(text);
  };
  $('input').onkeydown = (event) => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  };
  $('stop').onclick = () => { stopRequested = true; };
  $('new-chat').onclick = newChat;
  if (params.get('run') === '1') $('load-served').click();
}

main().catch((error) => {
  showError(error.message);
  finish();
});
