// A static file server for the browser tests: serves directories under URL
// prefixes on 127.0.0.1, cross-origin isolated (shared memories need it), never
// cached, with HTTP Range requests, and counts the body bytes it sends per
// prefix, so a test can prove that a reload fetched nothing. Only node:http
// and node:fs: the tests need nothing installed but playwright-core.

import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join } from 'node:path';

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.css': 'text/css; charset=utf-8',
};

/**
 * Serves `routes` (URL path prefix -> directory, e.g. {'/': 'web', '/data/':
 * '/tmp/tokjson'}; the longest matching prefix wins, a path ending in `/`
 * gets its index.html) until `close()`. Why a server and not file URLs:
 * module imports, fetch, COOP/COEP and Range requests behave in the browser
 * as they do in production only over HTTP.
 *
 * Range: one `bytes=a-b`, `bytes=a-` or `bytes=-n` gets 206 with that part;
 * anything else in a Range header (malformed, several ranges, past the end)
 * gets 416, since a test asking for it has a bug. A path with a `..` segment gets 400.
 *
 * `isolate: false` leaves out COOP and COEP, for the test of a page served
 * without them.
 *
 * @param {Record<string, string>} routes
 * @param {{isolate?: boolean}} options
 * @returns {Promise<{url: string, bytesServed(prefix?: string): number, close(): Promise<void>}>}
 *   `url` has no trailing slash; `bytesServed(prefix)` is the body bytes sent
 *   for that route so far (all routes without a prefix).
 */
export async function serveStatic(routes, { isolate = true } = {}) {
  const prefixes = Object.keys(routes).sort((a, b) => b.length - a.length);
  const served = new Map(prefixes.map((prefix) => [prefix, 0]));
  const server = createServer((request, response) => {
    respond(request, response).catch((error) => {
      if (!response.headersSent) send(response, 500, String(error?.message ?? error));
      else response.destroy();
    });
  });

  async function respond(request, response) {
    if (request.method !== 'GET' && request.method !== 'HEAD') return send(response, 405, 'GET or HEAD only');
    // The path as sent: a URL parser would resolve `..` away before it could be refused.
    let path;
    try {
      path = decodeURIComponent(request.url.replace(/[?#].*/s, ''));
    } catch {
      return send(response, 400, 'bad path');
    }
    if (!path.startsWith('/') || path.includes('\0')) return send(response, 400, 'bad path');
    if (path.split('/').includes('..')) return send(response, 400, 'no .. in paths');
    const prefix = prefixes.find((p) => path.startsWith(p));
    if (prefix === undefined) return send(response, 404, 'no route');
    const file = join(routes[prefix], path.slice(prefix.length) + (path.endsWith('/') ? 'index.html' : ''));
    const info = await stat(file).catch(() => null);
    if (!info?.isFile()) return send(response, 404, 'not found');

    let [start, end, status] = [0, info.size - 1, 200];
    const headers = {
      'Content-Type': CONTENT_TYPES[extname(file)] ?? 'application/octet-stream',
      'Accept-Ranges': 'bytes',
    };
    const range = request.headers.range;
    if (range !== undefined) {
      const parsed = parseRange(range, info.size);
      if (parsed === null) return send(response, 416, 'bad range', { 'Content-Range': `bytes */${info.size}` });
      [start, end, status] = [...parsed, 206];
      headers['Content-Range'] = `bytes ${start}-${end}/${info.size}`;
    }
    headers['Content-Length'] = String(end - start + 1);
    response.writeHead(status, { ...isolation(isolate), ...headers });
    if (request.method === 'HEAD' || end < start) return response.end();
    const body = createReadStream(file, { start, end });
    body.on('data', (chunk) => served.set(prefix, served.get(prefix) + chunk.length));
    body.on('error', () => response.destroy());
    body.pipe(response);
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    bytesServed(prefix) {
      if (prefix === undefined) return [...served.values()].reduce((a, b) => a + b, 0);
      if (!served.has(prefix)) throw new Error(`no route ${prefix} (routes: ${prefixes.join(', ')})`);
      return served.get(prefix);
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** The headers every answer carries: cross-origin isolated (unless not asked), never cached. */
function isolation(isolate) {
  return isolate
    ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp', 'Cache-Control': 'no-store' }
    : { 'Cache-Control': 'no-store' };
}

function send(response, status, message, headers = {}, isolate = true) {
  response.writeHead(status, { ...isolation(isolate), 'Content-Type': 'text/plain; charset=utf-8', ...headers });
  response.end(`${message}\n`);
}

/** One satisfiable byte range of a file of `size` bytes as [first, last], or null. */
function parseRange(header, size) {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (match === null || (match[1] === '' && match[2] === '')) return null;
  let first;
  let last;
  if (match[1] === '') {
    // The last n bytes.
    const n = Number(match[2]);
    if (n === 0) return null;
    [first, last] = [Math.max(0, size - n), size - 1];
  } else {
    first = Number(match[1]);
    last = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
  }
  return first < size && first <= last ? [first, last] : null;
}
