//! `shardload bench`: time to ready and read throughput, as ratios against
//! baselines measured in the same run.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use shardload_bench as bench;

use crate::{BenchArgs, check_model_exists};

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
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
