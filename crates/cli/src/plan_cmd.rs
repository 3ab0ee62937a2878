//! `shardload plan`: print or write a shard plan.

use std::process::ExitCode;

use anyhow::{Context, Result};
use shard_planner::{ModelLayout, Plan};
use shardload_store::OpenModel;

use crate::units::human;
use crate::{PlanArgs, check_model_exists};

pub fn run(args: &PlanArgs) -> Result<ExitCode> {
    check_model_exists(&args.model)?;
    let model = OpenModel::open(&args.model)?;
    if let Some(stages) = args.stages {
        return run_stages(args, &model, stages);
    }
    let plan = model.plan(&args.split.options())?;
    if let Some(path) = &args.output {
        std::fs::write(path, plan.to_json())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", plan.to_json());
    } else {
        print_table(&model, &plan);
        if let Some(path) = &args.output {
            println!("plan written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--stages N`: the stage plan, a line per stage (or its JSON).
fn run_stages(args: &PlanArgs, model: &OpenModel, stages: usize) -> Result<ExitCode> {
    let memory: Vec<Option<u64>> = match args.stage_memory.len() {
        0 => vec![None; stages],
        n if n == stages => args.stage_memory.iter().copied().map(Some).collect(),
        n => anyhow::bail!(
            "--stage-memory gives {n} sizes for --stages {stages}: give one per stage"
        ),
    };
    let plan = shardload_runtime::plan_stages(model, &memory, &args.split.options())?;
    if let Some(path) = &args.output {
        std::fs::write(path, plan.to_json())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", plan.to_json());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "model    {} ({} layers, {} in {} stages)",
        model.name(),
        plan.layers,
        human(model.layout.tensors.iter().map(|t| t.bytes).sum()),
        plan.stages.len()
    );
    println!();
    println!(
        "{:>5}  {:>9}  {:>7}  {:>11}  {:>6}  {:>10}  {:>10}",
        "stage", "layers", "tensors", "tensor data", "shards", "memory", "free"
    );
    for (index, stage) in plan.stages.iter().enumerate() {
        let p = &stage.plan;
        println!(
            "{:>5}  {:>9}  {:>7}  {:>11}  {:>6}  {:>10}  {:>10}",
            index,
            format!("{}..{}", stage.layers.start, stage.layers.end),
            p.tensors.len(),
            human(p.shards.iter().map(|s| s.tensor_bytes).sum()),
            p.shards.len(),
            human(p.shards.iter().map(|s| s.bytes).sum()),
            stage.memory.map_or("-".to_string(), human),
        );
    }
    if let Some(path) = &args.output {
        println!("stage plan written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(model: &OpenModel, plan: &Plan) {
    let files = &plan.model.files;
    let arch = model
        .gguf
        .metadata()
        .architecture()
        .unwrap_or("unknown architecture");
    println!(
        "model    {} ({}, {} tensors, {arch}, {} file{})",
        model.name(),
        human(plan.model.bytes),
        plan.tensors.len(),
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    let shards_asked = plan
        .options
        .shards
        .map_or("fewest".to_string(), |n| n.to_string());
    println!(
        "options  shards {shards_asked}, max shard size {}, boundary {}",
        human(plan.options.max_shard_size),
        plan.options.boundary
    );
    println!();
    println!(
        "{:>5}  {:>10}  {:>8}  {:>7}  {:>11}  {:>7}  {:>9}  first .. last tensor",
        "shard", "memory", "pages", "tensors", "tensor data", "extents", "blocks"
    );
    for shard in &plan.shards {
        let name = |i: usize| plan.tensors[i].span.name.as_str();
        // Blocks may be stored in any order (SmolLM2's are lexicographic), so count them.
        let blocks: std::collections::BTreeSet<u64> = shard
            .tensors
            .iter()
            .filter_map(|&i| ModelLayout::block_of(name(i)))
            .collect();
        let (first, last) = (shard.tensors.first(), shard.tensors.last());
        println!(
            "{:>5}  {:>10}  {:>8}  {:>7}  {:>11}  {:>7}  {:>9}  {} .. {}",
            shard.index,
            human(shard.bytes),
            shard.pages,
            shard.tensors.len(),
            human(shard.tensor_bytes),
            shard.extents.len(),
            blocks.len(),
            first.map_or("-", |&i| name(i)),
            last.map_or("-", |&i| name(i)),
        );
    }
    let memory: u64 = plan.shards.iter().map(|s| s.bytes).sum();
    let pages: u64 = plan.shards.iter().map(|s| s.pages).sum();
    let data: u64 = plan.shards.iter().map(|s| s.tensor_bytes).sum();
    println!(
        "{:>5}  {:>10}  {:>8}  {:>7}  {:>11}",
        "total",
        human(memory),
        pages,
        plan.tensors.len(),
        human(data)
    );
    println!(
        "balance  {:.3} (largest shard / mean shard)",
        plan.balance()
    );
}
