//! `shardload bench`: time to ready and read throughput, as ratios against
//! baselines measured in the same run.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use shardload_bench as bench;

use crate::{BenchArgs, check_model_exists};

/// Where `scripts/build-llama-cpp` puts llama-bench.
const LLAMA_BENCH: &str =
    ".llama.cpp/llama-cpp-python-0.3.36/vendor/llama.cpp/build/bin/llama-bench";

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if args.generate {
        return generation(args);
    }
    let dir = tempfile::tempdir()?;
    let mut models = args.models.clone();
    for model in &models {
        check_model_exists(model)?;
    }
    if args.synthetic_blocks > 0 {
        let path = dir.path().join(format!(
            "llama-3-70b-first-{}-blocks-random.gguf",
            args.synthetic_blocks
        ));
        eprintln!(
            "writing a random-data synthetic model ({} Llama-3-70B blocks) to {}",
            args.synthetic_blocks,
            path.display()
        );
        shardload_gguf::synthetic::write_random_llama3_70b(&path, args.synthetic_blocks)?;
        models.push(path);
    }
    let mut reports = Vec::new();
    for model in &models {
        let report = bench::measure(model, args.shards, args.dot.map(Into::into))?;
        if !args.json {
            println!("{report}");
        }
        reports.push(report);
    }
    if args.json {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let out: Vec<_> = reports
            .iter()
            .map(|r| {
                json!({
                    "model": r.model, "bytes": r.bytes, "shards": r.shards,
                    "ready_ms": {"mmap": ms(r.ready.mmap.ready), "copy": ms(r.ready.copy.ready)},
                    "load_ms": {"mmap": ms(r.ready.mmap.load), "copy": ms(r.ready.copy.load)},
                    "gb_per_s": {
                        "guest_xxh64": r.rates.guest_xxh64, "native_xxh64": r.rates.native_xxh64,
                        "guest_stream": r.rates.guest_stream, "native_stream": r.rates.native_stream,
                    },
                    "dot_product": format!("{:?}", r.dot).to_lowercase(),
                    "decode_step": r.decode.iter().map(|d| json!({
                        "type": d.ty, "bytes": d.bytes,
                        "guest_gb_per_s": {"1": d.guest[0], "2": d.guest[1]},
                        "native_gb_per_s": {"1": d.native[0], "2": d.native[1]},
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--generate`: the forward pass's speed next to llama-bench's, per thread
/// count, from runs of the two interleaved (one each, three times: this
/// machine's speed drifts within minutes) and compared best with best.
fn generation(args: &BenchArgs) -> Result<ExitCode> {
    use shardload_bench::generation::{DEPTH, Speed, barrier_cost, guest_speed, llama_cpp_speed};
    const ROUNDS: usize = 3;
    let llama_bench = args
        .llama_bench
        .clone()
        .or_else(|| Some(std::path::PathBuf::from(LLAMA_BENCH)).filter(|p| p.exists()));
    if llama_bench.is_none() {
        eprintln!("no llama-bench (run scripts/build-llama-cpp or give --llama-bench): guest only");
    }
    let best = |all: Option<Vec<Speed>>, new: Vec<Speed>| match all {
        None => new,
        Some(all) => all.into_iter().zip(&new).map(|(a, b)| a.best(b)).collect(),
    };
    let mut out = Vec::new();
    for model in &args.models {
        check_model_exists(model)?;
        let (mut guest, mut reference) = (None, None);
        for round in 0..ROUNDS {
            let ours = guest_speed(model, args.shards, &args.threads, 1, round == 0)?;
            guest = Some(best(guest, ours));
            if let Some(path) = &llama_bench {
                let theirs = llama_cpp_speed(path, model, &args.threads, 1)?;
                reference = Some(best(reference, theirs));
            }
        }
        let guest = guest.unwrap_or_default();
        if !args.json {
            println!(
                "{}  ({} shards, page cache warm, best of {ROUNDS} interleaved with llama-bench's; {})",
                model.display(),
                args.shards,
                cpu_name()
            );
            println!(
                "{:>7}  {:>8} {:>9} {:>5}  {:>8} {:>9} {:>5}  {:>9} {:>9} {:>5}",
                "threads",
                "pp512",
                "llama.cpp",
                "ratio",
                "tg128",
                "llama.cpp",
                "ratio",
                format!("tg@d{DEPTH}"),
                "llama.cpp",
                "ratio"
            );
            for (k, g) in guest.iter().enumerate() {
                let r = reference.as_ref().map(|r: &Vec<Speed>| &r[k]);
                let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                let ratio = |a: f64, b: Option<f64>| {
                    b.map_or("-".to_string(), |b| format!("{:.0}%", 100.0 * a / b))
                };
                let (pp, tg, deep) = (
                    r.map(|r| r.prompt),
                    r.map(|r| r.generate),
                    r.map(|r| r.generate_deep),
                );
                println!(
                    "{:>7}  {:>8.1} {:>9} {:>5}  {:>8.1} {:>9} {:>5}  {:>9.1} {:>9} {:>5}",
                    g.threads,
                    g.prompt,
                    cell(pp),
                    ratio(g.prompt, pp),
                    g.generate,
                    cell(tg),
                    ratio(g.generate, tg),
                    g.generate_deep,
                    cell(deep),
                    ratio(g.generate_deep, deep),
                );
            }
            println!(
                "aggregate decode tok/s, sequences decoded together (one token each per step):"
            );
            for g in &guest {
                let cells: Vec<String> = g
                    .batched
                    .iter()
                    .map(|(n, rate)| format!("{n} seq {rate:.1}"))
                    .collect();
                println!("{:>7}  {}", g.threads, cells.join("  "));
            }
            for g in guest.iter().filter(|g| g.threads > 1) {
                let cost = barrier_cost(model, g.threads, 5)?;
                println!(
                    "barrier in the guest, {} threads: {:.2} µs",
                    g.threads,
                    cost.as_secs_f64() * 1e6
                );
            }
        }
        let speeds = |v: &[Speed]| {
            v.iter()
                .map(|s| json!({"threads": s.threads, "prompt_tok_per_s": s.prompt, "generate_tok_per_s": s.generate,
                    "generate_at_depth_tok_per_s": s.generate_deep, "depth": DEPTH,
                    "batched_generate_tok_per_s": s.batched.iter().map(|(n, r)| json!({"sequences": n, "tok_per_s": r})).collect::<Vec<_>>()}))
                .collect::<Vec<_>>()
        };
        out.push(json!({
            "model": model.display().to_string(),
            "cpu": cpu_name(),
            "shardload": speeds(&guest),
            "llama_cpp": reference.as_deref().map(speeds),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The CPU's model name (/proc/cpuinfo) and how many this process may use:
/// a speed means little without them.
fn cpu_name() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{name}, {cpus} CPUs")
}
