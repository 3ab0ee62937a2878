// One guest thread in a web worker: its own instance of the guest over the
// page's shared memories (the scratch and every shard: one copy of the
// weights for all workers). For each batch the page posts {program, barrier},
// the worker enters the guest's `forward` export as thread `thread` of
// `threads`, and the threads meet at the guest's own barriers inside; a
// barrier may park in memory.atomic.wait32, which a page's main thread may
// not do, so every thread of the forward pass is a worker.
//
// Messages in: {init: {module, scratch, shards, thread, threads, barrierAbort,
// barrierGeneration}}, then {program, barrier} per batch. Out: {ready} once,
// then {done: true, aborted} or {error} per batch.

let guest = null;
let thread = 0;
let threads = 1;
let offsets = null;
let scratch = null;

/** Raises the barrier's abort flag and wakes the others: they return instead of waiting for this thread. */
function abortBarrier(barrier) {
  const words = new Int32Array(scratch.buffer);
  Atomics.store(words, (barrier + offsets.abort) / 4, 1);
  Atomics.add(words, (barrier + offsets.generation) / 4, 1);
  Atomics.notify(words, (barrier + offsets.generation) / 4);
}

self.onmessage = async ({ data }) => {
  if (data.init) {
    try {
      const init = data.init;
      ({ thread, threads, scratch } = init);
      offsets = { abort: init.barrierAbort, generation: init.barrierGeneration };
      const imports = { scratch, now: () => performance.now() * 1e6 };
      init.shards.forEach((memory, k) => { imports[`shard${k}`] = memory; });
      guest = await WebAssembly.instantiate(init.module, { shardload: imports });
      self.postMessage({ ready: true });
    } catch (error) {
      self.postMessage({ error: `worker ${data.init.thread} cannot instantiate the guest: ${error.message}` });
    }
    return;
  }
  try {
    const aborted = guest.exports.forward(data.program, thread, threads);
    self.postMessage({ done: true, aborted: aborted !== 0 });
  } catch (error) {
    // This thread's trap is the error to report; the others are released.
    abortBarrier(data.barrier);
    self.postMessage({ error: `thread ${thread}: ${error.message}` });
  }
};
