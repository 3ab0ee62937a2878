//! The scheduler behind `shardload serve`: one thread owns the session, whose
//! sequences are the slots. Every step puts the next token of every
//! generating slot and a chunk of any prompt being read through one batch
//! (continuous batching), so the weights are read once per step for all of
//! them and a long prompt never stalls the others. A sequence's logits do not
//! depend on what else is in its batch (the runtime's tested property), so a
//! request gives the same tokens alone or beside others.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};

use shardload_runtime::{Sampler, SamplerConfig, SequenceId, Session};
use shardload_tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

/// Prompt and generated tokens one step puts through the guest at most: a
/// step's latency stays that of one batch however long the prompts waiting.
pub const STEP_TOKENS: usize = 32;

/// One completion to run.
pub struct Job {
    /// The prompt's tokens (BOS included where the model wants it).
    pub prompt: Vec<u32>,
    /// How to pick each token.
    pub sampling: SamplerConfig,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Texts that end the completion; never part of what is sent.
    pub stop: Vec<String>,
    /// Go on past end-of-generation tokens (llama-server's `ignore_eos`, for benchmarks).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many alternatives (`None`: off).
    pub logprobs: Option<usize>,
    /// Where the completion's text goes, as it is made.
    pub events: UnboundedSender<Event>,
}

/// A generated token's log-probability under the model (before sampling).
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    /// The token's bytes (a piece of UTF-8, or not).
    pub bytes: Vec<u8>,
    /// Natural log of its probability.
    pub logprob: f32,
    /// The most likely tokens at that step, most likely first: (bytes, log-probability).
    pub top: Vec<(Vec<u8>, f32)>,
}

/// What a job reports, in order: deltas, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// Text to append to the completion, and the log-probabilities of the
    /// tokens generated since the last delta (when asked for).
    Delta(String, Vec<TokenLogprob>),
    /// The completion ended.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Prompt tokens, all counted (also those a slot's cache already held).
        prompt_tokens: usize,
        /// Tokens generated (an end-of-generation token included).
        completion_tokens: usize,
        /// Prompt tokens the slot's cache already held (not evaluated again).
        cached_tokens: usize,
    },
    /// The guest failed; the message says why.
    Failed(String),
}

/// Why a completion ended, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token or a stop text.
    Stop,
    /// `max_tokens`, or the slot's context is full.
    Length,
}

impl Finish {
    /// The `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One slot as `/slots` and `/metrics` show it.
#[derive(Default)]
pub struct SlotGauge {
    /// Whether a completion runs in it.
    pub processing: std::sync::atomic::AtomicBool,
    /// Tokens in its KV cache.
    pub cached_tokens: AtomicUsize,
}

/// Counters the HTTP side reads (for `/slots`, `/metrics` and the queue limit).
#[derive(Default)]
pub struct Counters {
    /// Each slot's state, updated after every step.
    pub slots: Vec<SlotGauge>,
    /// Time spent in steps, in nanoseconds.
    pub busy_nanos: std::sync::atomic::AtomicU64,
    /// Jobs sent to the engine and not yet finished (waiting or running).
    pub in_flight: AtomicUsize,
    /// Jobs finished.
    pub finished: AtomicUsize,
    /// Prompt tokens evaluated (cache hits not counted).
    pub prompt_tokens: AtomicUsize,
    /// Tokens generated.
    pub generated_tokens: AtomicUsize,
}

/// A job being run in a slot.
struct Active {
    job: Job,
    /// Prompt tokens not yet evaluated.
    pending: Vec<u32>,
    /// The token sampled last, to feed next step.
    next: Option<u32>,
    sampler: Sampler,
    decoder: shardload_tokenizer::Decoder<'static>,
    /// Log-probabilities not yet sent.
    logprobs: Vec<TokenLogprob>,
    /// The completion's text so far, and how much of it was sent.
    text: String,
    sent: usize,
    generated: usize,
    cached: usize,
}

struct Slot {
    seq: SequenceId,
    active: Option<Active>,
}

/// Runs jobs from `jobs` until every sender is gone.
pub fn run(
    mut session: Session,
    tokenizer: &'static Tokenizer,
    jobs: Receiver<Job>,
    counters: Arc<Counters>,
) {
    // One slot per gauge: the counters say how many there are.
    let mut slots: Vec<Slot> = (0..counters.slots.len())
        .map(|_| Slot {
            seq: session
                .create_sequence()
                .expect("the session has a sequence per slot"),
            active: None,
        })
        .collect();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let ctx = session.ctx();
    loop {
        let idle = slots.iter().all(|s| s.active.is_none());
        if idle && waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if waiting.is_empty() && idle => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        // Jobs whose client left before they started are dropped here.
        waiting.retain(|job| {
            let gone = job.events.is_closed();
            if gone {
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            !gone
        });
        admit(&mut session, tokenizer, &mut slots, &mut waiting);
        let started = std::time::Instant::now();
        let stepped = step(&mut session, tokenizer, &mut slots, ctx, &counters);
        counters
            .busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        for (slot, gauge) in slots.iter().zip(&counters.slots) {
            gauge
                .processing
                .store(slot.active.is_some(), Ordering::Relaxed);
            gauge.cached_tokens.store(
                session.sequence_tokens(slot.seq).map_or(0, <[u32]>::len),
                Ordering::Relaxed,
            );
        }
        if let Err(e) = stepped {
            let message = format!("{e:#}");
            for slot in &mut slots {
                if let Some(active) = slot.active.take() {
                    let _ = active.job.events.send(Event::Failed(message.clone()));
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = session.truncate_sequence(slot.seq, 0);
                }
            }
        }
    }
}

/// Starts waiting jobs in free slots, each in the free slot whose cache
/// shares the longest prefix with its prompt (the next turn of a chat reads
/// only its new part).
fn admit(
    session: &mut Session,
    tokenizer: &'static Tokenizer,
    slots: &mut [Slot],
    waiting: &mut VecDeque<Job>,
) {
    while let Some(job) = waiting.front() {
        let shared = |slot: &Slot| {
            session.sequence_tokens(slot.seq).map_or(0, |cached| {
                cached
                    .iter()
                    .zip(&job.prompt)
                    .take_while(|(a, b)| a == b)
                    .count()
            })
        };
        let Some((best, shared)) = (0..slots.len())
            .filter(|&i| slots[i].active.is_none())
            .map(|i| (i, shared(&slots[i])))
            .max_by_key(|&(i, shared)| (shared, std::cmp::Reverse(i)))
        else {
            return;
        };
        let job = waiting.pop_front().expect("a waiting job");
        // At least one prompt token is evaluated: its logits give the first token.
        let keep = shared.min(job.prompt.len() - 1);
        let slot = &mut slots[best];
        if session.truncate_sequence(slot.seq, keep).is_err() {
            // A slot's own sequence always exists; nothing to keep otherwise.
            let _ = session.truncate_sequence(slot.seq, 0);
        }
        let keep = session.sequence_tokens(slot.seq).map_or(0, <[u32]>::len);
        slot.active = Some(Active {
            pending: job.prompt[keep..].to_vec(),
            next: None,
            sampler: Sampler::new(job.sampling),
            decoder: tokenizer.decoder(),
            logprobs: Vec::new(),
            text: String::new(),
            sent: 0,
            generated: 0,
            cached: keep,
            job,
        });
    }
}

/// One batch: every generating slot's next token, then prompt chunks while
/// the step has room; then each entry that ended a prompt or fed a token
/// samples its next one.
fn step(
    session: &mut Session,
    tokenizer: &Tokenizer,
    slots: &mut [Slot],
    ctx: usize,
    counters: &Counters,
) -> anyhow::Result<()> {
    // Clients that left: their jobs end here.
    for slot in slots.iter_mut() {
        if slot
            .active
            .as_ref()
            .is_some_and(|a| a.job.events.is_closed())
        {
            slot.active = None;
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let mut chunks: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut room = STEP_TOKENS;
    for (i, slot) in slots.iter().enumerate() {
        if let Some(Active { next: Some(t), .. }) = &slot.active {
            chunks.push((i, vec![*t]));
            room = room.saturating_sub(1);
        }
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(active) = &mut slot.active else {
            continue;
        };
        if active.next.is_none() && !active.pending.is_empty() && room > 0 {
            let n = room.min(active.pending.len());
            chunks.push((i, active.pending.drain(..n).collect()));
            counters.prompt_tokens.fetch_add(n, Ordering::Relaxed);
            room -= n;
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    let batch: Vec<(SequenceId, &[u32])> = chunks
        .iter()
        .map(|(i, tokens)| (slots[*i].seq, tokens.as_slice()))
        .collect();
    let logits = session.decode(&batch)?;
    for ((i, _), logits) in chunks.iter().zip(logits) {
        let slot = &mut slots[*i];
        let active = slot
            .active
            .as_mut()
            .expect("a slot in the batch runs a job");
        if !active.pending.is_empty() {
            continue; // The prompt is still being read.
        }
        let token = active.sampler.sample(&logits);
        let end_of_generation = tokenizer.is_eog(token) && !active.job.ignore_eos;
        // As OpenAI: the end-of-generation token is counted, but not text with a log-probability.
        if let Some(top) = active.job.logprobs
            && !end_of_generation
        {
            active
                .logprobs
                .push(logprob(tokenizer, &logits, token, top));
        }
        active.generated += 1;
        counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let cached = session.sequence_tokens(slot.seq)?.len();
        let finish = if end_of_generation {
            Some(Finish::Stop)
        } else {
            active.text += &active.decoder.push(token)?;
            if let Some(at) = find_stop(&active.text, active.sent, &active.job.stop) {
                active.text.truncate(at);
                Some(Finish::Stop)
            } else if active.generated >= active.job.max_tokens || cached + 1 >= ctx {
                Some(Finish::Length)
            } else {
                None
            }
        };
        let hold = match finish {
            Some(_) => 0,
            None => held_back(&active.text, &active.job.stop),
        };
        let ready = active.text.len() - hold;
        if ready > active.sent || (finish.is_some() && !active.logprobs.is_empty()) {
            let delta = active.text[active.sent..ready.max(active.sent)].to_string();
            active.sent = ready.max(active.sent);
            let logprobs = std::mem::take(&mut active.logprobs);
            let _ = active.job.events.send(Event::Delta(delta, logprobs));
        }
        match finish {
            Some(finish) => {
                let _ = active.job.events.send(Event::Done {
                    finish,
                    prompt_tokens: active.job.prompt.len(),
                    completion_tokens: active.generated,
                    cached_tokens: active.cached,
                });
                slot.active = None;
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                counters.finished.fetch_add(1, Ordering::Relaxed);
            }
            None => active.next = Some(token),
        }
    }
    Ok(())
}

/// `token`'s log-probability in `logits` and the `top` most likely tokens'.
fn logprob(tokenizer: &Tokenizer, logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |id: usize| (f64::from(logits[id]) - log_z) as f32;
    let bytes = |id: u32| tokenizer.piece(id).map(<[u8]>::to_vec).unwrap_or_default();
    let top = top.min(logits.len());
    let mut order: Vec<usize> = Vec::new();
    if top > 0 {
        order.extend(0..logits.len());
        order.select_nth_unstable_by(top - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(top);
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    }
    TokenLogprob {
        bytes: bytes(token),
        logprob: lp(token as usize),
        top: order
            .into_iter()
            .take(top)
            .map(|id| (bytes(id as u32), lp(id)))
            .collect(),
    }
}

/// Where the first stop text begins, searching only where one could have
/// appeared since `sent` (a stop text may straddle token boundaries).
fn find_stop(text: &str, sent: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let mut from = sent.saturating_sub(s.len());
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            text[from..].find(s.as_str()).map(|at| from + at)
        })
        .min()
}

/// How many bytes at the end of `text` could be the start of a stop text:
/// held back until the next token says whether they are.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len().min(text.len() + 1))
                .rev()
                .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .take(1)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_stop_text_is_found_across_what_was_already_sent() {
        assert_eq!(find_stop("hello wor", 7, &stops(&["world"])), None);
        assert_eq!(find_stop("hello world", 9, &stops(&["world"])), Some(6));
        assert_eq!(find_stop("a\n\nb", 2, &stops(&["\n\n", "b"])), Some(1));
    }

    #[test]
    fn a_possible_start_of_a_stop_text_is_held_back() {
        assert_eq!(held_back("hello wo", &stops(&["world"])), 2);
        assert_eq!(held_back("hello", &stops(&["world"])), 0);
        assert_eq!(held_back("ab", &stops(&["b", "abc"])), 2);
        assert_eq!(held_back("x é", &stops(&["éa"])), 2);
    }
}
