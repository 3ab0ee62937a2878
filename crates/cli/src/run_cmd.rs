//! `shardload run`: build the shard memories, instantiate guests over them,
//! and verify every (or a sample of) tensor: the guest's XXH64 of its bytes,
//! read in place through the routing table, must equal the host's.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use shard_planner::Plan;
use shardload_store::{CompileSource, LoadMode, MemoryUsage, OpenModel, WeightStore};

use crate::units::human;
use crate::{RunArgs, check_model_exists};

/// What one instance's verification found.
struct Verified {
    /// (tensor, guest hash), in verification order.
    hashes: Vec<(usize, u64)>,
    failed: Vec<usize>,
    per_shard: Vec<Duration>,
    total: Duration,
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    check_model_exists(&args.model)?;
    let started = Instant::now();
    let model = OpenModel::open(&args.model)?;
    let plan = args.store.plan(&model)?;
    let plan_time = started.elapsed();

    let mode = args.store.mode();
    let started = Instant::now();
    let mut store = WeightStore::with_options(plan, mode, None, &args.store.cache())?;
    let compile_time = started.elapsed();
    let cached = store.compile_source() == CompileSource::Cached;
    let bar = (mode == LoadMode::Copy).then(|| copy_progress(store.plan(), args.instances.max(1)));
    if let Some(bar) = &bar {
        let bar = bar.clone();
        store.set_progress(std::sync::Arc::new(move |bytes| bar.inc(bytes)));
    }
    let plan = store.plan();
    let selection = select(plan, args.sample);

    let mut reference = HashMap::new();
    for &t in &selection {
        reference.insert(t, store.host_xxh64(t)?);
    }

    let mut instances = Vec::new();
    let mut usage = Vec::new();
    let mut results = Vec::new();
    for k in 0..args.instances.max(1) {
        let (mut guest, timings) = store.instantiate()?;
        let verified = verify(&mut guest, plan, &selection, &reference)?;
        usage.push((k + 1, MemoryUsage::now()?));
        results.push((timings, verified));
        instances.push(guest);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let dot = format!("{:?}", store.dot_product()).to_lowercase();
    let sweep = args
        .sweep
        .then(|| shardload_bench::sweep::sweep(&mut instances[0], plan, args.sweep_rows.clone()))
        .transpose()?;
    // Every instance's verification counts; the first's timings describe a load.
    let failures = failures(results.iter().map(|(_, v)| v));
    let (timings, verified) = &results[0];
    let ready = plan_time + timings.load() + compile_time + timings.instantiate;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let verified_bytes: u64 = selection.iter().map(|&t| plan.tensors[t].span.bytes).sum();
    let gbps = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9;

    if args.json {
        let report = json!({
            "model": model.name(),
            "load": mode.to_string(),
            "instances": instances.len(),
            "shards": plan.shards.iter().map(|s| json!({
                "index": s.index,
                "bytes": s.bytes,
                "tensors": s.tensors.len(),
                "load_ms": ms(timings.load_per_shard[s.index as usize]),
                "verify_ms": ms(verified.per_shard[s.index as usize]),
            })).collect::<Vec<_>>(),
            "tensors": verified.hashes.iter().map(|&(t, hash)| {
                let tensor = &plan.tensors[t];
                json!({
                    "name": tensor.span.name,
                    "shard": tensor.shard,
                    "offset": tensor.offset,
                    "bytes": tensor.span.bytes,
                    "xxh64": format!("{hash:016x}"),
                })
            }).collect::<Vec<_>>(),
            "failed": failures.len(),
            "failures": failures.iter().map(|&(instance, t)| json!({
                "instance": instance, "tensor": plan.tensors[t].span.name,
            })).collect::<Vec<_>>(),
            "timings_ms": {
                "plan": ms(plan_time),
                "load": ms(timings.load()),
                "compile": ms(compile_time),
                "compile_cached": cached,
                "instantiate": ms(timings.instantiate),
                "ready": ms(ready),
                "verify": ms(verified.total),
            },
            "verify_gb_per_s": gbps(verified_bytes, verified.total),
            "sweep": sweep.as_ref().map(|s| json!({
                "dot": dot,
                "matvecs": s.samples.len(),
                "bytes": s.bytes,
                "ms": ms(s.elapsed),
                "gb_per_s": s.gb_per_s(),
                "rows": s.samples.iter().map(|r| json!({
                    "tensor": plan.tensors[r.tensor].span.name,
                    "first_row": r.first_row,
                    "y": r.y,
                })).collect::<Vec<_>>(),
            })),
            "memory": usage.iter().map(|(k, u)| json!({
                "instances": k, "rss": u.rss, "rss_anon": u.rss_anon, "rss_file": u.rss_file,
                "pss": u.pss, "private_dirty": u.private_dirty, "private_clean": u.private_clean,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model     {} ({} tensors, {} shards, load {})",
            model.name(),
            plan.tensors.len(),
            plan.shards.len(),
            mode
        );
        println!();
        println!(
            "{:>5}  {:>10}  {:>8}  {:>9}  {:>9}  {:>7}",
            "shard", "memory", "verified", "load ms", "verify ms", "GB/s"
        );
        for s in &plan.shards {
            let i = s.index as usize;
            let in_shard: Vec<_> = selection
                .iter()
                .filter(|&&t| plan.tensors[t].shard == s.index)
                .collect();
            let bytes: u64 = in_shard.iter().map(|&&t| plan.tensors[t].span.bytes).sum();
            println!(
                "{:>5}  {:>10}  {:>8}  {:>9.2}  {:>9.2}  {:>7.2}",
                s.index,
                human(s.bytes),
                in_shard.len(),
                ms(timings.load_per_shard[i]),
                ms(verified.per_shard[i]),
                gbps(bytes, verified.per_shard[i])
            );
        }
        println!(
            "{:>5}  {:>10}  {:>8}  {:>9.2}  {:>9.2}  {:>7.2}",
            "total",
            human(plan.shards.iter().map(|s| s.bytes).sum()),
            selection.len(),
            ms(timings.load()),
            ms(verified.total),
            gbps(verified_bytes, verified.total)
        );
        println!();
        println!(
            "ready     {:.1} ms = plan {:.1} + {} {:.1} + {} {:.1} + instantiate {:.1}",
            ms(ready),
            ms(plan_time),
            if mode == LoadMode::Mmap {
                "map"
            } else {
                "copy"
            },
            ms(timings.load()),
            if cached { "cached guest" } else { "compile" },
            ms(compile_time),
            ms(timings.instantiate)
        );
        println!(
            "verified  {} of {} tensors ({}) in each of {} instance{}: {} failed",
            selection.len(),
            plan.tensors.len(),
            human(verified_bytes),
            results.len(),
            if results.len() == 1 { "" } else { "s" },
            failures.len()
        );
        if let Some(s) = &sweep {
            println!(
                "sweep     one decode step: {} matvecs over {} in {:.1} ms, {:.2} GB/s ({} dot products)",
                s.samples.len(),
                human(s.bytes),
                ms(s.elapsed),
                s.gb_per_s(),
                dot
            );
        }
        for (k, u) in &usage {
            println!(
                "memory    {k} instance{}: RSS {} (anon {}, file {}), PSS {}, private dirty {}, private clean {}",
                if *k == 1 { "" } else { "s" },
                human(u.rss),
                human(u.rss_anon),
                human(u.rss_file),
                human(u.pss),
                human(u.private_dirty),
                human(u.private_clean)
            );
        }
    }
    for &(instance, t) in &failures {
        eprintln!(
            "shardload: tensor {} failed verification in instance {instance}",
            plan.tensors[t].span.name
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress bar for copying every instance's memories; indicatif draws it
/// only when stderr is a terminal.
fn copy_progress(plan: &Plan, instances: usize) -> indicatif::ProgressBar {
    let bytes: u64 = plan
        .shards
        .iter()
        .flat_map(|s| &s.extents)
        .map(|e| e.bytes)
        .sum();
    let bar = indicatif::ProgressBar::new(bytes * instances as u64);
    let style = indicatif::ProgressStyle::with_template(
        "copying {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("a valid template");
    bar.set_style(style);
    bar
}

/// The tensors to verify: all, or per shard the first, the last and evenly
/// spaced ones between, `sample` in all.
fn select(plan: &Plan, sample: Option<usize>) -> Vec<usize> {
    let mut chosen = Vec::new();
    for shard in &plan.shards {
        let tensors = &shard.tensors;
        match sample {
            Some(n) if n < tensors.len() => {
                let picks = (0..n).map(|i| {
                    if n == 1 {
                        0
                    } else {
                        i * (tensors.len() - 1) / (n - 1)
                    }
                });
                let mut picks: Vec<usize> = picks.map(|i| tensors[i]).collect();
                picks.dedup();
                chosen.extend(picks);
            }
            _ => chosen.extend(tensors),
        }
    }
    chosen
}

/// Every failed verification as (instance, tensor), instances counted from 1:
/// what the report, the messages and the exit code are made of.
fn failures<'a>(instances: impl Iterator<Item = &'a Verified>) -> Vec<(usize, usize)> {
    instances
        .enumerate()
        .flat_map(|(k, v)| v.failed.iter().map(move |&t| (k + 1, t)))
        .collect()
}

fn verify(
    guest: &mut shardload_store::GuestInstance,
    plan: &Plan,
    selection: &[usize],
    reference: &HashMap<usize, u64>,
) -> Result<Verified> {
    let mut verified = Verified {
        hashes: Vec::with_capacity(selection.len()),
        failed: Vec::new(),
        per_shard: vec![Duration::ZERO; plan.shards.len()],
        total: Duration::ZERO,
    };
    for &t in selection {
        let started = Instant::now();
        let hash = guest.xxh64_tensor(t)?;
        let took = started.elapsed();
        verified.per_shard[plan.tensors[t].shard as usize] += took;
        verified.total += took;
        if reference[&t] != hash {
            verified.failed.push(t);
        }
        verified.hashes.push((t, hash));
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(failed: Vec<usize>) -> Verified {
        Verified {
            hashes: Vec::new(),
            failed,
            per_shard: Vec::new(),
            total: Duration::ZERO,
        }
    }

    #[test]
    fn a_failure_in_any_instance_fails_the_run_and_names_the_instance() {
        let instances = [verified(vec![]), verified(vec![7]), verified(vec![3, 9])];
        assert_eq!(failures(instances.iter()), [(2, 7), (3, 3), (3, 9)]);
        assert!(failures([verified(vec![]), verified(vec![])].iter()).is_empty());
    }
}
