//! The forward pass as a program the guest runs. An architecture file emits
//! operations over named buffers and tensor names ([`ProgramBuilder`]); the
//! builder checks every tensor (present, the expected dims, a type the guest
//! has kernels for), lays out scratch (the program, the batch descriptor,
//! the buffers, each thread's working space and each attention's KV cache)
//! and encodes the operations as guest/README.md ("The program") describes.
//! Every host then writes the same bytes and enters the same export.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Result, anyhow, bail};
use shard_planner::Plan;
use shardload_gguf::GgmlType;
use shardload_guest::KERNEL_TYPES;
use shardload_guest::program::{
    self as abi, MAX_BATCH, OP_BYTES, Opcode, PROFILE_ENTRY_BYTES, Rows, header,
};

use crate::arch::Hyperparameters;

/// The activations a forward pass works in, one row per token of the batch
/// (or per output row, for [`Buffer::Outputs`] and [`Buffer::Logits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Buffer {
    /// The residual stream (embedding width): what a layer range takes in and hands out.
    Residual,
    /// A normed copy of the residual stream.
    Normed,
    /// Queries, `heads × head_dim`.
    Query,
    /// Keys, `kv_heads × head_dim`.
    Key,
    /// Values, `kv_heads × head_dim`.
    Value,
    /// Attention's output, `heads × head_dim`.
    Attended,
    /// A block's output before it joins the residual stream (embedding width).
    Projected,
    /// The FFN's gate (then its activation), FFN width.
    Gate,
    /// The FFN's up projection, FFN width.
    Up,
    /// The residual rows whose logits are wanted, gathered (embedding width).
    Outputs,
    /// Logits of the output rows.
    Logits,
}

const BUFFERS: [Buffer; 11] = [
    Buffer::Residual,
    Buffer::Normed,
    Buffer::Query,
    Buffer::Key,
    Buffer::Value,
    Buffer::Attended,
    Buffer::Projected,
    Buffer::Gate,
    Buffer::Up,
    Buffer::Outputs,
    Buffer::Logits,
];

impl Buffer {
    /// f32 values per row.
    fn width(self, hp: &Hyperparameters) -> usize {
        match self {
            Buffer::Residual | Buffer::Normed | Buffer::Projected | Buffer::Outputs => hp.embd,
            Buffer::Query | Buffer::Attended => hp.heads * hp.head_dim,
            Buffer::Key | Buffer::Value => hp.kv_heads * hp.head_dim,
            Buffer::Gate | Buffer::Up => hp.ffn,
            Buffer::Logits => hp.vocab,
        }
    }

    fn rows(self) -> Rows {
        match self {
            Buffer::Outputs | Buffer::Logits => Rows::Outputs,
            _ => Rows::Tokens,
        }
    }

    /// Heads per row, for the buffers RoPE and per-head norms work on.
    fn heads(self, hp: &Hyperparameters) -> Result<usize> {
        match self {
            Buffer::Query => Ok(hp.heads),
            Buffer::Key => Ok(hp.kv_heads),
            other => bail!("{other:?} has no heads"),
        }
    }
}

/// Rotary position embedding's parameters for one layer.
pub(crate) struct Rope<'a> {
    /// The frequency base.
    pub base: f32,
    /// NEOX mode (pairs are split halves) rather than adjacent elements.
    pub neox: bool,
    /// An F32 tensor of per-pair frequency divisors (Llama 3's long context).
    pub factors: Option<&'a str>,
}

/// The gated FFN's activation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu = 0,
    /// GEGLU with ggml's tanh approximation through its f16 table.
    Gelu = 1,
}

/// An operation's argument before scratch is laid out.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Int(i32),
    F32(f32),
    Buf(Buffer),
    KCache(usize),
    VCache(usize),
}

#[derive(Clone, Debug)]
struct Op {
    code: Opcode,
    args: Vec<Arg>,
}

/// One attention's KV cache: `capacity` positions per sequence (the
/// context, or a ring of the window plus a batch for sliding-window layers).
#[derive(Clone, Copy, Debug)]
struct Cache {
    capacity: usize,
    window: usize,
}

/// Collects an architecture's operations, checking each tensor as it is named.
pub(crate) struct ProgramBuilder<'a> {
    plan: &'a Plan,
    index: HashMap<&'a str, usize>,
    hp: &'a Hyperparameters,
    ctx: usize,
    ops: Vec<Op>,
    caches: Vec<Cache>,
    /// The widest input any matmul quantizes (sizes each thread's working space).
    widest_input: usize,
    /// The plan indices of the tensors the operations read.
    read: std::collections::BTreeSet<usize>,
}

impl<'a> ProgramBuilder<'a> {
    /// A builder for a model planned as `plan`, with a context of `ctx` tokens per sequence.
    pub(crate) fn new(plan: &'a Plan, hp: &'a Hyperparameters, ctx: usize) -> Self {
        let index = plan
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.span.name.as_str(), i))
            .collect();
        ProgramBuilder {
            plan,
            index,
            hp,
            ctx,
            ops: Vec::new(),
            caches: Vec::new(),
            widest_input: 0,
            read: Default::default(),
        }
    }

    /// Whether the model has a tensor of this name.
    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The plan index of tensor `name`, checked to have `dims` and either
    /// type F32 (`f32_only`) or a type the guest has kernels for: a model the
    /// guest cannot run is refused here, by tensor and type, before any call.
    fn tensor(&mut self, name: &str, dims: &[usize], f32_only: bool) -> Result<Arg> {
        let path = &self.plan.model.files[0].path;
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("{path}: the model has no tensor {name}"))?;
        let span = &self.plan.tensors[i].span;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if span.dims != want {
            bail!(
                "{path}: tensor {name} has dims {:?}, expected {want:?}",
                span.dims
            );
        }
        let ty = GgmlType::from_name(&span.ty);
        if f32_only && ty != Some(GgmlType::F32) {
            bail!(
                "{path}: tensor {name} has type {}, but the guest reads it as F32",
                span.ty
            );
        }
        if !ty.is_some_and(|t| KERNEL_TYPES.contains(&t)) {
            let known: Vec<&str> = KERNEL_TYPES.iter().map(|t| t.name()).collect();
            bail!(
                "{path}: tensor {name} has type {}, which the guest has no kernel for (it runs {})",
                span.ty,
                known.join(", ")
            );
        }
        self.read.insert(i);
        Ok(Arg::Int(i32::try_from(i)?))
    }

    fn push(&mut self, code: Opcode, args: Vec<Arg>) {
        self.ops.push(Op { code, args });
    }

    fn width(&self, buffer: Buffer) -> i32 {
        buffer.width(self.hp) as i32
    }

    /// Each token's row of the embedding tensor into [`Buffer::Residual`].
    pub(crate) fn embed(&mut self, tensor: &str) -> Result<()> {
        let t = self.tensor(tensor, &[self.hp.embd, self.hp.vocab], false)?;
        let width = Arg::Int(self.width(Buffer::Residual));
        self.push(Opcode::Embed, vec![t, Arg::Buf(Buffer::Residual), width]);
        Ok(())
    }

    /// `buffer *= factor`.
    pub(crate) fn scale(&mut self, buffer: Buffer, factor: f32) {
        let width = Arg::Int(self.width(buffer));
        self.push(
            Opcode::Scale,
            vec![Arg::Buf(buffer), width, Arg::F32(factor)],
        );
    }

    /// RMSNorm of each row of `input` times the F32 weight `weight`, into `output`.
    pub(crate) fn rms_norm(
        &mut self,
        input: Buffer,
        weight: &str,
        eps: f32,
        output: Buffer,
    ) -> Result<()> {
        let width = input.width(self.hp);
        if output.width(self.hp) != width || output.rows() != input.rows() {
            bail!("rms_norm from {input:?} into {output:?}: the buffers differ in shape");
        }
        let w = self.tensor(weight, &[width], true)?;
        self.norm(input, width, eps, w, output, 1);
        Ok(())
    }

    /// RMSNorm of each head of `buffer` ([`Buffer::Query`] or [`Buffer::Key`])
    /// in place, times the F32 weight of one head.
    pub(crate) fn head_norm(&mut self, buffer: Buffer, weight: &str, eps: f32) -> Result<()> {
        let heads = buffer.heads(self.hp)?;
        let w = self.tensor(weight, &[self.hp.head_dim], true)?;
        self.norm(buffer, self.hp.head_dim, eps, w, buffer, heads);
        Ok(())
    }

    fn norm(&mut self, x: Buffer, width: usize, eps: f32, w: Arg, out: Buffer, per_row: usize) {
        let rows = Arg::Int(x.rows() as i32);
        self.push(
            Opcode::RmsNorm,
            vec![
                Arg::Buf(x),
                Arg::Int(width as i32),
                Arg::F32(eps),
                w,
                Arg::Buf(out),
                Arg::Int(per_row as i32),
                rows,
            ],
        );
    }

    /// `output[b] = W · input[b]`, W of dims `[width(input), width(output)]`.
    pub(crate) fn matmul(&mut self, weight: &str, input: Buffer, output: Buffer) -> Result<()> {
        let (n, rows) = (input.width(self.hp), output.width(self.hp));
        if input.rows() != output.rows() {
            bail!("matmul from {input:?} into {output:?}: the buffers differ in rows");
        }
        let w = self.tensor(weight, &[n, rows], false)?;
        self.widest_input = self.widest_input.max(n);
        self.push(
            Opcode::Matmul,
            vec![
                w,
                Arg::Int(rows as i32),
                Arg::Buf(input),
                Arg::Buf(output),
                Arg::Int(rows as i32),
                Arg::Int(input.rows() as i32),
            ],
        );
        Ok(())
    }

    /// Rotary position embedding of `buffer` ([`Buffer::Query`] or
    /// [`Buffer::Key`]) in place, at each token's position.
    pub(crate) fn rope(&mut self, buffer: Buffer, rope: &Rope) -> Result<()> {
        let heads = buffer.heads(self.hp)?;
        let factors = match rope.factors {
            Some(name) => self.tensor(name, &[self.hp.head_dim / 2], true)?,
            None => Arg::Int(-1),
        };
        self.push(
            Opcode::Rope,
            vec![
                Arg::Buf(buffer),
                Arg::Int(heads as i32),
                Arg::Int(self.hp.head_dim as i32),
                Arg::F32(rope.base),
                Arg::Int(i32::from(rope.neox)),
                factors,
            ],
        );
        Ok(())
    }

    /// Stores [`Buffer::Key`] and [`Buffer::Value`] in a KV cache of this
    /// attention's own, then causal attention of [`Buffer::Query`] over it into
    /// [`Buffer::Attended`]; `window` > 0 limits each token to that many
    /// latest positions, and the cache then keeps only a ring of them.
    pub(crate) fn attention(&mut self, window: usize, scale: f32) {
        let capacity = if window > 0 {
            self.ctx.min(window + MAX_BATCH)
        } else {
            self.ctx
        };
        let cache = self.caches.len();
        self.caches.push(Cache { capacity, window });
        let hp = self.hp;
        self.push(
            Opcode::StoreKv,
            vec![
                Arg::Buf(Buffer::Key),
                Arg::Buf(Buffer::Value),
                Arg::Int((hp.kv_heads * hp.head_dim) as i32),
                Arg::KCache(cache),
                Arg::VCache(cache),
                Arg::Int(capacity as i32),
            ],
        );
        self.push(
            Opcode::Attention,
            vec![
                Arg::Buf(Buffer::Query),
                Arg::Int(hp.heads as i32),
                Arg::Int(hp.kv_heads as i32),
                Arg::Int(hp.head_dim as i32),
                Arg::KCache(cache),
                Arg::VCache(cache),
                Arg::F32(scale),
                Arg::Int(window as i32),
                Arg::Int(capacity as i32),
                Arg::Buf(Buffer::Attended),
            ],
        );
    }

    /// `Gate = activation(Gate) * Up`.
    pub(crate) fn glu(&mut self, activation: Activation) {
        let width = Arg::Int(self.width(Buffer::Gate));
        self.push(
            Opcode::Glu,
            vec![
                Arg::Buf(Buffer::Gate),
                Arg::Buf(Buffer::Up),
                width,
                Arg::Int(activation as i32),
            ],
        );
    }

    /// `into += from` (a residual connection).
    pub(crate) fn add(&mut self, into: Buffer, from: Buffer) {
        let width = Arg::Int(self.width(into));
        self.push(Opcode::Add, vec![Arg::Buf(into), Arg::Buf(from), width]);
    }

    /// `buffer += bias` on each token row, `bias` an F32 tensor as wide as the buffer.
    pub(crate) fn bias(&mut self, buffer: Buffer, bias: &str) -> Result<()> {
        if !matches!(buffer.rows(), Rows::Tokens) {
            bail!("bias of {buffer:?}: only token rows take a bias");
        }
        let width = buffer.width(self.hp);
        let b = self.tensor(bias, &[width], true)?;
        self.push(
            Opcode::Bias,
            vec![Arg::Buf(buffer), Arg::Int(width as i32), b],
        );
        Ok(())
    }

    /// The residual rows whose logits are wanted into [`Buffer::Outputs`]:
    /// what runs between the last layer and an architecture's head.
    pub(crate) fn gather_outputs(&mut self) {
        let width = Arg::Int(self.width(Buffer::Residual));
        self.push(
            Opcode::Gather,
            vec![Arg::Buf(Buffer::Residual), width, Arg::Buf(Buffer::Outputs)],
        );
    }

    /// Lays out scratch from byte `start` for `threads` threads and
    /// `sequences` sequences, and encodes the program.
    pub(crate) fn finish(self, start: usize, threads: usize, sequences: usize) -> Result<Program> {
        let hp = self.hp;
        // Saturating: a layout past 4 GiB is refused below, however far past.
        let mut at = start.next_multiple_of(64);
        let mut take = |bytes: usize| {
            let here = at;
            at = at.saturating_add(bytes).saturating_add(63) & !63;
            here
        };
        let program = take(header::SIZE + self.ops.len() * OP_BYTES);
        let barrier = take(64);
        let profile = take(Opcode::ALL.len() * PROFILE_ENTRY_BYTES);
        let batch = take(abi::batch::SIZE);
        // A batch has one output per sequence in it at most.
        let outputs = sequences.min(MAX_BATCH);
        let buffers: HashMap<Buffer, usize> = BUFFERS
            .iter()
            .map(|&b| {
                let rows = match b.rows() {
                    Rows::Tokens => MAX_BATCH,
                    Rows::Outputs => outputs,
                };
                (b, take(rows * b.width(hp) * 4))
            })
            .collect();
        // matmul's working space: each input quantized (1 byte per element
        // plus 0.5 of group metadata), or 4 bytes per element for float weights.
        let widest = self.widest_input.max(1);
        let tmp_bytes = (MAX_BATCH * widest * 2 + widest * 4).next_multiple_of(64);
        let tmp = take(tmp_bytes.saturating_mul(threads));
        let group = hp.heads / hp.kv_heads;
        let scores_bytes = ((group * self.ctx + hp.head_dim + group) * 4).next_multiple_of(64);
        let scores = take(scores_bytes.saturating_mul(threads));
        let kv_row = hp.kv_heads * hp.head_dim * 2;
        let caches: Vec<(usize, usize)> = self
            .caches
            .iter()
            .map(|c| {
                let bytes = sequences.saturating_mul(c.capacity).saturating_mul(kv_row);
                (take(bytes), take(bytes))
            })
            .collect();
        let end = at;
        if end > u32::MAX as usize {
            bail!(
                "a context of {} tokens for {sequences} sequence(s) needs {:.1} GiB of guest memory, \
                 past the 4 GiB of a 32-bit memory; use a smaller --ctx",
                self.ctx,
                end as f64 / f64::from(1 << 30)
            );
        }
        let resolve = |arg: &Arg| match *arg {
            Arg::Int(v) => v as u32,
            Arg::F32(v) => v.to_bits(),
            Arg::Buf(b) => buffers[&b] as u32,
            Arg::KCache(c) => caches[c].0 as u32,
            Arg::VCache(c) => caches[c].1 as u32,
        };
        let head = abi::Header {
            ops: self.ops.len() as u32,
            ops_at: (program + header::SIZE) as u32,
            batch_at: batch as u32,
            barrier_at: barrier as u32,
            tmp_at: tmp as u32,
            tmp_bytes: tmp_bytes as u32,
            scores_at: scores as u32,
            scores_bytes: scores_bytes as u32,
        };
        let mut bytes = head.encode().to_vec();
        for op in &self.ops {
            let args: Vec<u32> = op.args.iter().map(resolve).collect();
            bytes.extend_from_slice(&abi::encode_op(op.code, &args));
        }
        Ok(Program {
            bytes,
            at: program,
            batch,
            barrier,
            profile,
            residual: buffers[&Buffer::Residual],
            logits: buffers[&Buffer::Logits],
            end,
            cache_bytes: self
                .caches
                .iter()
                .map(|c| 2 * sequences * c.capacity * kv_row)
                .sum(),
            rings: self
                .caches
                .iter()
                .filter(|c| c.capacity < self.ctx)
                .map(|c| (c.capacity, c.window))
                .collect(),
        })
    }
}

/// The largest context a program takes (positions are i32 in the guest, and
/// every size it implies must be computed without overflow).
pub const MAX_CTX: usize = 1 << 24;

/// An encoded forward-pass program and where it put everything in scratch:
/// what a host writes into the guest's scratch and the offsets it writes
/// batches to and reads results from. Every host (the session's threads
/// under wasmtime, a browser's web workers) runs these same bytes.
pub struct Program {
    /// The header and operation records, written at `at`.
    pub bytes: Vec<u8>,
    /// Scratch offset of the program (what `forward` is given).
    pub at: usize,
    /// Scratch offset of the batch descriptor.
    pub batch: usize,
    /// Scratch offset of the barrier words.
    pub barrier: usize,
    /// Scratch offset of the profile table.
    pub profile: usize,
    /// Scratch offset of the residual stream (a layer range's input and output).
    pub residual: usize,
    /// Scratch offset of the logits of the output rows.
    pub logits: usize,
    /// The first scratch byte past everything.
    pub end: usize,
    /// Bytes of every KV cache together.
    pub cache_bytes: usize,
    /// The ring caches' `(capacity, window)`: what a truncation must keep.
    pub rings: Vec<(usize, usize)>,
}

impl Program {
    /// The program of `file`'s architecture for `options` (its layers,
    /// context, threads and sequences), laid out in scratch from byte
    /// `scratch_free` on (past the routing tables of `plan`).
    pub fn build(
        plan: &Plan,
        file: &shardload_gguf::GgufFile,
        options: &crate::SessionOptions,
        scratch_free: usize,
    ) -> Result<Program> {
        let &crate::SessionOptions {
            ctx,
            threads,
            sequences,
            ..
        } = options;
        if threads == 0 || threads > 256 {
            bail!("--threads must be between 1 and 256, not {threads}");
        }
        if sequences == 0 || sequences > 4096 {
            bail!("sequences must be between 1 and 4096, not {sequences}");
        }
        let arch = crate::arch::read(file)?;
        let layers = options.layers.clone();
        Self::emit(plan, arch.as_ref(), layers, ctx)?.finish(scratch_free, threads, sequences)
    }

    /// The names of the tensors that layers `layers` of `file`'s
    /// architecture read, from a plan of the whole model: what a pipeline
    /// stage of those layers maps, and nothing else.
    pub fn tensors_read(
        plan: &Plan,
        file: &shardload_gguf::GgufFile,
        layers: Range<usize>,
    ) -> Result<Vec<String>> {
        let arch = crate::arch::read(file)?;
        let builder = Self::emit(plan, arch.as_ref(), Some(layers), 1)?;
        Ok(builder
            .read
            .iter()
            .map(|&i| plan.tensors[i].span.name.clone())
            .collect())
    }

    /// The operations of `layers` (all when `None`): the embedding if they
    /// start at 0, each block, the output head if they end at the last.
    fn emit<'a>(
        plan: &'a Plan,
        arch: &'a dyn crate::arch::Architecture,
        layers: Option<Range<usize>>,
        ctx: usize,
    ) -> Result<ProgramBuilder<'a>> {
        let hp = arch.hyperparameters();
        if ctx == 0 || ctx > MAX_CTX {
            bail!("--ctx must be between 1 and {MAX_CTX}, not {ctx}");
        }
        let layers = layers.unwrap_or(0..hp.layers);
        if layers.start >= layers.end || layers.end > hp.layers {
            bail!(
                "layers {}..{} are not a range of the model's {} layers",
                layers.start,
                layers.end,
                hp.layers
            );
        }
        let mut builder = ProgramBuilder::new(plan, hp, ctx);
        if layers.start == 0 {
            arch.embed(&mut builder)?;
        }
        for layer in layers.clone() {
            arch.layer(layer, &mut builder)?;
        }
        if layers.end == hp.layers {
            builder.gather_outputs();
            arch.head(&mut builder)?;
        }
        Ok(builder)
    }
}
