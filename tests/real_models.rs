//! Real models, read by shardload and planned, agree with gguf-py tensor by tensor.

use shard_planner::{Boundary, PlanOptions, Router};
use shardload_store::OpenModel;
use shardload_suite::{GEMMA, SMOLLM2, model, reference_tensors};

fn four_shards() -> PlanOptions {
    PlanOptions {
        shards: Some(4),
        ..PlanOptions::default()
    }
}

fn plan_agrees_with_gguf_py(name: &str) {
    let path = model(name);
    let opened = OpenModel::open(&path).unwrap();
    let plan = opened.plan(&four_shards()).unwrap();
    let reference = reference_tensors(&path);
    assert_eq!(plan.tensors.len(), reference.len());
    for (ours, theirs) in plan.tensors.iter().zip(&reference) {
        let span = &ours.span;
        assert_eq!(
            (
                &span.name,
                &span.ty,
                &span.dims,
                span.bytes,
                span.file_offset
            ),
            (
                &theirs.name,
                &theirs.ty,
                &theirs.dims,
                theirs.bytes,
                theirs.data_offset
            ),
        );
    }
    assert_eq!(plan.shards.len(), 4);
    // The largest shard can beat neither a quarter of the model nor its largest
    // tensor, and a sane plan comes within page and alignment slack of that.
    let total: u64 = plan.tensors.iter().map(|t| t.span.bytes).sum();
    let biggest = plan.tensors.iter().map(|t| t.span.bytes).max().unwrap();
    let bound = biggest.max(total / 4);
    let largest = plan.shards.iter().map(|s| s.bytes).max().unwrap();
    assert!(
        largest >= bound && largest <= bound + bound / 10,
        "largest {largest}, bound {bound}"
    );
}

#[test]
fn smollm2_plan_agrees_with_gguf_py_tensor_by_tensor() {
    plan_agrees_with_gguf_py(SMOLLM2);
}

#[test]
fn gemma_plan_agrees_with_gguf_py_tensor_by_tensor() {
    plan_agrees_with_gguf_py(GEMMA);
}

#[test]
fn every_real_tensor_routes_to_its_own_bytes_in_the_file() {
    let path = model(GEMMA);
    let opened = OpenModel::open(&path).unwrap();
    for boundary in [Boundary::Tensor, Boundary::Layer] {
        let plan = opened
            .plan(&PlanOptions {
                shards: Some(3),
                boundary,
                ..PlanOptions::default()
            })
            .unwrap();
        let router = Router::new(&plan);
        for t in &plan.tensors {
            for k in [0, t.span.bytes / 2, t.span.bytes - 1] {
                let (shard, offset) = router.route(t.logical_offset + k).unwrap();
                let extent = plan.shards[shard as usize]
                    .extents
                    .iter()
                    .find(|e| (e.memory_offset..e.memory_offset + e.bytes).contains(&offset))
                    .unwrap();
                assert_eq!(
                    extent.file_offset + offset - extent.memory_offset,
                    t.span.file_offset + k
                );
            }
        }
    }
}
