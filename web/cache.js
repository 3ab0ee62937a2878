// The model's bytes kept in the Origin Private File System, so a reload
// copies them from disk instead of downloading them again. Entries are
// keyed by what the plan says of each model file (its fingerprint and size,
// which change when the file does) and by the extent (offset and length):
// a changed file is a different key and is never taken from the cache. An
// entry is written through a writable stream that the browser commits only
// when it is closed, so an interrupted download leaves nothing behind.
//
// No storage, or a quota refused, is not fatal: the model loads from the
// network as before, and `stats.error` says, in words, why it was not kept.

const ROOT = 'shardload-cache';

/** A key that is a valid file name. */
const safe = (text) => String(text).replace(/[^A-Za-z0-9._-]/g, '-');

/** Why a write failed, for people. */
function storageError(error, bytes) {
  if (error && error.name === 'QuotaExceededError') {
    return `the browser's storage quota refused to keep ${bytes.toLocaleString('en')} more bytes of the model (${error.message}): it loads from the network each time; free space in this browser, or clear the cache`;
  }
  return `the model cannot be kept in this browser's storage (${error?.name ?? 'Error'}: ${error?.message ?? error}): it loads from the network each time`;
}

/** The cache, or null where this browser has no Origin Private File System. */
export async function openCache() {
  if (!globalThis.navigator?.storage?.getDirectory) return null;
  try {
    const root = await navigator.storage.getDirectory();
    return new ModelCache(root);
  } catch {
    return null;
  }
}

/** The Origin Private File System folder of cached model extents. */
export class ModelCache {
  constructor(root) {
    this.root = root;
  }

  /** The folder of one model file (by the plan's fingerprint and size). */
  async folder(file, create) {
    const top = await this.root.getDirectoryHandle(ROOT, { create });
    return top.getDirectoryHandle(safe(`${file.fingerprint}-${file.size}`), { create });
  }

  /** Removes every cached model. */
  async clear() {
    try {
      await this.root.removeEntry(ROOT, { recursive: true });
    } catch (error) {
      if (error.name !== 'NotFoundError') throw error;
    }
  }

  /** Bytes this origin stores and may store ({usage, quota}, from navigator.storage.estimate). */
  async estimate() {
    return navigator.storage.estimate();
  }

  /**
   * `source` (shardload.js's urlSource) through the cache: each extent from
   * the cache when it holds it whole, else from `source`, kept as it passes.
   * `plan` names the model files; `stats` counts {from_cache, from_network}
   * bytes and holds the first storage `error`.
   */
  through(source, plan, stats) {
    Object.assign(stats, { from_cache: 0, from_network: 0, error: null });
    const cache = this;
    return {
      files: source.files,
      async *read(file, start, length) {
        const planned = plan.model.files[file];
        const entry = `${start}-${length}`;
        let folder = null;
        try {
          folder = await cache.folder(planned, true);
          const cached = await (await folder.getFileHandle(entry)).getFile();
          if (cached.size === length) {
            const reader = cached.stream().getReader();
            for (;;) {
              const { done, value } = await reader.read();
              if (done) break;
              stats.from_cache += value.byteLength;
              yield value;
            }
            return;
          }
        } catch (error) {
          if (error.name !== 'NotFoundError' && !stats.error) stats.error = storageError(error, length);
        }
        let writable = null;
        if (folder && !stats.error) {
          try {
            writable = await (await folder.getFileHandle(entry, { create: true })).createWritable();
          } catch (error) {
            stats.error = storageError(error, length);
          }
        }
        let got = 0;
        let complete = false;
        try {
          for await (const chunk of source.read(file, start, length)) {
            stats.from_network += chunk.byteLength;
            got += chunk.byteLength;
            if (writable) {
              try {
                await writable.write(chunk);
              } catch (error) {
                stats.error = storageError(error, length);
                await writable.abort().catch(() => {});
                writable = null;
              }
            }
            yield chunk;
          }
          // A short answer (a truncated file) is not kept.
          complete = got === length;
        } finally {
          if (writable) {
            if (complete) {
              await writable.close().catch((error) => { stats.error = storageError(error, length); });
            } else {
              await writable.abort().catch(() => {});
            }
          }
        }
      },
    };
  }
}
