//! A session: one guest instance over the shard memories, its activations and
//! KV cache in scratch, and the position reached. The forward pass strings the
//! guest's exports together; the host only lays out buffers and loops.

use anyhow::{Result, bail};
use shardload_gguf::GgufFile;
use shardload_guest::exports;
use shardload_store::{GuestInstance, WeightStore};

use crate::arch::{Architecture, Hyperparameters, ModelTensors};
use crate::pool::{Job, Pool};

/// Tokens evaluated together in one pass over the weights (prompt processing).
const MAX_BATCH: usize = 32;

/// Byte offsets of the buffers in scratch.
#[derive(Clone, Copy, Debug)]
struct Layout {
    x: usize,
    xb: usize,
    q: usize,
    k: usize,
    v: usize,
    att: usize,
    proj: usize,
    gate: usize,
    up: usize,
    logits: usize,
    scores: usize,
    /// Bytes of one thread's `scores` region: attention's score rows for the
    /// query heads that share a KV head, a converted cache row, and one f32 per head.
    scores_bytes: usize,
    tmp: usize,
    /// Bytes of one thread's `tmp` region (thread k's starts at `tmp + k * tmp_bytes`).
    tmp_bytes: usize,
    k_cache: usize,
    v_cache: usize,
    /// Bytes of one layer's K (or V) cache.
    cache_layer: usize,
    end: usize,
}

impl Layout {
    fn new(start: usize, hp: &Hyperparameters, ctx: usize, threads: usize) -> Layout {
        let f = 4;
        let b = MAX_BATCH;
        let q_width = hp.heads * hp.head_dim;
        let kv_width = hp.kv_heads * hp.head_dim;
        let widest = hp.embd.max(hp.ffn).max(q_width);
        let mut at = start.next_multiple_of(64);
        let mut take = |bytes: usize| {
            let here = at;
            at = (at + bytes).next_multiple_of(64);
            here
        };
        let x = take(b * hp.embd * f);
        let xb = take(b * hp.embd * f);
        let q = take(b * q_width * f);
        let k = take(b * kv_width * f);
        let v = take(b * kv_width * f);
        let att = take(b * q_width * f);
        let proj = take(b * hp.embd * f);
        let gate = take(b * hp.ffn * f);
        let up = take(b * hp.ffn * f);
        let logits = take(hp.vocab * f);
        let group = hp.heads / hp.kv_heads;
        let scores_bytes = ((group * ctx + hp.head_dim + group) * f).next_multiple_of(64);
        let scores = take(scores_bytes * threads);
        let tmp_bytes = (b * widest * 2 + widest * 4).next_multiple_of(64);
        let tmp = take(tmp_bytes * threads);
        let cache_layer = ctx * kv_width * 2;
        let k_cache = take(cache_layer * hp.layers);
        let v_cache = take(cache_layer * hp.layers);
        Layout {
            x,
            xb,
            q,
            k,
            v,
            att,
            proj,
            gate,
            up,
            logits,
            scores,
            scores_bytes,
            tmp,
            tmp_bytes,
            k_cache,
            v_cache,
            cache_layer,
            end: at,
        }
    }
}

/// A model loaded into a guest, with its KV cache.
pub struct Session {
    guest: GuestInstance,
    pool: Pool,
    hp: Hyperparameters,
    tensors: ModelTensors,
    layout: Layout,
    ctx: usize,
    /// Tokens evaluated so far (the KV cache holds them).
    tokens: Vec<u32>,
}

impl Session {
    /// Instantiates a guest from `store` (one per thread, all sharing one
    /// scratch memory) and lays out scratch for a context of `ctx` tokens.
    /// `file` is the model's first GGUF file (its metadata).
    pub fn new(
        store: &WeightStore,
        file: &GgufFile,
        ctx: usize,
        threads: usize,
    ) -> Result<Session> {
        let hp = Hyperparameters::read(file)?;
        if ctx == 0 {
            bail!("--ctx must be at least 1");
        }
        let tensors = ModelTensors::find(store.plan(), &hp)?;
        if threads == 0 || threads > 256 {
            bail!("--threads must be between 1 and 256, not {threads}");
        }
        let (mut guest, _) = store.instantiate()?;
        let layout = Layout::new(guest.scratch_free(), &hp, ctx, threads);
        if layout.end > u32::MAX as usize {
            bail!(
                "a context of {ctx} tokens needs {:.1} GiB of guest memory, past the 4 GiB of a 32-bit memory; use a smaller --ctx",
                layout.end as f64 / f64::from(1 << 30)
            );
        }
        guest.ensure_scratch(layout.end)?;
        let workers = (1..threads)
            .map(|_| store.instantiate_sharing(&guest))
            .collect::<Result<Vec<_>>>()?;
        Ok(Session {
            guest,
            pool: Pool::new(workers)?,
            hp,
            tensors,
            layout,
            ctx,
            tokens: Vec::new(),
        })
    }

    /// The model's hyperparameters.
    pub fn hyperparameters(&self) -> &Hyperparameters {
        &self.hp
    }

    /// The context size in tokens.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    /// Bytes of guest scratch memory this session uses (activations and KV cache).
    pub fn scratch_bytes(&self) -> usize {
        self.layout.end
    }

    /// Starts counting time per guest export on this thread's instance (with
    /// one thread, that is all the model's work).
    pub fn set_profiling(&mut self, on: bool) {
        self.guest.set_profiling(on);
    }

    /// Calls and time per export since profiling started, slowest first.
    pub fn profile(&self) -> Vec<(&'static str, u64, std::time::Duration)> {
        self.guest.profile()
    }

    /// Forgets every token from `position` on (the cache keeps the prefix).
    pub fn truncate(&mut self, position: usize) {
        self.tokens.truncate(position);
    }

    /// Evaluates `tokens` after the ones already in the cache and returns the
    /// logits after the last of them. Batches of up to 32 tokens go through
    /// each layer together.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            bail!("nothing to evaluate: the prompt is empty");
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.hp.vocab) {
            bail!(
                "token id {bad} is out of range: the vocabulary has {} tokens",
                self.hp.vocab
            );
        }
        if self.tokens.len() + tokens.len() > self.ctx {
            bail!(
                "the context is full: {} tokens in the cache + {} new > --ctx {}",
                self.tokens.len(),
                tokens.len(),
                self.ctx
            );
        }
        for chunk in tokens.chunks(MAX_BATCH) {
            self.forward(chunk)?;
            self.tokens.extend_from_slice(chunk);
        }
        let (hp, l) = (&self.hp, self.layout);
        let last = l.x + (tokens.len() - 1) % MAX_BATCH * hp.embd * 4;
        let (eps, norm, output, vocab, embd) = (
            hp.rms_eps,
            self.tensors.output_norm,
            self.tensors.output,
            hp.vocab,
            hp.embd,
        );
        self.call_norm(last, 1, embd, eps, norm, l.xb)?;
        self.matmul(output, vocab, l.xb, 1, l.logits, vocab)?;
        Ok(self.guest.read_f32s(l.logits, vocab))
    }

    /// One batch through every layer, leaving the residual stream in `x`.
    fn forward(&mut self, batch: &[u32]) -> Result<()> {
        let hp = self.hp.clone();
        let l = self.layout;
        let n = batch.len();
        let pos0 = self.tokens.len();
        let (q_width, kv_width) = (hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim);
        for (b, &token) in batch.iter().enumerate() {
            let args = (
                self.tensors.embd,
                i64::from(token),
                1i64,
                (l.x + b * hp.embd * 4) as i32,
            );
            self.guest.call(exports::DEQUANTIZE, args, || {
                format!("embedding row {token}")
            })?;
        }
        let gemma = hp.arch == Architecture::Gemma3;
        if gemma {
            // Gemma scales the embeddings by sqrt(n_embd) (f32, as ggml_scale).
            let args = (l.x as i32, (n * hp.embd) as i32, (hp.embd as f32).sqrt());
            self.guest
                .call(exports::SCALE, args, || "embedding scale".into())?;
        }
        let scale = hp.attention_scale;
        for layer in 0..self.tensors.layers.len() {
            let t = self.tensors.layers[layer];
            let what = || format!("layer {layer}");
            let (window, rope_base) = hp.layer_attention[layer];
            let k_cache = (l.k_cache + layer * l.cache_layer) as i32;
            let v_cache = (l.v_cache + layer * l.cache_layer) as i32;
            self.call_norm(l.x, n, hp.embd, hp.rms_eps, t.attn_norm, l.xb)?;
            self.matmul(t.q, q_width, l.xb, n, l.q, q_width)?;
            self.matmul(t.k, kv_width, l.xb, n, l.k, kv_width)?;
            self.matmul(t.v, kv_width, l.xb, n, l.v, kv_width)?;
            if gemma {
                // Per-head RMSNorm of queries and keys.
                self.call_norm(l.q, n * hp.heads, hp.head_dim, hp.rms_eps, t.q_norm, l.q)?;
                self.call_norm(l.k, n * hp.kv_heads, hp.head_dim, hp.rms_eps, t.k_norm, l.k)?;
            }
            for (at, heads) in [(l.q, hp.heads), (l.k, hp.kv_heads)] {
                let args = (
                    at as i32,
                    n as i32,
                    heads as i32,
                    hp.head_dim as i32,
                    pos0 as i32,
                    rope_base,
                    i32::from(gemma),
                    self.tensors.rope_factors,
                );
                self.guest.call(exports::ROPE, args, what)?;
            }
            let args = (
                l.k as i32,
                l.v as i32,
                n as i32,
                kv_width as i32,
                k_cache,
                v_cache,
                pos0 as i32,
            );
            self.guest.call(exports::STORE_KV, args, what)?;
            // Query heads shared out among the threads, each with its own scores.
            let threads = self.pool.threads();
            let jobs: Vec<Job> = (0..threads)
                .map(|k| {
                    let args = (
                        l.q as i32,
                        n as i32,
                        pos0 as i32,
                        hp.heads as i32,
                        hp.kv_heads as i32,
                        hp.head_dim as i32,
                        k_cache,
                        v_cache,
                        scale,
                        window as i32,
                        (l.scores + k * l.scores_bytes) as i32,
                        l.att as i32,
                        (hp.heads * k / threads) as i32,
                        (hp.heads * (k + 1) / threads) as i32,
                    );
                    Box::new(move |guest: &mut GuestInstance| {
                        guest.call(exports::ATTENTION, args, || format!("layer {layer}"))
                    }) as Job
                })
                .collect();
            self.pool.run(&mut self.guest, jobs)?;
            self.matmul(t.o, hp.embd, l.att, n, l.proj, hp.embd)?;
            if gemma {
                self.call_norm(
                    l.proj,
                    n,
                    hp.embd,
                    hp.rms_eps,
                    t.post_attention_norm,
                    l.proj,
                )?;
            }
            self.add(l.x, l.proj, n * hp.embd)?;
            self.call_norm(l.x, n, hp.embd, hp.rms_eps, t.ffn_norm, l.xb)?;
            self.matmul(t.gate, hp.ffn, l.xb, n, l.gate, hp.ffn)?;
            self.matmul(t.up, hp.ffn, l.xb, n, l.up, hp.ffn)?;
            let args = (
                l.gate as i32,
                l.up as i32,
                (n * hp.ffn) as i32,
                l.gate as i32,
            );
            let activation = if gemma {
                exports::GELU_MUL
            } else {
                exports::SILU_MUL
            };
            self.guest.call(activation, args, what)?;
            self.matmul(t.down, hp.embd, l.gate, n, l.proj, hp.embd)?;
            if gemma {
                self.call_norm(l.proj, n, hp.embd, hp.rms_eps, t.post_ffn_norm, l.proj)?;
            }
            self.add(l.x, l.proj, n * hp.embd)?;
        }
        Ok(())
    }

    fn call_norm(
        &mut self,
        x: usize,
        rows: usize,
        n: usize,
        eps: f32,
        weight: i32,
        out: usize,
    ) -> Result<()> {
        let args = (x as i32, rows as i32, n as i32, eps, weight, out as i32);
        self.guest
            .call(exports::RMS_NORM, args, || format!("tensor {weight}"))
    }

    /// `Y[b] = W · X[b]` for `batch` inputs at `x`, all `rows` rows of W.
    /// `Y[b] = W · X[b]` for `batch` inputs at `x`, all `rows` rows of W,
    /// the rows split evenly among the threads (each with its own `tmp`).
    fn matmul(
        &mut self,
        weight: i32,
        rows: usize,
        x: usize,
        batch: usize,
        y: usize,
        y_stride: usize,
    ) -> Result<()> {
        let threads = self.pool.threads();
        let jobs: Vec<Job> = (0..threads)
            .map(|k| {
                let (first, end) = (rows * k / threads, rows * (k + 1) / threads);
                let args = (
                    weight,
                    first as i64,
                    (end - first) as i64,
                    x as i32,
                    batch as i32,
                    (y + first * 4) as i32,
                    y_stride as i32,
                    (self.layout.tmp + k * self.layout.tmp_bytes) as i32,
                );
                Box::new(move |guest: &mut GuestInstance| {
                    guest.call(exports::MATMUL, args, || format!("tensor {weight}"))
                }) as Job
            })
            .collect();
        self.pool.run(&mut self.guest, jobs)
    }

    fn add(&mut self, a: usize, b: usize, n: usize) -> Result<()> {
        self.guest.call(
            exports::ADD,
            (a as i32, b as i32, n as i32, a as i32),
            || "residual".into(),
        )
    }
}
