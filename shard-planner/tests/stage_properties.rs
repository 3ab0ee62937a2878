//! Properties of pipeline stages: how layers are cut among machines, and the
//! stage plan file.

use proptest::prelude::*;
use shard_planner::{LayerWeights, PlanError, StagePlan, balance_layers};

fn weights() -> impl Strategy<Value = LayerWeights> {
    (
        prop::collection::vec(1u64..1000, 1..=12),
        0u64..3000,
        0u64..3000,
    )
        .prop_map(|(layers, first, last)| LayerWeights {
            layers,
            first,
            last,
        })
}

/// Every cut of `layers` layers into `stages` non-empty contiguous ranges.
fn every_cut(layers: usize, stages: usize) -> Vec<Vec<std::ops::Range<usize>>> {
    if stages == 1 {
        return vec![vec![0..layers]];
    }
    (stages - 1..layers)
        .flat_map(|start| {
            every_cut(start, stages - 1)
                .into_iter()
                .map(move |mut cut| {
                    cut.push(start..layers);
                    cut
                })
        })
        .collect()
}

fn worst_fill(w: &LayerWeights, cut: &[std::ops::Range<usize>], memory: &[Option<u64>]) -> f64 {
    cut.iter()
        .zip(memory)
        .map(|(r, m)| {
            let bytes = w.stage_bytes(r.clone()) as f64;
            m.map_or(bytes, |m| bytes / m as f64)
        })
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn stages_cover_every_layer_once_in_order_and_none_is_empty(w in weights(), stages in 1usize..=12) {
        prop_assume!(stages <= w.layers.len());
        let cut = balance_layers(&w, &vec![None; stages]).unwrap();
        prop_assert_eq!(cut.len(), stages);
        prop_assert_eq!(cut[0].start, 0);
        prop_assert_eq!(cut[stages - 1].end, w.layers.len());
        for pair in cut.windows(2) {
            prop_assert_eq!(pair[0].end, pair[1].start);
        }
        prop_assert!(cut.iter().all(|r| !r.is_empty()));
    }

    #[test]
    fn the_fullest_machine_is_as_empty_as_the_brute_force_best(
        w in weights(), stages in 1usize..=4, memory in prop::collection::vec(prop::option::of(1000u64..20_000), 4)
    ) {
        prop_assume!(stages <= w.layers.len());
        let memory = &memory[..stages];
        let best = every_cut(w.layers.len(), stages)
            .iter()
            .map(|cut| worst_fill(&w, cut, memory))
            .fold(f64::INFINITY, f64::min);
        match balance_layers(&w, memory) {
            Ok(cut) => prop_assert_eq!(worst_fill(&w, &cut, memory), best),
            Err(PlanError::StageDoesNotFit { stage, layers, needs, free }) => {
                prop_assert!(needs > free);
                prop_assert_eq!(memory[stage], Some(free));
                prop_assert_eq!(w.stage_bytes(layers), needs);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

#[test]
fn more_stages_than_layers_are_refused_with_both_counts() {
    let w = LayerWeights {
        layers: vec![1, 2, 3],
        first: 0,
        last: 0,
    };
    let e = balance_layers(&w, &[None; 4]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot make 4 stages: the model has only 3 layers"
    );
    assert!(matches!(
        balance_layers(&w, &[]),
        Err(PlanError::ZeroStages)
    ));
}

#[test]
fn a_stage_plan_whose_stages_leave_a_layer_out_is_refused() {
    let text = r#"{"format": "shardload-stages/1", "layers": 4, "stages": []}"#;
    let e = StagePlan::from_json(text).unwrap_err().to_string();
    assert!(e.contains("there are no stages"), "{e}");
    let e = StagePlan::from_json(r#"{"format": "shardload-stages/9", "layers": 4, "stages": []}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("format is \"shardload-stages/9\""), "{e}");
}
