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

/// `--generate`: the forward pass's speed next to llama-bench's, per thread count.
fn generation(args: &BenchArgs) -> Result<ExitCode> {
    use shardload_bench::generation::{Speed, barrier_cost, guest_speed, llama_cpp_speed};
    let llama_bench = args
        .llama_bench
        .clone()
        .or_else(|| Some(std::path::PathBuf::from(LLAMA_BENCH)).filter(|p| p.exists()));
    let mut out = Vec::new();
    for model in &args.models {
        check_model_exists(model)?;
        let guest = guest_speed(model, args.shards, &args.threads, 3)?;
        let reference: Option<Vec<Speed>> = match &llama_bench {
            Some(path) => Some(llama_cpp_speed(path, model, &args.threads, 3)?),
            None => {
                eprintln!(
                    "no llama-bench (run scripts/build-llama-cpp or give --llama-bench): guest only"
                );
                None
            }
        };
        if !args.json {
            println!(
                "{}  ({} shards, page cache warm, best of 3)",
                model.display(),
                args.shards
            );
            println!(
                "{:>7}  {:>10} {:>10} {:>6}  {:>10} {:>10} {:>6}",
                "threads", "pp512", "llama.cpp", "ratio", "tg128", "llama.cpp", "ratio"
            );
            for (k, g) in guest.iter().enumerate() {
                let r = reference.as_ref().map(|r| (r[k].prompt, r[k].generate));
                let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                let ratio = |a: f64, b: Option<f64>| {
                    b.map_or("-".to_string(), |b| format!("{:.0}%", 100.0 * a / b))
                };
                println!(
                    "{:>7}  {:>10.1} {:>10} {:>6}  {:>10.1} {:>10} {:>6}",
                    g.threads,
                    g.prompt,
                    cell(r.map(|r| r.0)),
                    ratio(g.prompt, r.map(|r| r.0)),
                    g.generate,
                    cell(r.map(|r| r.1)),
                    ratio(g.generate, r.map(|r| r.1)),
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
                    "batched_generate_tok_per_s": s.batched.iter().map(|(n, r)| json!({"sequences": n, "tok_per_s": r})).collect::<Vec<_>>()}))
                .collect::<Vec<_>>()
        };
        out.push(json!({
            "model": model.display().to_string(),
            "shardload": speeds(&guest),
            "llama_cpp": reference.as_deref().map(speeds),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
