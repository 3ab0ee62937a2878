//! A session: guest instances over the shard memories (one per thread), the
//! forward-pass program written into their shared scratch, and sequences,
//! each with its own region of every KV cache. A batch mixes tokens of
//! several sequences (one's prompt beside others' next tokens) and goes
//! through the guest's `forward` export in one call per thread, so each
//! weight is read once for all of them. A session may run only a range of
//! layers: from token ids or from a residual stream passed in, to logits or
//! to a residual stream handed out.

use std::ops::Range;
use std::time::Duration;

use anyhow::{Result, bail};
use shardload_gguf::GgufFile;
use shardload_guest::program::{self as abi, MAX_BATCH, Opcode, PROFILE_ENTRY_BYTES, header};
use shardload_store::{GuestInstance, WeightStore};

use crate::arch::{self, Hyperparameters};
use crate::pool::Pool;
use crate::program::Program;

/// A sequence of a session: a conversation, with its own KV cache region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SequenceId(usize);

impl SequenceId {
    /// The sequence's slot (its KV cache region), 0-based.
    pub fn slot(self) -> usize {
        self.0
    }
}

/// How a session is laid out.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Tokens each sequence can hold.
    pub ctx: usize,
    /// Threads (guest instances) that split each operation.
    pub threads: usize,
    /// Sequences that can be live at once (each reserves `ctx` tokens of KV cache).
    pub sequences: usize,
    /// The layers this session runs (`None`: all of them, tokens to logits).
    pub layers: Option<Range<usize>>,
}

/// What a batch through a session's layers gives.
#[derive(Clone, Debug)]
pub enum StageOutput {
    /// Logits after the last token of each batch entry, in entry order.
    Logits(Vec<Vec<f32>>),
    /// The residual stream after the session's last layer: one row of the
    /// embedding width per new token of the batch, in batch order (a prefix
    /// evaluated again after a deep truncation gives no rows).
    Residual(Vec<f32>),
}

/// A sequence's tokens, how many of them the KV cache holds, and the
/// high-water mark of positions written into its cache since it was last
/// evaluated from position 0: a ring of capacity C still holds position t of
/// this sequence only if t >= written - C (truncated-away positions linger
/// in their slots, so this is the highest position ever written, not the
/// current length).
struct Sequence {
    tokens: Vec<u32>,
    cached: usize,
    written: usize,
}

/// One token of a batch as the guest sees it.
struct Work {
    token: u32,
    slot: usize,
    position: usize,
    /// The batch entry whose logits this token gives, if any.
    output: Option<usize>,
    /// Its row among the batch's new tokens (`None` for a pending prefix).
    row: Option<usize>,
}

/// A model loaded into guests, with the KV caches of its sequences.
pub struct Session {
    guest: GuestInstance,
    pool: Pool,
    hp: Hyperparameters,
    program: Program,
    ctx: usize,
    layers: Range<usize>,
    sequences: Vec<Option<Sequence>>,
    profiling: bool,
}

impl Session {
    /// A session of one sequence over all layers (what `generate` and `chat`
    /// use): [`Session::eval`], [`Session::truncate`] and
    /// [`Session::position`] work on it. `file` is the model's first GGUF file.
    pub fn new(
        store: &WeightStore,
        file: &GgufFile,
        ctx: usize,
        threads: usize,
    ) -> Result<Session> {
        let mut session = Session::with_options(
            store,
            file,
            &SessionOptions {
                ctx,
                threads,
                sequences: 1,
                layers: None,
            },
        )?;
        session.create_sequence()?;
        Ok(session)
    }

    /// Instantiates a guest from `store` per thread (all sharing one scratch
    /// memory), builds the forward-pass program of `file`'s architecture for
    /// the chosen layers and writes it into scratch.
    pub fn with_options(
        store: &WeightStore,
        file: &GgufFile,
        options: &SessionOptions,
    ) -> Result<Session> {
        let (mut guest, _) = store.instantiate()?;
        let program = Program::build(store.plan(), file, options, guest.scratch_free())?;
        let hp = arch::read(file)?.hyperparameters().clone();
        let &SessionOptions {
            ctx,
            threads,
            sequences,
            ..
        } = options;
        let layers = options.layers.clone().unwrap_or(0..hp.layers);
        guest.ensure_scratch(program.end)?;
        guest.write_bytes(program.at, &program.bytes)?;
        let workers = (1..threads)
            .map(|_| store.instantiate_sharing(&guest))
            .collect::<Result<Vec<_>>>()?;
        Ok(Session {
            guest,
            pool: Pool::new(workers)?,
            hp,
            program,
            ctx,
            layers,
            sequences: (0..sequences).map(|_| None).collect(),
            profiling: false,
        })
    }

    /// The model's hyperparameters.
    pub fn hyperparameters(&self) -> &Hyperparameters {
        &self.hp
    }

    /// The context size of each sequence, in tokens.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// The layers this session runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// Bytes of guest scratch memory this session uses (program, activations, KV caches).
    pub fn scratch_bytes(&self) -> usize {
        self.program.end
    }

    /// Bytes of KV cache, all sequences and layers together.
    pub fn kv_cache_bytes(&self) -> usize {
        self.program.cache_bytes
    }

    /// Starts (or stops) timing each operation of the program in the guest
    /// (thread 0's view, including its wait at the barrier after it).
    pub fn set_profiling(&mut self, on: bool) -> Result<()> {
        let table = Opcode::ALL.len() * PROFILE_ENTRY_BYTES;
        self.guest
            .write_bytes(self.program.profile, &vec![0; table])?;
        let at = if on { self.program.profile as u32 } else { 0 };
        self.guest
            .write_bytes(self.program.at + header::PROFILE_AT, &at.to_le_bytes())?;
        self.profiling = on;
        Ok(())
    }

    /// Calls and time per operation since profiling started, slowest first.
    pub fn profile(&self) -> Vec<(&'static str, u64, Duration)> {
        if !self.profiling {
            return Vec::new();
        }
        let table = self.guest.read_bytes(
            self.program.profile,
            Opcode::ALL.len() * PROFILE_ENTRY_BYTES,
        );
        let f64_at = |at: usize| f64::from_le_bytes(table[at..at + 8].try_into().unwrap_or([0; 8]));
        let mut rows: Vec<_> = Opcode::ALL
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let at = i * PROFILE_ENTRY_BYTES;
                (
                    op.name(),
                    f64_at(at) as u64,
                    Duration::from_nanos(f64_at(at + 8) as u64),
                )
            })
            .filter(|row| row.1 > 0)
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        rows
    }

    /// Starts a new, empty sequence in a free slot.
    pub fn create_sequence(&mut self) -> Result<SequenceId> {
        let Some(slot) = self.sequences.iter().position(Option::is_none) else {
            bail!(
                "all {} sequences of this session are in use",
                self.sequences.len()
            );
        };
        self.sequences[slot] = Some(Sequence {
            tokens: Vec::new(),
            cached: 0,
            written: 0,
        });
        Ok(SequenceId(slot))
    }

    /// Ends a sequence; its slot and KV cache region go to the next one created.
    pub fn free_sequence(&mut self, id: SequenceId) -> Result<()> {
        self.sequence(id)?;
        self.sequences[id.0] = None;
        Ok(())
    }

    /// The live sequence in slot `slot`: how a host that names sequences by
    /// slot (across a process boundary) gets its id back.
    pub fn sequence_at(&self, slot: usize) -> Result<SequenceId> {
        self.sequence(SequenceId(slot))?;
        Ok(SequenceId(slot))
    }

    /// The tokens a sequence holds.
    pub fn sequence_tokens(&self, id: SequenceId) -> Result<&[u32]> {
        Ok(&self.sequence(id)?.tokens)
    }

    /// How many of a sequence's tokens the KV cache holds; the rest (after a
    /// truncation a sliding-window ring could not serve) are evaluated again
    /// with its next batch.
    pub fn sequence_cached(&self, id: SequenceId) -> Result<usize> {
        Ok(self.sequence(id)?.cached)
    }

    /// Forgets a sequence's tokens from `position` on. The cache keeps the
    /// prefix; where a sliding-window ring no longer holds what the prefix's
    /// next token needs, the prefix is evaluated again with the next batch.
    pub fn truncate_sequence(&mut self, id: SequenceId, position: usize) -> Result<()> {
        let from_tokens = self.layers.start == 0;
        let rings = self.program.rings.clone();
        let seq = self.sequence_mut(id)?;
        seq.tokens.truncate(position);
        let position = seq.tokens.len();
        if seq.cached > position {
            // The next token at `position` needs positions position - window
            // + 1 .. position of every ring, which still holds those >=
            // written - capacity.
            let kept = rings.iter().all(|&(capacity, window)| {
                position.saturating_sub(window - 1) >= seq.written.saturating_sub(capacity)
            });
            if position == 0 {
                // Nothing of the cache is needed: the sequence starts over
                // (what a pipeline stage does when a sequence is replayed).
                seq.cached = 0;
                seq.written = 0;
            } else if kept {
                seq.cached = position;
            } else if from_tokens {
                seq.cached = 0;
                seq.written = 0;
            } else {
                let cached = seq.cached;
                *seq = Sequence {
                    tokens: Vec::new(),
                    cached: 0,
                    written: 0,
                };
                bail!(
                    "cannot go back from {cached} to {position} tokens: a sliding-window cache no longer \
                     holds them and this session takes residuals, not tokens; the sequence is now empty"
                );
            }
        }
        Ok(())
    }

    fn sequence(&self, id: SequenceId) -> Result<&Sequence> {
        match self.sequences.get(id.0) {
            Some(Some(seq)) => Ok(seq),
            _ => bail!("sequence {} does not exist", id.0),
        }
    }

    fn sequence_mut(&mut self, id: SequenceId) -> Result<&mut Sequence> {
        match self.sequences.get_mut(id.0) {
            Some(Some(seq)) => Ok(seq),
            _ => bail!("sequence {} does not exist", id.0),
        }
    }

    /// Appends each entry's tokens to its sequence and returns the logits
    /// after each entry's last token, in entry order. The entries' tokens
    /// go through the layers together, in batches of up to 32 tokens.
    pub fn decode(&mut self, batch: &[(SequenceId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        if self.layers.start != 0 || self.layers.end != self.hp.layers {
            bail!(
                "this session runs layers {}..{} of {}, not tokens to logits; use run",
                self.layers.start,
                self.layers.end,
                self.hp.layers
            );
        }
        match self.run(batch, None)? {
            StageOutput::Logits(logits) => Ok(logits),
            StageOutput::Residual(_) => bail!(
                "this session runs layers {}..{} of {}, not to the logits",
                self.layers.start,
                self.layers.end,
                self.hp.layers
            ),
        }
    }

    /// Runs a batch through this session's layers: from its token ids (a
    /// session starting at layer 0; `residual` is `None`) or from `residual`
    /// (one embedding-width row per token, in batch order), to logits (a
    /// session ending at the last layer) or to the residual stream. Nothing
    /// runs if any entry is refused.
    pub fn run(
        &mut self,
        batch: &[(SequenceId, &[u32])],
        residual: Option<&[f32]>,
    ) -> Result<StageOutput> {
        let tokens: usize = batch.iter().map(|(_, t)| t.len()).sum();
        self.check(batch, tokens, residual)?;
        // Every token to evaluate: a sequence's pending prefix (after a deep
        // truncation; only sessions from token ids have one), then its new
        // tokens; the last one of each entry gives its output.
        let to_logits = self.layers.end == self.hp.layers;
        let mut work: Vec<Work> = Vec::new();
        let mut new_rows = 0..;
        for (entry, &(id, new)) in batch.iter().enumerate() {
            let seq = self.sequence(id)?;
            let pending = &seq.tokens[seq.cached..];
            let count = pending.len() + new.len();
            for (i, &token) in pending.iter().chain(new.iter()).enumerate() {
                work.push(Work {
                    token,
                    slot: id.0,
                    position: seq.cached + i,
                    output: (to_logits && i + 1 == count).then_some(entry),
                    row: if i >= pending.len() {
                        new_rows.next()
                    } else {
                        None
                    },
                });
            }
        }
        let width = self.hp.embd;
        let mut logits = vec![Vec::new(); batch.len()];
        let mut stream = vec![0f32; if to_logits { 0 } else { tokens * width }];
        let result = (|| -> Result<()> {
            for chunk in work.chunks(MAX_BATCH) {
                self.write_batch(chunk)?;
                if let Some(rows) = residual {
                    // A session from residuals has no pending prefix: every
                    // work row is a new token's.
                    let first = chunk[0].row.unwrap_or(0);
                    let rows = &rows[first * width..(first + chunk.len()) * width];
                    self.guest.write_f32s(self.program.residual, rows)?;
                }
                self.pool
                    .forward(&mut self.guest, self.program.at, self.program.barrier)?;
                let vocab = self.hp.vocab;
                let outputs = chunk.iter().filter_map(|w| w.output);
                for (row, entry) in outputs.enumerate() {
                    logits[entry] = self
                        .guest
                        .read_f32s(self.program.logits + row * vocab * 4, vocab);
                }
                if !to_logits {
                    let out = self
                        .guest
                        .read_f32s(self.program.residual, chunk.len() * width);
                    // The new tokens' rows only, in batch order.
                    for (w, values) in chunk.iter().zip(out.chunks_exact(width)) {
                        if let Some(row) = w.row {
                            stream[row * width..(row + 1) * width].copy_from_slice(values);
                        }
                    }
                }
            }
            Ok(())
        })();
        let rings = !self.program.rings.is_empty();
        let from_tokens = self.layers.start == 0;
        for &(id, new) in batch {
            let seq = self.sequence_mut(id)?;
            if result.is_ok() {
                seq.tokens.extend_from_slice(new);
                seq.cached = seq.tokens.len();
                seq.written = seq.written.max(seq.cached);
            } else if rings {
                // A failed batch may have overwritten ring positions the
                // prefix still needs: evaluate it again next time, or, without
                // the tokens' residuals to do it with, start the sequence over.
                seq.cached = 0;
                seq.written = 0;
                if !from_tokens {
                    seq.tokens.clear();
                }
            }
        }
        result?;

        Ok(if to_logits {
            StageOutput::Logits(logits)
        } else {
            StageOutput::Residual(stream)
        })
    }

    /// Refuses a batch before anything runs: unknown or repeated sequences,
    /// empty entries, token ids past the vocabulary, a full context, or a
    /// residual that is missing, unexpected or of the wrong length.
    fn check(
        &self,
        batch: &[(SequenceId, &[u32])],
        tokens: usize,
        residual: Option<&[f32]>,
    ) -> Result<()> {
        if batch.is_empty() {
            bail!("nothing to evaluate: the batch is empty");
        }
        for (i, &(id, new)) in batch.iter().enumerate() {
            let seq = self.sequence(id)?;
            if batch[..i].iter().any(|(other, _)| *other == id) {
                bail!("sequence {} appears twice in one batch", id.0);
            }
            if new.is_empty() {
                bail!("nothing to evaluate: the prompt is empty");
            }
            if let Some(&bad) = new.iter().find(|&&t| t as usize >= self.hp.vocab) {
                bail!(
                    "token id {bad} is out of range: the vocabulary has {} tokens",
                    self.hp.vocab
                );
            }
            if seq.tokens.len() + new.len() > self.ctx {
                bail!(
                    "the context is full: {} tokens in the cache + {} new > --ctx {}",
                    seq.tokens.len(),
                    new.len(),
                    self.ctx
                );
            }
        }
        match (self.layers.start == 0, residual) {
            (true, None) => {}
            (true, Some(_)) => bail!("this session starts from token ids, not a residual stream"),
            (false, None) => bail!(
                "this session starts at layer {}: it needs the residual stream of layers 0..{}",
                self.layers.start,
                self.layers.start
            ),
            (false, Some(rows)) => {
                if rows.len() != tokens * self.hp.embd {
                    bail!(
                        "the residual stream has {} values, expected {tokens} tokens x {}",
                        rows.len(),
                        self.hp.embd
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes one batch descriptor: token ids, sequence slots, positions and
    /// the rows whose logits are wanted.
    fn write_batch(&mut self, chunk: &[Work]) -> Result<()> {
        let mut bytes = vec![0u8; abi::batch::SIZE];
        let mut put =
            |at: usize, value: u32| bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let outputs: Vec<usize> = (0..chunk.len())
            .filter(|&r| chunk[r].output.is_some())
            .collect();
        put(abi::batch::TOKENS, chunk.len() as u32);
        put(abi::batch::OUTPUTS, outputs.len() as u32);
        for (row, w) in chunk.iter().enumerate() {
            put(abi::batch::IDS + 4 * row, w.token);
            put(abi::batch::SEQS + 4 * row, w.slot as u32);
            put(abi::batch::POSITIONS + 4 * row, w.position as u32);
        }
        for (j, &row) in outputs.iter().enumerate() {
            put(abi::batch::OUTPUT_ROWS + 4 * j, row as u32);
        }
        self.guest.write_bytes(self.program.batch, &bytes)
    }

    /// The first sequence (the one [`Session::new`] creates).
    fn first(&self) -> SequenceId {
        SequenceId(0)
    }

    /// Tokens in the first sequence.
    pub fn position(&self) -> usize {
        self.sequence(self.first()).map_or(0, |s| s.tokens.len())
    }

    /// Forgets every token of the first sequence from `position` on.
    pub fn truncate(&mut self, position: usize) {
        // The first sequence exists and starts from tokens, so this cannot fail.
        let _ = self.truncate_sequence(self.first(), position);
    }

    /// Evaluates `tokens` after the first sequence's and returns the logits
    /// after the last of them.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let first = self.first();
        let mut logits = self.decode(&[(first, tokens)])?;
        Ok(logits.pop().unwrap_or_default())
    }
}
