// The wllama side of scripts/bench-web (see wllama.html): loads a GGUF into
// wllama (llama.cpp in wasm, SIMD128, pthreads on web workers), evaluates
// the prompt the other runs get as ids and generates greedily, and writes a
// JSON report into #report (data-done="true" when finished), shaped like the
// shardload page's: tokens_per_s {prompt, generate}, timings_ms, tokens, error.
//
// URL parameters:
//   model=URL        the GGUF (one file)
//   prompt=TEXT      the prompt; wllama 3 takes only text, tokenized by llama.cpp
//                    (special tokens parsed, BOS as the model says)
//   tokens=ID,ID,... the ids the other runs use for that text: their count is
//                    checked against what llama.cpp evaluated
//   n=N              tokens to generate (default 128), greedy (temperature 0)
//   threads=T        llama.cpp's n_threads (default 2)
//   ctx=N            context size (default 4096, as `shardload web`'s)
//   warm=N           first a throwaway completion of N tokens (default 0: measure the first)
//   wllama=URL       where @wllama/wllama's package directory is served (default /wllama/)
//
// Why not a lower-level API: wllama 3.x dropped tokenize/decode/sampling
// ("Low level API ... TODO: add back" in src/wllama.ts); all text generation
// goes through llama-server's completion handler compiled into the wasm,
// which a page polls once per token (get_result runs one server loop step).
// So the times here are the page's clock around that: the prompt is the time
// to the first streamed token (prompt evaluation and the first sampling),
// generation the time from the first to the last token over n - 1 tokens,
// exactly as web/page.js reports the shardload tab. llama.cpp's own timings
// (its server's prompt_ms, predicted_ms) are kept beside them. (Given ids,
// 3.13's completion fails: "type must be string, but is array" in the log,
// surfacing as "Invalid typed array length" from its worker.)

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const report = { error: null };

function finish() {
  $('report').textContent = JSON.stringify(report, null, 1);
  $('report').dataset.done = 'true';
}

function whole(name, fallback) {
  if (!params.has(name)) return fallback;
  const text = params.get(name);
  if (!/^\d+$/.test(text)) throw new Error(`?${name}=${text}: give a whole number`);
  return Number(text);
}

async function main() {
  const base = new URL(params.get('wllama') ?? '/wllama/', location.href).href;
  const modelUrl = params.get('model');
  if (!modelUrl) throw new Error('give ?model=URL of the GGUF');
  if (!params.has('prompt')) throw new Error('give ?prompt=TEXT');
  const prompt = params.get('prompt');
  const expected = params.has('tokens') ? params.get('tokens').split(',').map((t) => {
    if (!/^\d+$/.test(t.trim())) throw new Error(`?tokens=: ${t} is not a token id`);
    return Number(t);
  }) : null;
  const n = whole('n', 128);
  const threads = whole('threads', 2);
  const ctx = whole('ctx', 4096);

  const packageJson = await (await fetch(new URL('package.json', base))).json();
  const { Wllama } = await import(new URL('esm/index.js', base).href);
  const logs = [];
  report.logs = logs;
  const keep = (level) => (...args) => args[0]?.includes?.('llama_model_loader: - kv') || logs.push(`${level}: ${args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ')}`);
  const logger = { debug: keep('debug'), log: keep('log'), warn: keep('warn'), error: keep('error') };
  const wasmUrl = new URL('esm/wasm/wllama.wasm', base).href;
  const wllama = new Wllama({ default: wasmUrl }, { logger });
  // Compat mode (a non-JSPI, non-memory64 build) would come from a CDN: never here.
  wllama.setCompat(null);

  Object.assign(report, {
    wllama_version: packageJson.version,
    libllama_version: Wllama.getLibllamaVersion(),
    browser: navigator.userAgent,
    hardware_concurrency: navigator.hardwareConcurrency,
    cross_origin_isolated: globalThis.crossOriginIsolated === true,
    jspi: typeof WebAssembly.Suspending === 'function',
    wasm_url: wasmUrl,
    n_threads_asked: threads,
    n_ctx: ctx,
  });

  $('status').textContent = 'fetching the model…';
  const started = performance.now();
  const response = await fetch(modelUrl);
  if (!response.ok) throw new Error(`cannot fetch the model (${modelUrl}): ${response.status}`);
  const blob = await response.blob();
  const fetchedMs = performance.now() - started;
  $('status').textContent = 'loading the model…';
  await wllama.loadModel([blob], {
    n_threads: threads,
    n_ctx: ctx,
    n_gpu_layers: 0, // CPU only: the comparison is wasm SIMD against wasm SIMD
    n_parallel: 1,
  });
  const readyMs = performance.now() - started;
  Object.assign(report, {
    model_bytes: blob.size,
    fetch_ms: fetchedMs,
    ready_ms: readyMs,
    multithread: wllama.isMultithread(),
    n_threads: wllama.getNumThreads(),
    n_vocab: wllama.getModelMetadata().hparams.nVocab,
  });

  const warm = whole('warm', 0);
  if (warm > 0) {
    // A throwaway completion first, so V8 has tiered the hot wasm functions up
    // from its baseline compiler (Liftoff) before the measured one.
    $('status').textContent = 'warming up…';
    const warmStarted = performance.now();
    await wllama.createCompletion({ prompt, max_tokens: warm, temperature: 0, cache_prompt: false });
    report.warm_ms = performance.now() - warmStarted;
  }
  report.warm_tokens = warm;

  $('status').textContent = 'generating…';
  // verbose: each streamed chunk carries its token ids (__verbose.tokens), the last llama.cpp's timings.
  const tokens = [];
  let text = '';
  let firstMs = null;
  let lastMs = null;
  let final = null;
  const begun = performance.now();
  await wllama.createCompletion({
    prompt,
    max_tokens: n,
    temperature: 0,
    cache_prompt: false,
    verbose: true,
    stream: true,
    onData(chunk) {
      const now = performance.now() - begun;
      const ids = chunk.__verbose?.tokens ?? [];
      if (ids.length) {
        firstMs ??= now;
        lastMs = now;
        tokens.push(...ids);
      }
      text += chunk.choices?.[0]?.text ?? '';
      if (chunk.choices?.[0]?.finish_reason) final = chunk;
    },
  });
  const totalMs = performance.now() - begun;
  if (!tokens.length) throw new Error('wllama streamed no tokens');
  const evaluated = final?.usage?.prompt_tokens ?? final?.__verbose?.tokens_evaluated ?? null;
  const timings = final?.timings ?? final?.__verbose?.timings ?? null;
  Object.assign(report, {
    prompt_text: prompt,
    prompt_tokens: expected,
    prompt_tokens_evaluated: evaluated,
    // wllama takes text, not ids: its tokenizer's count must be the ids' count.
    prompt_count_matches: expected ? evaluated === expected.length : null,
    tokens,
    text,
    stop: final?.choices?.[0]?.finish_reason ?? null,
    timings_ms: { prompt: firstMs, generate: lastMs - firstMs, first_token: firstMs, total: totalMs },
    tokens_per_s: {
      prompt: (evaluated ?? expected?.length ?? 0) / Math.max(firstMs / 1e3, 1e-9),
      // The first token comes from the prompt's pass: the rest each cost a forward pass.
      generate: Math.max(tokens.length - 1, 0) / Math.max((lastMs - firstMs) / 1e3, 1e-9),
    },
    llama_cpp_timings: timings,
  });
  if (expected && evaluated !== expected.length) {
    throw new Error(`wllama's tokenizer made ${evaluated} prompt tokens of the text, not the ${expected.length} ids given: the runs would not compare`);
  }
  $('status').textContent = `prompt ${report.tokens_per_s.prompt.toFixed(1)} tok/s, generation ${report.tokens_per_s.generate.toFixed(1)} tok/s`;
}

main().catch((error) => {
  report.error = String(error?.message ?? error);
  report.error_stack = error?.stack ?? null;
  $('error').textContent = report.error;
}).finally(finish);
