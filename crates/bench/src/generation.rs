//! Prompt processing and generation speed of the forward pass in the guest,
//! next to llama.cpp's `llama-bench` on the same model and thread counts,
//! measured in the same run (llama.cpp built by `scripts/build-llama-cpp`;
//! never in CI).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use shard_planner::PlanOptions;
use shardload_runtime::Session;
use shardload_store::{LoadMode, OpenModel, WeightStore};

/// Tokens/s of one configuration: a 512-token prompt from an empty cache,
/// and 128 tokens generated one at a time from an empty cache (what
/// llama-bench's `pp512` and `tg128` measure).
#[derive(Clone, Copy, Debug)]
pub struct Speed {
    /// Threads used.
    pub threads: usize,
    /// Prompt processing, tokens/s.
    pub prompt: f64,
    /// Generation, tokens/s.
    pub generate: f64,
}

/// Token ids for the benchmark prompt: spread over the vocabulary,
/// deterministic (the speed does not depend on which tokens they are).
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// Measures [`Speed`] for each thread count, best of `repeats` runs.
pub fn guest_speed(
    path: &Path,
    shards: u32,
    threads: &[usize],
    repeats: usize,
) -> Result<Vec<Speed>> {
    let model = OpenModel::open(path)?;
    let plan = model.plan(&PlanOptions {
        shards: Some(shards),
        ..PlanOptions::default()
    })?;
    let store = WeightStore::new(plan, LoadMode::Mmap)?;
    let mut out = Vec::new();
    for &t in threads {
        let mut session = Session::new(&store, model.gguf.metadata(), 1024, t)?;
        let prompt = tokens(512, session.hyperparameters().vocab);
        let (mut best_pp, mut best_tg) = (0f64, 0f64);
        for _ in 0..repeats.max(1) {
            session.truncate(0);
            let started = Instant::now();
            session.eval(&prompt)?;
            best_pp = best_pp.max(512.0 / started.elapsed().as_secs_f64());
            session.truncate(0);
            let started = Instant::now();
            for &token in &prompt[..128] {
                session.eval(&[token])?;
            }
            best_tg = best_tg.max(128.0 / started.elapsed().as_secs_f64());
        }
        out.push(Speed {
            threads: t,
            prompt: best_pp,
            generate: best_tg,
        });
    }
    Ok(out)
}

/// llama-bench's `pp512` and `tg128` for each thread count (`-r repeats`).
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
            let rate = |prompt: bool| {
                runs.as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| {
                        r["n_threads"].as_u64() == Some(t as u64)
                            && (r["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt
                    })
                    .and_then(|r| r["avg_ts"].as_f64())
                    .context("llama-bench printed no such run")
            };
            Ok(Speed {
                threads: t,
                prompt: rate(true)?,
                generate: rate(false)?,
            })
        })
        .collect()
}
