//! The program ABI: how a host lays out the forward pass it wants the guest's
//! `forward` export to run (guest/README.md, "The program"). The host writes
//! a header, a list of fixed-size operation records and a batch descriptor
//! into scratch; every thread's instance then enters `forward` with the same
//! program and its own thread index. These constants are the one description
//! of that layout: the WAT is formatted from them and the runtime encodes
//! programs with them.

/// `"SLPG"`, the first word of a program header.
pub const PROGRAM_MAGIC: u32 = u32::from_le_bytes(*b"SLPG");
/// The layout version this guest runs.
pub const PROGRAM_VERSION: u32 = 1;

/// Byte offsets of the header's i32 words.
pub mod header {
    /// Magic, [`super::PROGRAM_MAGIC`].
    pub const MAGIC: usize = 0;
    /// Version, [`super::PROGRAM_VERSION`].
    pub const VERSION: usize = 4;
    /// Number of operation records.
    pub const OPS: usize = 8;
    /// Scratch offset of the first operation record.
    pub const OPS_AT: usize = 12;
    /// Scratch offset of the batch descriptor.
    pub const BATCH_AT: usize = 16;
    /// Scratch offset of the barrier's four words (64-byte aligned).
    pub const BARRIER_AT: usize = 20;
    /// Scratch offset of the profile table, or 0 when not profiling.
    pub const PROFILE_AT: usize = 24;
    /// Scratch offset of thread 0's working space for matmul (quantized inputs).
    pub const TMP_AT: usize = 28;
    /// Bytes of working space per thread (thread k's is at `TMP_AT + k * TMP_BYTES`).
    pub const TMP_BYTES: usize = 32;
    /// Scratch offset of thread 0's attention scores.
    pub const SCORES_AT: usize = 36;
    /// Bytes of attention scores per thread.
    pub const SCORES_BYTES: usize = 40;
    /// Bytes of the header.
    pub const SIZE: usize = 64;
}

/// Bytes of one operation record: an opcode and up to 15 i32 arguments.
pub const OP_BYTES: usize = 64;

/// The most tokens one batch descriptor holds.
pub const MAX_BATCH: usize = 32;

/// Byte offsets in the batch descriptor: two counts, then four arrays of
/// [`MAX_BATCH`] i32 (per token: its id, sequence slot and position; per
/// output: the token row whose logits are wanted).
pub mod batch {
    /// Tokens in the batch.
    pub const TOKENS: usize = 0;
    /// Rows of outputs (logits) wanted.
    pub const OUTPUTS: usize = 4;
    /// Token ids, one i32 per token.
    pub const IDS: usize = 16;
    /// Sequence slots.
    pub const SEQS: usize = IDS + 4 * super::MAX_BATCH;
    /// Positions within each token's sequence.
    pub const POSITIONS: usize = SEQS + 4 * super::MAX_BATCH;
    /// Token rows whose logits are wanted, in output order.
    pub const OUTPUT_ROWS: usize = POSITIONS + 4 * super::MAX_BATCH;
    /// Bytes of the descriptor.
    pub const SIZE: usize = OUTPUT_ROWS + 4 * super::MAX_BATCH;
}

/// A program header's fields (scratch offsets and sizes): [`Header::encode`]
/// is the one place its layout is written, by every host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Number of operation records.
    pub ops: u32,
    /// Offset of the first operation record.
    pub ops_at: u32,
    /// Offset of the batch descriptor.
    pub batch_at: u32,
    /// Offset of the barrier's words.
    pub barrier_at: u32,
    /// Offset of thread 0's matmul working space.
    pub tmp_at: u32,
    /// Bytes of working space per thread.
    pub tmp_bytes: u32,
    /// Offset of thread 0's attention scores.
    pub scores_at: u32,
    /// Bytes of scores per thread.
    pub scores_bytes: u32,
}

impl Header {
    /// The header's bytes, magic and version included (profiling off).
    pub fn encode(&self) -> [u8; header::SIZE] {
        let mut bytes = [0u8; header::SIZE];
        let fields = [
            (header::MAGIC, PROGRAM_MAGIC),
            (header::VERSION, PROGRAM_VERSION),
            (header::OPS, self.ops),
            (header::OPS_AT, self.ops_at),
            (header::BATCH_AT, self.batch_at),
            (header::BARRIER_AT, self.barrier_at),
            (header::TMP_AT, self.tmp_at),
            (header::TMP_BYTES, self.tmp_bytes),
            (header::SCORES_AT, self.scores_at),
            (header::SCORES_BYTES, self.scores_bytes),
        ];
        for (at, value) in fields {
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

/// One operation record: the opcode, then its arguments (at most 15).
pub fn encode_op(code: Opcode, args: &[u32]) -> [u8; OP_BYTES] {
    assert!(
        args.len() < OP_BYTES / 4,
        "{code:?} has {} arguments",
        args.len()
    );
    let mut bytes = [0u8; OP_BYTES];
    for (i, word) in std::iter::once(code as u32)
        .chain(args.iter().copied())
        .enumerate()
    {
        bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// Byte offsets of the barrier's words: arrivals, generation, threads
/// parked in `memory.atomic.wait32`, and the abort flag the host raises when
/// one thread failed.
pub mod barrier {
    /// Threads arrived at the current barrier.
    pub const COUNT: usize = 0;
    /// Bumped when the last thread arrives (what waiters wait on).
    pub const GENERATION: usize = 4;
    /// Threads parked in `memory.atomic.wait32`.
    pub const SLEEPERS: usize = 8;
    /// Nonzero: a thread failed; every barrier returns at once.
    pub const ABORT: usize = 12;
}

/// Spins at a barrier before parking in `memory.atomic.wait32`: about half a
/// millisecond here, longer than the usual imbalance between threads within
/// an operation. A park puts a futex wake-up (tens of µs) on the critical
/// path, and a token has hundreds of barriers: at 20,000 spins enough of them
/// parked to cost SmolLM2's 2-thread decode 15-40% (measured), at 200,000 it
/// is back at the host loop's speed.
pub const BARRIER_SPINS: usize = 200_000;

/// Bytes per opcode in the profile table: calls, then nanoseconds (two f64).
pub const PROFILE_ENTRY_BYTES: usize = 16;

/// Which rows an operation runs over: every token of the batch, or only the
/// rows gathered for output (logits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// One row per token.
    Tokens = 0,
    /// One row per output.
    Outputs = 1,
}

macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $text:literal;)*) => {
        /// The operations a program is made of; guest/README.md gives each
        /// one's arguments.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Opcode { $($(#[$doc])* $name = $code,)* }

        impl Opcode {
            /// Every opcode, in code order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];
            /// The name the profile reports.
            pub fn name(self) -> &'static str {
                match self { $(Opcode::$name => $text,)* }
            }
        }
    };
}

opcodes! {
    /// `[tensor, out, width]`: each token's embedding row, dequantized.
    Embed = 0, "embed";
    /// `[buf, width, factor]`: every token row times an f32.
    Scale = 1, "scale";
    /// `[x, width, eps, weight, out, per_row, rows]`: RMSNorm of `per_row`
    /// rows of `width` per batch row, times an F32 weight tensor.
    RmsNorm = 2, "rms_norm";
    /// `[tensor, out_width, x, y, y_stride, rows]`: `Y[b] = W · X[b]`.
    Matmul = 3, "matmul";
    /// `[buf, heads, head_dim, base, neox, factors]`: RoPE at each token's position.
    Rope = 4, "rope";
    /// `[k, v, width, k_cache, v_cache, capacity]`: each token's K and V
    /// into its sequence's f16 cache rows (position mod capacity).
    StoreKv = 5, "store_kv";
    /// `[q, heads, kv_heads, head_dim, k_cache, v_cache, scale, window,
    /// capacity, out]`: causal attention over each token's sequence.
    Attention = 6, "attention";
    /// `[gate, up, width, kind]`: `gate = act(gate) * up`, SiLU (0) or GELU (1).
    Glu = 7, "glu";
    /// `[a, b, width]`: `a += b` (residual connections).
    Add = 8, "add";
    /// `[x, width, out]`: the output rows of x, gathered at `out`.
    Gather = 9, "gather";
    /// `[x, width, tensor]`: each token row of x plus an F32 tensor of
    /// `width` (the biases of Qwen's Q, K and V projections).
    Bias = 10, "bias";
}

/// The placeholders of `wat/program.wat`.
pub(crate) fn wat_constants() -> Vec<(&'static str, String)> {
    let mut constants = vec![
        ("PROGRAM_MAGIC", (PROGRAM_MAGIC as i32).to_string()),
        ("PROGRAM_VERSION", PROGRAM_VERSION.to_string()),
        ("H_OPS", header::OPS.to_string()),
        ("H_OPS_AT", header::OPS_AT.to_string()),
        ("H_BATCH_AT", header::BATCH_AT.to_string()),
        ("H_BARRIER_AT", header::BARRIER_AT.to_string()),
        ("H_PROFILE_AT", header::PROFILE_AT.to_string()),
        ("H_TMP_AT", header::TMP_AT.to_string()),
        ("H_TMP_BYTES", header::TMP_BYTES.to_string()),
        ("H_SCORES_AT", header::SCORES_AT.to_string()),
        ("H_SCORES_BYTES", header::SCORES_BYTES.to_string()),
        ("OP_BYTES", OP_BYTES.to_string()),
        ("B_TOKENS", batch::TOKENS.to_string()),
        ("B_OUTPUTS", batch::OUTPUTS.to_string()),
        ("B_IDS", batch::IDS.to_string()),
        ("B_SEQS", batch::SEQS.to_string()),
        ("B_POSITIONS", batch::POSITIONS.to_string()),
        ("B_OUTPUT_ROWS", batch::OUTPUT_ROWS.to_string()),
        ("BAR_COUNT", barrier::COUNT.to_string()),
        ("BAR_GENERATION", barrier::GENERATION.to_string()),
        ("BAR_SLEEPERS", barrier::SLEEPERS.to_string()),
        ("BAR_ABORT", barrier::ABORT.to_string()),
        ("BARRIER_SPINS", BARRIER_SPINS.to_string()),
        ("PROFILE_ENTRY_BYTES", PROFILE_ENTRY_BYTES.to_string()),
    ];
    let labels: Vec<String> = Opcode::ALL
        .iter()
        .map(|op| format!("${}", op.name()))
        .collect();
    constants.push(("OP_LABELS", labels.join(" ")));
    constants
}
