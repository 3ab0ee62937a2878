//! `shardload guest`: write the generated guest module.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};

use crate::GuestArgs;

pub fn run(args: &GuestArgs) -> Result<ExitCode> {
    let wasm = shardload_guest::guest_wasm(
        &shardload_guest::ShardMemories::Private(args.shards),
        shardload_guest::KERNEL_TYPES,
        args.dot.into(),
    )
    .map_err(|e| anyhow!("cannot generate the guest: {e}"))?;
    std::fs::write(&args.output, &wasm)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "{}: guest for {} shard memories ({} dot products), {} bytes",
        args.output.display(),
        args.shards,
        args.dot,
        wasm.len()
    );
    Ok(ExitCode::SUCCESS)
}
