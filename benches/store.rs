//! On-demand benchmark: `cargo bench --bench store` (after scripts/fetch-models).
//! Time to ready (mmap vs copy), read throughput and decode-step matvec (guest vs native) on the
//! real models and a 3.6 GB random-data synthetic model, as ratios measured
//! in one run. `shardload bench` prints the same report for any model.

use shardload_bench as bench;
use shardload_suite::{GEMMA, SMOLLM2, model};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let synthetic = dir.path().join("llama-3-70b-first-4-blocks-random.gguf");
    shardload_gguf::synthetic::write_random_llama3_70b(&synthetic, 4)?;
    for path in [model(SMOLLM2), model(GEMMA), synthetic] {
        println!("{}", bench::measure(&path, 4, None)?);
    }
    Ok(())
}
