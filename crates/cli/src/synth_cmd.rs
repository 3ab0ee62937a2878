//! `shardload synth`: write a synthetic Llama-3-70B Q4_K_M, for planning and
//! running at 70B scale where no real file fits on the machine or the network.

use std::process::ExitCode;

use anyhow::{Context, Result};
use shardload_gguf::synthetic;

use crate::SynthArgs;
use crate::units::human;

pub fn run(args: &SynthArgs) -> Result<ExitCode> {
    let size = if args.random {
        synthetic::write_random_llama3_70b(&args.output, args.blocks)
    } else {
        let writer = synthetic::llama3_70b_q4_k_m_blocks(args.blocks);
        writer
            .write(&args.output, None)
            .map(|layout| layout.file_size)
    }
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    let kind = if args.random {
        "random data"
    } else {
        "sparse: header + hole"
    };
    println!(
        "{}: Llama-3-70B Q4_K_M inventory, {} blocks, {} ({kind})",
        args.output.display(),
        args.blocks,
        human(size)
    );
    Ok(ExitCode::SUCCESS)
}
