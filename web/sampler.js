// The next token from logits, as crates/runtime/src/sample.rs picks it, step
// for step: greedy at temperature 0 (ties to the lowest id, NaN never
// picked), else top-k, top-p, min-p, temperature and a splitmix64 draw, with
// the same f32 and f64 arithmetic, so a seed gives the tab the same text as
// `shardload generate`. The defaults come from the manifest, which takes them
// from the Rust sampler's.

const f32 = Math.fround;
const MASK64 = (1n << 64n) - 1n;

/** Rust's f32::total_cmp for numbers that are not NaN: -0 before +0. */
function totalCmp(a, b) {
  if (a < b) return -1;
  if (a > b) return 1;
  if (a === 0 && b === 0) return (1 / a < 0 ? 0 : 1) - (1 / b < 0 ? 0 : 1);
  return 0;
}

/** A sampler with its random state; `config` is the manifest's `sampler`, overridden as given. */
export class Sampler {
  constructor({ temperature, top_k: topK, top_p: topP, min_p: minP, seed }) {
    this.temperature = f32(temperature);
    this.topK = topK;
    this.topP = f32(topP);
    this.minP = f32(minP);
    this.state = BigInt.asUintN(64, BigInt(seed));
  }

  /** The next token of `logits` (a Float32Array). */
  sample(logits) {
    if (!(this.temperature > 0)) return greedy(logits);
    const candidates = [];
    for (let i = 0; i < logits.length; i += 1) {
      if (!Number.isNaN(logits[i])) candidates.push([i, logits[i]]);
    }
    if (candidates.length === 0) return 0;
    candidates.sort((a, b) => totalCmp(b[1], a[1]) || a[0] - b[0]);
    if (this.topK > 0) candidates.length = Math.min(candidates.length, this.topK);
    const max = candidates[0][1];
    const weights = candidates.map((c) => Math.exp(f32(c[1] - max)));
    const total = weights.reduce((sum, w) => sum + w, 0);
    let keep = candidates.length;
    let cumulative = 0;
    for (let i = 0; i < weights.length; i += 1) {
      cumulative += weights[i] / total;
      if (cumulative >= this.topP) {
        keep = i + 1;
        break;
      }
    }
    const floor = this.minP * weights[0];
    let above = 0;
    while (above < weights.length && weights[above] >= floor) above += 1;
    keep = Math.min(keep, Math.max(above, 1));
    const scaled = candidates.slice(0, keep).map((c) => Math.exp(f32(f32(c[1] - max) / this.temperature)));
    const sum = scaled.reduce((s, w) => s + w, 0);
    let target = this.nextUnit() * sum;
    for (let i = 0; i < keep; i += 1) {
      if (target < scaled[i]) return candidates[i][0];
      target -= scaled[i];
    }
    return candidates[keep - 1][0];
  }

  /** A uniform draw in [0, 1): splitmix64, as the Rust sampler's. */
  nextUnit() {
    this.state = (this.state + 0x9E3779B97F4A7C15n) & MASK64;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & MASK64;
    z ^= z >> 31n;
    return Number(z >> 11n) / 2 ** 53;
  }
}

/** The most likely token, ties to the lowest id; NaN only if all are. */
function greedy(logits) {
  let best = 0;
  for (let i = 0; i < logits.length; i += 1) {
    const l = logits[i];
    if (l > logits[best] || (Number.isNaN(logits[best]) && !Number.isNaN(l))) best = i;
  }
  return best;
}
