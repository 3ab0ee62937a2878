//! One decode step's matvecs, as a sweep: every row of every 2-D weight whose
//! type the guest has a kernel for, in the plan's tensor order, multiplied by
//! one fixed vector. `shardload bench` times it against native code;
//! `shardload run --sweep` and the browser host (`web/shardload.js`, which
//! follows the same definition) report rows of its output, so a tab's sweep
//! can be compared with wasmtime's bit for bit.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Result;
use shard_planner::Plan;
use shardload_gguf::GgmlType;
use shardload_store::GuestInstance;

/// The tensors a decode step multiplies: 2-D, of a type with a guest kernel.
pub fn weights(plan: &Plan) -> Vec<usize> {
    (0..plan.tensors.len())
        .filter(|&t| plan.tensors[t].span.dims.len() == 2)
        .filter(|&t| {
            GgmlType::from_name(&plan.tensors[t].span.ty)
                .is_some_and(|ty| shardload_guest::KERNEL_TYPES.contains(&ty))
        })
        .collect()
}

/// The vector every weight is multiplied by: `x[i] = (i·7919 mod 1000) / 500 − 1`
/// in f32 arithmetic (any values would do; these are fixed and easy to write in JS).
pub fn input(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Rows of one tensor's output, kept from a sweep for comparison.
#[derive(Clone, Debug)]
pub struct RowSample {
    /// The tensor, by index in the plan.
    pub tensor: usize,
    /// The first row kept.
    pub first_row: u64,
    /// `y[first_row..]`, as many as the tensor has within the asked range.
    pub y: Vec<f32>,
}

/// What one sweep did.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Weight bytes read.
    pub bytes: u64,
    /// Wall time of the matvecs.
    pub elapsed: Duration,
    /// For every swept tensor, its output rows in the asked range.
    pub samples: Vec<RowSample>,
}

impl Sweep {
    /// Weight bytes per second, in GB/s.
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Runs one sweep on one guest instance (all rows of each weight in one call)
/// and keeps `rows` (clamped to each tensor's row count) of every output.
pub fn sweep(guest: &mut GuestInstance, plan: &Plan, rows: Range<u64>) -> Result<Sweep> {
    let mut sweep = Sweep {
        bytes: 0,
        elapsed: Duration::ZERO,
        samples: Vec::new(),
    };
    for t in weights(plan) {
        let span = &plan.tensors[t].span;
        let x = input(span.dims[0] as usize);
        let started = Instant::now();
        let y = guest.matvec(t, 0, span.dims[1], &x)?;
        sweep.elapsed += started.elapsed();
        sweep.bytes += span.bytes;
        let (lo, hi) = (rows.start.min(span.dims[1]), rows.end.min(span.dims[1]));
        sweep.samples.push(RowSample {
            tensor: t,
            first_row: lo,
            y: y[lo as usize..hi.max(lo) as usize].to_vec(),
        });
    }
    Ok(sweep)
}
