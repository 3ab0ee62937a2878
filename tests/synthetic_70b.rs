//! The Llama-3-70B Q4_K_M inventory (a sparse synthetic file: header + hole)
//! plans like a real 70B download would.

use std::time::Instant;

use shard_planner::{DEFAULT_MAX_SHARD_SIZE, PlanError, PlanOptions};
use shardload_gguf::synthetic;
use shardload_store::OpenModel;

#[test]
fn llama3_70b_plans_into_four_shards_under_16_gib_and_into_the_fewest_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-3-70b-q4_k_m.gguf");
    synthetic::llama3_70b_q4_k_m().write(&path, None).unwrap();

    let started = Instant::now();
    let model = OpenModel::open(&path).unwrap();
    let four = model
        .plan(&PlanOptions {
            shards: Some(4),
            ..PlanOptions::default()
        })
        .unwrap();
    let fewest = model.plan(&PlanOptions::default()).unwrap();
    eprintln!("open + two 70B plans: {:?}", started.elapsed());

    assert_eq!(model.layout.tensors.len(), 724);
    let data: u64 = model.layout.tensors.iter().map(|t| t.bytes).sum();
    assert_eq!(data, 42_470_588_672);
    assert_eq!(four.shards.len(), 4);
    assert!(
        four.shards
            .iter()
            .all(|s| s.bytes <= DEFAULT_MAX_SHARD_SIZE)
    );
    assert_eq!(
        fewest.shards.len(),
        data.div_ceil(DEFAULT_MAX_SHARD_SIZE) as usize
    );
    let fewer = PlanOptions {
        shards: Some(fewest.shards.len() as u32 - 1),
        ..PlanOptions::default()
    };
    assert!(matches!(
        model.plan(&fewer).unwrap_err().downcast_ref(),
        Some(PlanError::ShardsDoNotFit { .. })
    ));
}
