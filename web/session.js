// A conversation's forward passes in the tab: the program `shardload web`
// built (the same bytes the wasmtime host writes) in the guest's scratch, T
// web workers each running the guest's `forward` export over the shared
// memories, and one sequence's tokens and KV cache. What
// crates/runtime/src/session.rs does for one sequence, from the same
// manifest offsets: batches of up to max_batch tokens, the logits of each
// batch's last token, and truncation that keeps what a sliding-window ring
// still holds. The page's main thread never blocks: it posts a batch and
// awaits the workers.

/** The guest's forward pass on `threads` web workers over the memories of `guest` (shardload.js's load). */
export class Session {
  /**
   * `manifest`: the site's manifest (program layout and ABI offsets).
   * `program`: the program's bytes. `threads`: 1..manifest.program.max_workers.
   */
  static async create({ manifest, guest, program, threads, workerUrl = new URL('./worker.js', import.meta.url) }) {
    const layout = manifest.program;
    if (!Number.isInteger(threads) || threads < 1 || threads > layout.max_workers) {
      throw new Error(`workers must be between 1 and ${layout.max_workers}, not ${threads}`);
    }
    guest.ensureScratch(layout.end);
    new Uint8Array(guest.scratch.buffer, layout.at, program.byteLength).set(program);
    const workers = [];
    try {
      for (let thread = 0; thread < threads; thread += 1) {
        const worker = new Worker(workerUrl, { type: 'module', name: `shardload guest thread ${thread}` });
        workers.push(worker);
        const ready = reply(worker);
        worker.postMessage({
          init: {
            module: guest.module,
            scratch: guest.scratch,
            shards: guest.shards.map((s) => s.memory),
            thread,
            threads,
            barrierAbort: manifest.abi.barrier.abort,
            barrierGeneration: manifest.abi.barrier.generation,
          },
        });
        const answer = await ready;
        if (answer.error) throw new Error(answer.error);
      }
    } catch (error) {
      workers.forEach((w) => w.terminate());
      throw error;
    }
    return new Session(manifest, guest, workers);
  }

  constructor(manifest, guest, workers) {
    this.layout = manifest.program;
    this.abi = manifest.abi;
    this.guest = guest;
    this.workers = workers;
    this.tokens = [];
    this.cached = 0;
    this.written = 0;
  }

  /** Tokens each conversation can hold. */
  get ctx() { return this.layout.ctx; }

  /** Tokens in the sequence. */
  get position() { return this.tokens.length; }

  /** Web workers running the forward pass. */
  get threads() { return this.workers.length; }

  /** Stops the workers (their guest instances go with them). */
  close() {
    this.workers.forEach((w) => w.terminate());
    this.workers = [];
  }

  /**
   * Forgets the tokens from `position` on. Where a sliding-window ring no
   * longer holds what the next token needs, the kept prefix is evaluated
   * again with the next batch (as the Rust session does).
   */
  truncate(position) {
    this.tokens.length = Math.min(this.tokens.length, Math.max(0, position));
    const kept = this.tokens.length;
    if (this.cached > kept) {
      const holds = this.layout.rings.every(([capacity, window]) =>
        Math.max(0, kept - (window - 1)) >= Math.max(0, this.written - capacity));
      if (holds) {
        this.cached = kept;
      } else {
        this.cached = 0;
        this.written = 0;
      }
    }
  }

  /** Evaluates `tokens` after the sequence's and resolves to the logits after the last (a Float32Array copy). */
  async eval(tokens) {
    const { vocab, ctx } = this.layout;
    if (tokens.length === 0) throw new Error('nothing to evaluate: the prompt is empty');
    const bad = tokens.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
    if (bad !== undefined) throw new Error(`token id ${bad} is out of range: the vocabulary has ${vocab} tokens`);
    if (this.tokens.length + tokens.length > ctx) {
      throw new Error(`the context is full: ${this.tokens.length} tokens in the cache + ${tokens.length} new > ctx ${ctx}`);
    }
    const work = this.tokens.slice(this.cached).concat(tokens);
    const start = this.cached;
    let logits = null;
    try {
      for (let at = 0; at < work.length; at += this.abi.max_batch) {
        const chunk = work.slice(at, at + this.abi.max_batch);
        const last = at + chunk.length === work.length;
        this.writeBatch(chunk, start + at, last);
        await this.forward();
        if (last) logits = new Float32Array(this.guest.scratch.buffer, this.layout.logits, vocab).slice();
      }
    } catch (error) {
      if (this.layout.rings.length) {
        // A failed batch may have overwritten ring positions the prefix still needs.
        this.cached = 0;
        this.written = 0;
      }
      throw error;
    }
    this.tokens.push(...tokens);
    this.cached = this.tokens.length;
    this.written = Math.max(this.written, this.cached);
    return logits;
  }

  /** The batch descriptor: ids, sequence slot 0, positions, and the last row's logits if wanted. */
  writeBatch(chunk, position, wantLogits) {
    const b = this.abi.batch;
    const view = new DataView(this.guest.scratch.buffer, this.layout.batch, b.size);
    new Uint8Array(this.guest.scratch.buffer, this.layout.batch, b.size).fill(0);
    view.setUint32(b.tokens, chunk.length, true);
    view.setUint32(b.outputs, wantLogits ? 1 : 0, true);
    chunk.forEach((token, row) => {
      view.setUint32(b.ids + 4 * row, token, true);
      view.setUint32(b.seqs + 4 * row, 0, true);
      view.setUint32(b.positions + 4 * row, position + row, true);
    });
    if (wantLogits) view.setUint32(b.output_rows, chunk.length - 1, true);
  }

  /** One batch through every worker; the first real error wins, and an aborted barrier is reset. */
  async forward() {
    const { at, barrier } = this.layout;
    const answers = await Promise.all(this.workers.map((worker) => {
      const answer = reply(worker);
      worker.postMessage({ program: at, barrier });
      return answer;
    }));
    const failed = answers.find((a) => a.error);
    if (failed || answers.some((a) => a.aborted)) {
      const words = new Int32Array(this.guest.scratch.buffer);
      Atomics.store(words, (barrier + this.abi.barrier.count) / 4, 0);
      Atomics.store(words, (barrier + this.abi.barrier.abort) / 4, 0);
      throw new Error(failed ? `the forward pass failed in ${failed.error}` : 'the forward pass was aborted');
    }
  }
}

/** The worker's next message. */
function reply(worker) {
  return new Promise((resolve) => {
    const done = (answer) => {
      worker.removeEventListener('message', onMessage);
      worker.removeEventListener('error', onError);
      resolve(answer);
    };
    const onMessage = ({ data }) => done(data);
    const onError = (event) => done({ error: `a worker failed: ${event.message || 'no message (did worker.js load?)'}` });
    worker.addEventListener('message', onMessage);
    worker.addEventListener('error', onError);
  });
}
