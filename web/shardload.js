// The browser host for shardload's guest: the same module wasmtime runs
// (a build whose shard imports are shared memories), given the same
// memories. guest/README.md is the contract this follows: one 64-bit memory
// per shard (exactly the plan's pages) holding the shard's extents, a shared
// 32-bit scratch memory holding the routing tables, and the imports
// {shardload: {scratch, now, shard0, shard1, ...}}. Every memory is shared,
// so the web workers of session.js all read one copy of the weights.
//
// A browser cannot map a file, so each extent is streamed into its shard
// memory chunk by chunk (from a File, from HTTP Range requests, or from the
// cache of cache.js): the only whole copy of a shard is the memory itself.
//
// No build step, no dependencies: an ES module a page imports as it is.

const WASM_PAGE = 65536;
const SCRATCH_MAX_PAGES = 65536;

// Tables (guest/README.md, "Tables in scratch").
const TABLE_MAGIC = 0x54524c53; // "SLRT"
const TABLE_VERSION = 2;
const HEADER_BYTES = 16;
const ROUTE_BYTES = 32;
const TENSOR_BYTES = 32;

// The smallest modules that need each feature: WebAssembly.validate says
// whether this browser has it, before the guest fails with a less helpful
// compile error.
const PROBES = {
  // (memory i64 1)
  memory64: [0, 97, 115, 109, 1, 0, 0, 0, 5, 3, 1, 4, 1],
  // (memory 0) (memory 0)
  multiMemory: [0, 97, 115, 109, 1, 0, 0, 0, 5, 5, 2, 0, 0, 0, 0],
  // (func (result v128) (i8x16.splat (i32.const 0)))
  simd: [0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 8, 1, 6, 0, 65, 0, 253, 15, 11],
  // (func (result v128) (i8x16.relaxed_swizzle (i8x16.splat 1) (i8x16.splat 2)))
  relaxedSimd: [0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15, 65, 2, 253, 15, 253, 128, 2, 11],
};

/** What this browser can do, as far as the guest cares. */
export function detectFeatures() {
  const features = { webAssembly: typeof WebAssembly === 'object' };
  for (const [name, bytes] of Object.entries(PROBES)) {
    features[name] = features.webAssembly && WebAssembly.validate(new Uint8Array(bytes));
  }
  // Shared wasm memories are SharedArrayBuffers: only in cross-origin isolated pages.
  features.sharedMemory = typeof SharedArrayBuffer === 'function' && globalThis.crossOriginIsolated === true;
  return features;
}

/**
 * Why the guest cannot run here, as a sentence for a person, or null.
 * Relaxed SIMD is not required: without it the plain-SIMD guest runs.
 */
export function unsupportedReason(features) {
  const browsers = 'Chrome or Edge 133+, or Firefox 134+';
  if (!features.webAssembly) {
    return `WebAssembly is turned off or missing in this browser (JIT disabled by a flag or a policy?). shardload needs WebAssembly with memory64, multi-memory and SIMD: ${browsers}.`;
  }
  const missing = [];
  if (!features.memory64) missing.push('memory64 (64-bit memories)');
  if (!features.multiMemory) missing.push('multi-memory (one module, several memories)');
  if (!features.simd) missing.push('SIMD128');
  if (missing.length) {
    return `This browser's WebAssembly lacks ${missing.join(', ')}, which shardload's guest needs: use ${browsers}.`;
  }
  if (!globalThis.isSecureContext) {
    return 'This page is not a secure origin, so the browser gives it no shared WebAssembly memories (the guest\'s scratch): open it as http://localhost or http://127.0.0.1 (through an SSH tunnel from another machine), or over HTTPS.';
  }
  if (!features.sharedMemory) {
    return 'This page is not cross-origin isolated, so shared WebAssembly memories (the guest\'s, which its web workers share) are unavailable: open it from `shardload web`, or from a server that sends the COOP and COEP headers (Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp).';
  }
  return null;
}

/** A byte count for people. */
export function human(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/**
 * The routing table, exactly as shard_planner::Router builds it: tensors with
 * bytes, by logical offset; consecutive ones that lie in one shard at a
 * constant distance from their logical offsets share a route.
 */
export function routesOf(plan) {
  const placed = plan.tensors.filter((t) => t.bytes > 0).slice().sort((a, b) => a.logical_offset - b.logical_offset);
  const routes = [];
  for (const t of placed) {
    const end = t.logical_offset + t.bytes;
    const last = routes[routes.length - 1];
    if (last && last.shard === t.shard && t.offset >= last.shard_offset
        && t.offset - last.shard_offset === t.logical_offset - last.logical_start) {
      last.logical_end = Math.max(last.logical_end, end);
      continue;
    }
    routes.push({ logical_start: t.logical_offset, logical_end: end, shard: t.shard, shard_offset: t.offset });
  }
  return routes;
}

/** Where free scratch begins after the tables (64-byte aligned). */
export function scratchFreeOffset(routes, tensors) {
  return Math.ceil((HEADER_BYTES + ROUTE_BYTES * routes + TENSOR_BYTES * tensors) / 64) * 64;
}

/**
 * The tables the guest reads from scratch offset 0, byte for byte what
 * shardload_guest::abi::encode_tables writes. `typeIds` maps a type name
 * (as the plan spells it) to its ggml id; an unknown type gets u32::MAX.
 */
export function encodeTables(plan, typeIds) {
  const routes = routesOf(plan);
  const bytes = new Uint8Array(HEADER_BYTES + ROUTE_BYTES * routes.length + TENSOR_BYTES * plan.tensors.length);
  const view = new DataView(bytes.buffer);
  const u64 = (at, value) => view.setBigUint64(at, BigInt(value), true);
  view.setUint32(0, TABLE_MAGIC, true);
  view.setUint32(4, TABLE_VERSION, true);
  view.setUint32(8, routes.length, true);
  view.setUint32(12, plan.tensors.length, true);
  routes.forEach((r, i) => {
    const at = HEADER_BYTES + i * ROUTE_BYTES;
    u64(at, r.logical_start);
    u64(at + 8, r.logical_end);
    view.setUint32(at + 16, r.shard, true);
    u64(at + 24, r.shard_offset);
  });
  const base = HEADER_BYTES + routes.length * ROUTE_BYTES;
  plan.tensors.forEach((t, i) => {
    const at = base + i * TENSOR_BYTES;
    view.setUint32(at, t.shard, true);
    view.setUint32(at + 4, typeIds[t.type] ?? 0xffffffff, true);
    u64(at + 8, t.offset);
    u64(at + 16, t.bytes);
    u64(at + 24, t.dims[0] ?? 0);
  });
  return { bytes, routes: routes.length };
}

/** A stream's chunks, through a reader (async iteration of streams is recent). */
async function* chunks(stream) {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Model bytes from HTTP Range requests: `files` is [{url, name, size}]. */
export function urlSource(files) {
  return {
    files: files.map((f) => ({ name: f.name ?? f.url, size: f.size })),
    async *read(file, start, length) {
      const { url, name } = files[file];
      const response = await fetch(url, { headers: { Range: `bytes=${start}-${start + length - 1}` } });
      if (response.status !== 206) {
        throw new Error(`${name}: asked for bytes ${start}..${start + length} and the server answered ${response.status} ${response.statusText} instead of 206 Partial Content`);
      }
      yield* chunks(response.body);
    },
  };
}

/** Model bytes from files a person picked (File objects, in split order). */
export function fileSource(picked) {
  return {
    files: picked.map((f) => ({ name: f.name, size: f.size })),
    async *read(file, start, length) {
      yield* chunks(picked[file].slice(start, start + length).stream());
    },
  };
}

/**
 * Refuses a model whose files are not the ones the plan was made from, by
 * count and size (the checksums catch a same-sized other file later).
 */
export function checkSource(plan, source) {
  const planned = plan.model.files;
  const name = (f) => f.path.split('/').pop();
  if (source.files.length !== planned.length) {
    throw new Error(`the plan was made for ${planned.length} file(s) (${planned.map(name).join(', ')}), but ${source.files.length} were given: give the model the plan was made from`);
  }
  planned.forEach((f, k) => {
    const got = source.files[k];
    if (got.size !== f.size) {
      const why = got.size < f.size ? 'it is shorter: truncated, or another model' : 'it is another model';
      throw new Error(`${got.name} is ${got.size.toLocaleString('en')} bytes, but the plan was made for ${name(f)} of ${f.size.toLocaleString('en')} bytes (${why}): give the file the plan was made from, or plan this one with shardload plan`);
    }
  });
}

/**
 * Makes each shard's memory64 memory, exactly the plan's pages, and streams
 * its extents in. `onProgress(copied, total)` follows the bytes.
 */
async function buildShards(plan, source, onProgress) {
  const total = plan.shards.reduce((sum, s) => sum + s.extents.reduce((a, e) => a + e.bytes, 0), 0);
  let copied = 0;
  const shards = [];
  for (const shard of plan.shards) {
    const started = performance.now();
    let memory;
    try {
      // Shared, with its exact size as the maximum: what the guest's shared shard imports declare.
      memory = new WebAssembly.Memory({ initial: BigInt(shard.pages), maximum: BigInt(shard.pages), address: 'i64', shared: true });
    } catch (error) {
      const all = plan.shards.reduce((sum, s) => sum + s.bytes, 0);
      throw new Error(`cannot get ${human(shard.bytes)} of memory for shard ${shard.index} (the tab needs ${human(all)} in all for ${plan.shards.length} shards): the browser said "${error.message}". Close other tabs or use a machine with more memory.`);
    }
    for (const extent of shard.extents.filter((e) => e.bytes > 0)) {
      let at = extent.memory_offset;
      const end = extent.memory_offset + extent.bytes;
      for await (const chunk of source.read(extent.file, extent.file_offset, extent.bytes)) {
        if (at + chunk.byteLength > end) {
          throw new Error(`${source.files[extent.file].name}: more bytes than asked for at offset ${extent.file_offset}`);
        }
        // The shard memory is the destination: no second copy of the shard exists.
        new Uint8Array(memory.buffer, at, chunk.byteLength).set(chunk);
        at += chunk.byteLength;
        copied += chunk.byteLength;
        onProgress(copied, total);
      }
      if (at !== end) {
        throw new Error(`${source.files[extent.file].name}: got ${at - extent.memory_offset} of ${extent.bytes} bytes at offset ${extent.file_offset}: the file is truncated or changed while loading`);
      }
    }
    shards.push({ memory, ms: performance.now() - started });
  }
  return { shards, copied };
}

/**
 * Loads a planned model into memories and instantiates the guest over them.
 *
 * `plan`: the plan file's object. `guests`: {relaxed, plain} URLs of the
 * guest module's two builds. `source`: urlSource or fileSource. `typeIds`:
 * ggml type name -> id. Returns a Guest.
 */
export async function load({ plan, guests, source, typeIds, dot = 'auto', onProgress = () => {} }) {
  const features = detectFeatures();
  const reason = unsupportedReason(features);
  if (reason) throw new Error(reason);
  checkSource(plan, source);
  const useRelaxed = dot === 'auto' ? features.relaxedSimd : dot === 'relaxed';
  const guestUrl = useRelaxed ? guests.relaxed : guests.plain;
  const compiling = fetch(guestUrl).then(async (response) => {
    if (!response.ok) throw new Error(`cannot fetch the guest ${guestUrl}: ${response.status}`);
    return WebAssembly.compile(await response.arrayBuffer());
  });
  // Copying may fail first: the compile's failure, if any, is then not news.
  compiling.catch(() => {});
  const { shards, copied } = await buildShards(plan, source, onProgress);
  const module = await compiling;
  const { bytes: tables, routes } = encodeTables(plan, typeIds);
  const scratch = new WebAssembly.Memory({
    initial: Math.max(1, Math.ceil(tables.length / WASM_PAGE)),
    maximum: SCRATCH_MAX_PAGES,
    shared: true,
  });
  new Uint8Array(scratch.buffer).set(tables);
  // The guest reads the clock only while profiling a program (nanoseconds).
  const imports = { scratch, now: () => performance.now() * 1e6 };
  shards.forEach((s, k) => { imports[`shard${k}`] = s.memory; });
  const instance = await WebAssembly.instantiate(module, { shardload: imports });
  return new Guest(plan, instance, scratch, shards, {
    module,
    copied,
    dot: useRelaxed ? 'relaxed' : 'plain',
    scratchFree: scratchFreeOffset(routes, plan.tensors.length),
    tables,
  });
}

/** One instantiated guest over its shard memories. */
export class Guest {
  constructor(plan, instance, scratch, shards, info) {
    this.plan = plan;
    this.exports = instance.exports;
    this.scratch = scratch;
    this.shards = shards;
    Object.assign(this, info);
  }

  /** XXH64 (seed 0) of tensor `t`'s bytes, read in place, as 16 hex digits. */
  xxh64Tensor(t) {
    return BigInt.asUintN(64, this.exports.xxh64_tensor(t)).toString(16).padStart(16, '0');
  }

  /** Grows scratch to hold `end` bytes. */
  ensureScratch(end) {
    const have = this.scratch.buffer.byteLength;
    if (end > have) this.scratch.grow(Math.ceil((end - have) / WASM_PAGE));
  }

  /**
   * `y = W[first_row .. first_row + rows] · x` for tensor `t`, computed by the
   * guest (scratch layout as the store's: x, then 4n bytes of tmp, then y).
   */
  matvec(t, x, firstRow, rows) {
    const xAt = this.scratchFree;
    const tmpAt = xAt + 4 * x.length;
    const yAt = tmpAt + 4 * x.length;
    this.ensureScratch(yAt + 4 * rows);
    new Float32Array(this.scratch.buffer, xAt, x.length).set(x);
    this.exports.matvec(t, BigInt(firstRow), BigInt(rows), xAt, yAt, tmpAt);
    return new Float32Array(this.scratch.buffer, yAt, rows);
  }
}

/**
 * The decode-step sweep's input, as shardload_bench::sweep::input computes it
 * in f32: x[i] = (i·7919 mod 1000) / 500 − 1 (each step rounded to f32).
 */
export function sweepInput(n) {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i += 1) x[i] = Math.fround(Math.fround(((i * 7919) % 1000) / 500) - 1);
  return x;
}

/**
 * One decode step's matvecs (shardload_bench::sweep): every 2-D weight of a
 * type with a guest kernel, all rows, in plan order. Returns GB/s and, for
 * each weight, output rows [rows[0], rows[1]) clamped to its row count.
 */
export function sweep(guest, kernelTypes, rows) {
  const kernels = new Set(kernelTypes);
  let bytes = 0;
  let ms = 0;
  const samples = [];
  guest.plan.tensors.forEach((t, index) => {
    if (t.dims.length !== 2 || !kernels.has(t.type)) return;
    const [n, count] = t.dims;
    const x = sweepInput(n);
    const started = performance.now();
    const y = guest.matvec(index, x, 0, count);
    ms += performance.now() - started;
    bytes += t.bytes;
    const lo = Math.min(rows[0], count);
    const hi = Math.max(lo, Math.min(rows[1], count));
    samples.push({ tensor: t.name, first_row: lo, y: Array.from(y.subarray(lo, hi)) });
  });
  return { matvecs: samples.length, bytes, ms, gb_per_s: bytes / Math.max(ms / 1e3, 1e-9) / 1e9, rows: samples };
}

/**
 * The tensors to verify: all, or per shard the first, the last and evenly
 * spaced ones between, `sample` in all (as `shardload run --sample`).
 */
export function selectTensors(plan, sample) {
  const chosen = [];
  for (const shard of plan.shards) {
    const tensors = shard.tensors;
    if (sample == null || sample >= tensors.length) {
      chosen.push(...tensors);
      continue;
    }
    let previous = -1;
    for (let i = 0; i < sample; i += 1) {
      const pick = tensors[sample === 1 ? 0 : Math.floor((i * (tensors.length - 1)) / (sample - 1))];
      if (pick !== previous) chosen.push(pick);
      previous = pick;
    }
  }
  return chosen;
}
