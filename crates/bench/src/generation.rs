//! Prompt processing and generation speed of the forward pass in the guest,
//! next to llama.cpp's `llama-bench` on the same model and thread counts,
//! measured in the same run (llama.cpp built by `scripts/build-llama-cpp`;
//! never in CI).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shard_planner::PlanOptions;
use shardload_guest::exports;
use shardload_guest::program::{self as abi, OP_BYTES, Opcode, header};
use shardload_runtime::{Session, SessionOptions};
use shardload_store::{LoadMode, OpenModel, WeightStore};

/// Tokens/s of one configuration: a 512-token prompt from an empty cache,
/// and 128 tokens generated one at a time from an empty cache and after a
/// 512-token prompt (what llama-bench's `pp512`, `tg128` and `tg128 @ d512`
/// measure): generation compared at equal depth, since attention's share
/// grows with it.
#[derive(Clone, Debug)]
pub struct Speed {
    /// Threads used.
    pub threads: usize,
    /// Prompt processing, tokens/s.
    pub prompt: f64,
    /// Generation from an empty cache, tokens/s.
    pub generate: f64,
    /// Generation after [`DEPTH`] tokens, tokens/s.
    pub generate_deep: f64,
    /// Aggregate generation tokens/s with several sequences decoded together
    /// (one token each per step): `(sequences, tokens/s)`.
    pub batched: Vec<(usize, f64)>,
}

/// The depth of [`Speed::generate_deep`], llama-bench's `-d 512`.
pub const DEPTH: usize = 512;

impl Speed {
    /// The better of two measurements of one configuration, figure by figure.
    pub fn best(self, other: &Speed) -> Speed {
        Speed {
            threads: self.threads,
            prompt: self.prompt.max(other.prompt),
            generate: self.generate.max(other.generate),
            generate_deep: self.generate_deep.max(other.generate_deep),
            batched: if self.batched.is_empty() {
                other.batched.clone()
            } else {
                self.batched
            },
        }
    }
}

/// Sequence counts of [`Speed::batched`].
pub const BATCHED_SEQUENCES: [usize; 3] = [1, 4, 8];

/// Decode steps per sequence in a batched measurement.
const BATCHED_STEPS: usize = 32;

/// Token ids for the benchmark prompt: spread over the vocabulary,
/// deterministic (the speed does not depend on which tokens they are).
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Measures [`Speed`] for each thread count, best of `repeats` runs; the
/// batched decode only with `batched` (it takes as long again).
pub fn guest_speed(
    path: &Path,
    shards: u32,
    threads: &[usize],
    repeats: usize,
    batched: bool,
) -> Result<Vec<Speed>> {
    let model = OpenModel::open(path)?;
    let plan = model.plan(&PlanOptions {
        shards: Some(shards),
        ..PlanOptions::default()
    })?;
    let store = WeightStore::new(plan, LoadMode::Mmap)?;
    let mut out = Vec::new();
    for &t in threads {
        let mut session = Session::new(&store, model.gguf.metadata(), DEPTH + 128, t)?;
        let prompt = tokens(DEPTH, session.hyperparameters().vocab);
        let (mut best_pp, mut best_tg, mut best_deep) = (0f64, 0f64, 0f64);
        let generate = |session: &mut Session| -> Result<f64> {
            let started = Instant::now();
            for &token in &prompt[..128] {
                session.eval(&[token])?;
            }
            Ok(128.0 / started.elapsed().as_secs_f64())
        };
        for _ in 0..repeats.max(1) {
            session.truncate(0);
            let started = Instant::now();
            session.eval(&prompt)?;
            best_pp = best_pp.max(DEPTH as f64 / started.elapsed().as_secs_f64());
            best_deep = best_deep.max(generate(&mut session)?);
            session.truncate(0);
            best_tg = best_tg.max(generate(&mut session)?);
        }
        drop(session);
        let batched = if batched {
            BATCHED_SEQUENCES
                .iter()
                .map(|&n| Ok((n, batched_decode(&store, &model, t, n, repeats)?)))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        out.push(Speed {
            threads: t,
            prompt: best_pp,
            generate: best_tg,
            generate_deep: best_deep,
            batched,
        });
    }
    Ok(out)
}

/// Aggregate tokens/s of `sequences` sequences decoded together from empty
/// caches, one token each per step (what a server's continuous batching
/// gives), best of `repeats`.
fn batched_decode(
    store: &WeightStore,
    model: &OpenModel,
    threads: usize,
    sequences: usize,
    repeats: usize,
) -> Result<f64> {
    let options = SessionOptions {
        ctx: BATCHED_STEPS,
        threads,
        sequences,
        layers: None,
    };
    let mut session = Session::with_options(store, model.gguf.metadata(), &options)?;
    let vocab = session.hyperparameters().vocab;
    let ids = (0..sequences)
        .map(|_| session.create_sequence())
        .collect::<Result<Vec<_>>>()?;
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        for &id in &ids {
            session.truncate_sequence(id, 0)?;
        }
        let started = Instant::now();
        for step in 0..BATCHED_STEPS {
            let next: Vec<[u32; 1]> = (0..sequences)
                .map(|s| [((step * 7919 + s * 104_729 + 13) % vocab) as u32])
                .collect();
            let batch: Vec<_> = ids.iter().zip(&next).map(|(&id, t)| (id, &t[..])).collect();
            session.decode(&batch)?;
        }
        let rate = (sequences * BATCHED_STEPS) as f64 / started.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    Ok(best)
}

/// What one barrier of the guest program costs with `threads` threads: a
/// program of 4096 operations that do almost nothing (a scale of one
/// token's 4 values), entered by every thread at once and timed per
/// operation; best of `repeats`.
pub fn barrier_cost(path: &Path, threads: usize, repeats: usize) -> Result<Duration> {
    const OPS: usize = 4096;
    let model = OpenModel::open(path)?;
    let store = WeightStore::new(model.plan(&PlanOptions::default())?, LoadMode::Mmap)?;
    let (first, _) = store.instantiate()?;
    let at = first.scratch_free().next_multiple_of(64);
    let batch = at + header::SIZE + OPS * OP_BYTES;
    let barrier = (batch + abi::batch::SIZE).next_multiple_of(64);
    let buffer = barrier + 64;
    let head = abi::Header {
        ops: OPS as u32,
        ops_at: (at + header::SIZE) as u32,
        batch_at: batch as u32,
        barrier_at: barrier as u32,
        ..abi::Header::default()
    };
    let scale = abi::encode_op(Opcode::Scale, &[buffer as u32, 4, 1f32.to_bits()]);
    let mut bytes = head.encode().to_vec();
    (0..OPS).for_each(|_| bytes.extend_from_slice(&scale));
    bytes.extend_from_slice(&1u32.to_le_bytes()); // the batch: one token
    bytes.resize(buffer + 64 - at, 0);
    let mut guests = vec![first];
    guests[0].write_bytes(at, &bytes)?;
    for _ in 1..threads {
        let other = store.instantiate_sharing(&guests[0])?;
        guests.push(other);
    }
    let mut best = Duration::MAX;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let runs: Vec<_> = guests
                .iter_mut()
                .enumerate()
                .map(|(k, guest)| {
                    scope.spawn(move || {
                        let args = (at as i32, k as i32, threads as i32);
                        guest.call(exports::FORWARD, args, || "the barrier probe".into())
                    })
                })
                .collect();
            for run in runs {
                run.join()
                    .map_err(|_| anyhow::anyhow!("a barrier probe thread panicked"))??;
            }
            Ok(())
        })?;
        best = best.min(started.elapsed() / OPS as u32);
    }
    Ok(best)
}

/// llama-bench's `pp512`, `tg128` and `tg128 @ d512` for each thread count (`-r repeats`).
pub fn llama_cpp_speed(
    llama_bench: &Path,
    model: &Path,
    threads: &[usize],
    repeats: usize,
) -> Result<Vec<Speed>> {
    let list: Vec<String> = threads.iter().map(usize::to_string).collect();
    let output = Command::new(llama_bench)
        .args(["-m"])
        .arg(model)
        .args([
            "-p",
            "512",
            "-n",
            "128",
            "-d",
            &format!("0,{DEPTH}"),
            "-r",
            &repeats.max(1).to_string(),
            "-o",
            "json",
            "-t",
            &list.join(","),
        ])
        .output()
        .with_context(|| format!("cannot run {}", llama_bench.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            llama_bench.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let runs: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("llama-bench's JSON")?;
    threads
        .iter()
        .map(|&t| {
            let rate = |prompt: bool, depth: usize| {
                runs.as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| {
                        r["n_threads"].as_u64() == Some(t as u64)
                            && (r["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt
                            && r["n_depth"].as_u64().unwrap_or(0) == depth as u64
                    })
                    .and_then(|r| r["avg_ts"].as_f64())
                    .with_context(|| {
                        format!(
                            "llama-bench printed no {} run at depth {depth} with {t} threads",
                            if prompt { "pp" } else { "tg" }
                        )
                    })
            };
            Ok(Speed {
                threads: t,
                prompt: rate(true, 0)?,
                generate: rate(false, 0)?,
                generate_deep: rate(false, DEPTH)?,
                batched: Vec::new(),
            })
        })
        .collect()
}
