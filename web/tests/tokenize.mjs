// Checks web/tokenizer.js in headless Chromium (Debian's, through
// playwright-core) against llama.cpp's ids: every DATA_DIR/*.json (written by
// `Tokenizer::to_json`) that has a committed reference is loaded in the tab
// (tests/tokenize.html) and every case encoded with special tokens parsed and
// not. Prints one JSON line:
//
//   {chromium, vocabularies, cases, mismatches: [first 20], ms, ...}
//
// `cases` counts (vocabulary, case) pairs, each encoded both ways
// (`encodings`). Exits 0 even on mismatches (the Rust test asserts); 1 only
// when the harness itself fails.
//
//   node web/tests/tokenize.mjs DATA_DIR

import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serveStatic } from './static-server.mjs';

const WEB = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const REFERENCES = resolve(WEB, '../tests/reference');

/**
 * The reference of a tokenizer JSON by its file name, as
 * crates/tokenizer/tests/llama_cpp_agreement.rs pairs them: the real models
 * (tests/support/lib.rs names their files) have their own; a vocabulary of
 * models/vocab/NAME.gguf has vocab/tokenize-NAME.json. Null: no reference.
 */
function referenceFor(jsonFile) {
  const stem = jsonFile.replace(/\.json$/, '');
  const models = {
    'SmolLM2-135M-Instruct.Q4_1': 'tokenize-smollm2.json',
    'gemma-3-270m-q4_k_m': 'tokenize-gemma3.json',
    'qwen2.5-coder-1.5b-instruct-q4_k_m': 'tokenize-qwen2-coder.json',
  };
  const reference = models[stem] ?? `vocab/tokenize-${stem}.json`;
  return existsSync(join(REFERENCES, reference)) ? reference : null;
}

const dataDir = process.argv[2];
if (!dataDir || process.argv.length > 3) {
  process.stderr.write('usage: node web/tests/tokenize.mjs DATA_DIR\n');
  process.exit(1);
}

const started = performance.now();
let server = null;
let browser = null;
let exitCode = 0;
try {
  const files = readdirSync(dataDir).filter((f) => f.endsWith('.json')).sort();
  const vocabularies = [];
  const skipped = [];
  for (const file of files) {
    const reference = referenceFor(file);
    if (reference === null) skipped.push(file);
    else vocabularies.push({ name: file.replace(/\.json$/, ''), data: `/data/${file}`, reference: `/ref/${reference}` });
  }
  if (vocabularies.length === 0) throw new Error(`no tokenizer JSON in ${dataDir} has a reference in ${REFERENCES}`);

  server = await serveStatic({ '/': WEB, '/data/': resolve(dataDir), '/ref/': REFERENCES });
  // As drive.mjs: Playwright gives Chromium a new, empty profile of its own.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${server.url}/tests/tokenize.html`);
  await page.waitForFunction(() => typeof window.checkTokenizers === 'function', null, { timeout: 30e3 })
    .catch(() => { throw new Error(`tokenize.html did not start: ${pageErrors.join('; ') || 'no checkTokenizers'}`); });
  const report = await page.evaluate(
    ([list, casesUrl]) => window.checkTokenizers(list, casesUrl),
    [vocabularies, '/ref/tokenize-cases.json'],
  );
  if (pageErrors.length > 0) throw new Error(`page errors: ${pageErrors.join('; ')}`);
  const { vocabularies: n, cases, mismatches, ...rest } = report;
  const line = { chromium: browser.version(), vocabularies: n, cases, mismatches, ms: Math.round(performance.now() - started), ...rest, skipped };
  process.stdout.write(`${JSON.stringify(line)}\n`);
} catch (error) {
  process.stderr.write(`tokenize.mjs: ${error.message}\n`);
  exitCode = 1;
} finally {
  await browser?.close();
  await server?.close();
}
process.exit(exitCode);
