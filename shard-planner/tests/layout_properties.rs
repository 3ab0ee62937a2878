//! Properties of plans over random tensor tables: random types and dims,
//! alignments, up to ~1000 tensors, 1-16 shards, models split into 1-5 files.

use proptest::prelude::*;
use shard_planner::{
    Boundary, HOST_PAGE, ModelFile, ModelLayout, Plan, PlanError, PlanOptions, Router, SKIPPED_GAP,
    TensorSpan, WASM_PAGE,
};

/// (name, block size, type size) of the ggml types the generator draws from.
const TYPES: &[(&str, u64, u64)] = &[
    ("F32", 1, 4),
    ("F16", 1, 2),
    ("Q4_0", 32, 18),
    ("Q8_0", 32, 34),
    ("Q4_K", 256, 144),
    ("Q6_K", 256, 210),
];

/// One generated tensor before layout: type, dims, padding after the previous
/// tensor (in alignment units) and the block it belongs to (if any).
type RawTensor = (usize, Vec<u64>, u64, Option<u64>);

fn raw_tensor() -> impl Strategy<Value = (usize, Vec<u64>, u64)> {
    (
        0..TYPES.len(),
        prop::collection::vec(1u64..64, 1..=3),
        1u64..2048,
        0u64..4,
    )
        .prop_map(|(ty, mut dims, row_blocks, pad)| {
            dims.insert(0, row_blocks * TYPES[ty].1);
            (ty, dims, pad)
        })
}

/// Lays raw tensors out in `files` files the way a GGUF writer would: each file
/// has a header, then its tensors at aligned offsets, then a short tail.
fn layout_of(
    raw: Vec<RawTensor>,
    files: usize,
    alignment: u64,
    header: u64,
    tail: u64,
) -> ModelLayout {
    let per_file = raw.len().div_ceil(files).max(1);
    let mut layout = ModelLayout {
        files: Vec::new(),
        alignment,
        tensors: Vec::new(),
    };
    for (file, chunk) in raw.chunks(per_file).enumerate() {
        let data_offset = (header + 97 * file as u64).next_multiple_of(alignment);
        let mut cursor = data_offset;
        for (i, (ty, dims, pad, block)) in chunk.iter().enumerate() {
            let (name, block_size, type_size) = TYPES[*ty];
            let bytes = dims[0] / block_size * type_size * dims[1..].iter().product::<u64>();
            cursor += pad * alignment;
            let name_prefix = block.map_or("misc".to_string(), |b| format!("blk.{b}"));
            layout.tensors.push(TensorSpan {
                name: format!("{name_prefix}.f{file}t{i}.weight"),
                ty: name.to_string(),
                dims: dims.clone(),
                bytes,
                file,
                file_offset: cursor,
            });
            cursor = (cursor + bytes).next_multiple_of(alignment);
        }
        layout.files.push(ModelFile {
            path: format!("model-{:05}-of-{files:05}.gguf", file + 1),
            size: cursor + tail,
            fingerprint: format!("test:{file}"),
            data_offset,
        });
    }
    layout
}

/// Random models: tensors grouped into blocks (with a few non-block tensors
/// at the ends, like token_embd and output) across 1-5 files.
fn model(max_tensors: usize) -> impl Strategy<Value = ModelLayout> {
    (
        prop::collection::vec(raw_tensor(), 1..=max_tensors),
        1usize..=5,
        prop::sample::select(vec![1u64, 8, 32, 64, 4096, 16384]),
        1u64..40_000,
        0u64..5000,
        1usize..6,
    )
        .prop_map(|(raw, files, alignment, header, tail, per_block)| {
            let n = raw.len();
            let raw = raw
                .into_iter()
                .enumerate()
                .map(|(i, (ty, dims, pad))| {
                    let block = (i > 0 && i + 1 < n).then(|| ((i - 1) / per_block) as u64);
                    (ty, dims, pad, block)
                })
                .collect();
            layout_of(raw, files, alignment, header, tail)
        })
}

fn options(shards: Option<u32>, boundary: Boundary) -> PlanOptions {
    PlanOptions {
        shards,
        max_shard_size: u64::MAX / 4,
        boundary,
    }
}

/// The memory a shard holding `tensors` needs, computed from the definition:
/// per file, one extent from the granule below its first tensor to the end of
/// its last; extents placed back to back on granule boundaries; whole pages.
fn reference_shard_bytes(layout: &ModelLayout, tensors: &[usize]) -> u64 {
    let granule = layout.alignment.max(HOST_PAGE);
    let mut memory_end = 0u64;
    let mut files: Vec<usize> = tensors.iter().map(|&t| layout.tensors[t].file).collect();
    files.dedup();
    for file in files {
        let in_file = tensors
            .iter()
            .map(|&t| &layout.tensors[t])
            .filter(|t| t.file == file);
        let start = in_file.clone().map(|t| t.file_offset).min().unwrap() / granule * granule;
        let end = in_file.map(|t| t.file_offset + t.bytes).max().unwrap();
        memory_end = memory_end.next_multiple_of(granule) + (end - start);
    }
    memory_end.next_multiple_of(WASM_PAGE)
}

/// The smallest largest shard over every way to cut `units` (lists of tensors
/// in storage order) into exactly `shards` contiguous shards.
fn brute_force_best(layout: &ModelLayout, units: &[Vec<usize>], shards: usize) -> u64 {
    fn go(layout: &ModelLayout, units: &[Vec<usize>], shards: usize) -> u64 {
        if shards == 1 {
            return reference_shard_bytes(layout, &units.concat());
        }
        (1..=units.len() - (shards - 1))
            .map(|take| {
                reference_shard_bytes(layout, &units[..take].concat()).max(go(
                    layout,
                    &units[take..],
                    shards - 1,
                ))
            })
            .min()
            .unwrap()
    }
    go(layout, units, shards)
}

/// Tensors in storage order, grouped into blocks when `layer` is set.
fn storage_units(layout: &ModelLayout, boundary: Boundary) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..layout.tensors.len()).collect();
    order.sort_by_key(|&i| (layout.tensors[i].file, layout.tensors[i].file_offset));
    let mut units: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let block = ModelLayout::block_of(&layout.tensors[i].name);
        let joins = boundary == Boundary::Layer
            && block.is_some()
            && units
                .last()
                .is_some_and(|u| ModelLayout::block_of(&layout.tensors[u[0]].name) == block);
        match units.last_mut() {
            Some(unit) if joins => unit.push(i),
            _ => units.push(vec![i]),
        }
    }
    units
}

fn boundary() -> impl Strategy<Value = Boundary> {
    prop_oneof![Just(Boundary::Tensor), Just(Boundary::Layer)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_tensor_lies_in_exactly_one_shard(layout in model(1000), shards in 1u32..=16, boundary in boundary()) {
        let Ok(plan) = Plan::new(&layout, &options(Some(shards), boundary)) else {
            prop_assume!(false);
            unreachable!()
        };
        prop_assert_eq!(plan.shards.len(), shards as usize);
        let mut seen = vec![0; layout.tensors.len()];
        for shard in &plan.shards {
            for &t in &shard.tensors {
                seen[t] += 1;
                prop_assert_eq!(plan.tensors[t].shard, shard.index);
            }
        }
        prop_assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn shards_are_whole_pages_within_the_cap_and_sized_by_definition(
        layout in model(300), cap_pages in 1u64..400, boundary in boundary()
    ) {
        let cap = cap_pages * WASM_PAGE;
        let options = PlanOptions { shards: None, max_shard_size: cap, boundary };
        match Plan::new(&layout, &options) {
            Ok(plan) => {
                for shard in &plan.shards {
                    prop_assert!(shard.bytes <= cap);
                    prop_assert_eq!(shard.bytes, shard.pages * WASM_PAGE);
                    prop_assert_eq!(shard.bytes, reference_shard_bytes(&layout, &shard.tensors));
                }
            }
            Err(PlanError::UnitTooLarge { bytes, .. }) => prop_assert!(bytes > cap),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn tensors_never_overlap_and_keep_their_alignment_in_memory(layout in model(1000), shards in 1u32..=16) {
        let Ok(plan) = Plan::new(&layout, &options(Some(shards), Boundary::Tensor)) else {
            prop_assume!(false);
            unreachable!()
        };
        for shard in &plan.shards {
            let mut spans: Vec<(u64, u64)> = shard
                .tensors
                .iter()
                .map(|&t| (plan.tensors[t].offset, plan.tensors[t].offset + plan.tensors[t].span.bytes))
                .collect();
            spans.sort();
            for pair in spans.windows(2) {
                prop_assert!(pair[0].1 <= pair[1].0, "overlap {:?}", pair);
            }
            prop_assert!(spans.last().unwrap().1 <= shard.bytes);
            for &t in &shard.tensors {
                prop_assert_eq!(plan.tensors[t].offset % layout.alignment, 0);
            }
            for extent in &shard.extents {
                prop_assert_eq!(extent.file_offset % HOST_PAGE, 0);
                prop_assert_eq!(extent.memory_offset % HOST_PAGE, 0);
            }
        }
    }

    #[test]
    fn every_tensor_byte_routes_to_its_memory_and_back_to_its_file_byte(
        layout in model(1000), shards in 1u32..=16, picks in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 64)
    ) {
        let Ok(plan) = Plan::new(&layout, &options(Some(shards), Boundary::Tensor)) else {
            prop_assume!(false);
            unreachable!()
        };
        let router = Router::new(&plan);
        for (pick, within) in picks {
            let t = &plan.tensors[pick.index(plan.tensors.len())];
            let k = within % t.span.bytes;
            let (shard, offset) = router.route(t.logical_offset + k).expect("a tensor byte routes");
            prop_assert_eq!((shard, offset), (t.shard, t.offset + k));
            // Back: the extent that covers this memory offset maps it to the tensor's file byte.
            let extent = plan.shards[shard as usize]
                .extents
                .iter()
                .find(|e| e.memory_offset <= offset && offset < e.memory_offset + e.bytes)
                .expect("a routed byte is in an extent");
            prop_assert_eq!(extent.file, t.span.file);
            prop_assert_eq!(extent.file_offset + (offset - extent.memory_offset), t.span.file_offset + k);
        }
    }

    #[test]
    fn offsets_past_the_tensor_data_route_nowhere(layout in model(200), shards in 1u32..=4, past in 0u64..1 << 40) {
        let Ok(plan) = Plan::new(&layout, &options(Some(shards), Boundary::Tensor)) else {
            prop_assume!(false);
            unreachable!()
        };
        let end = plan.tensors.iter().map(|t| t.logical_offset + t.span.bytes).max().unwrap();
        prop_assert_eq!(Router::new(&plan).route(end + past), None);
    }

    #[test]
    fn layer_boundaries_keep_each_block_in_one_shard(layout in model(1000), shards in 1u32..=16) {
        let Ok(plan) = Plan::new(&layout, &options(Some(shards), Boundary::Layer)) else {
            prop_assume!(false);
            unreachable!()
        };
        let mut block_shard = std::collections::HashMap::new();
        for t in &plan.tensors {
            if let Some(block) = ModelLayout::block_of(&t.span.name) {
                let first = *block_shard.entry(block).or_insert(t.shard);
                prop_assert_eq!(first, t.shard, "block {} straddles shards", block);
            }
        }
    }

    #[test]
    fn largest_shard_equals_the_brute_force_optimum(layout in model(8), shards in 1usize..=8, boundary in boundary()) {
        let units = storage_units(&layout, boundary);
        prop_assume!(shards <= units.len());
        let plan = Plan::new(&layout, &options(Some(shards as u32), boundary)).unwrap();
        let largest = plan.shards.iter().map(|s| s.bytes).max().unwrap();
        prop_assert_eq!(largest, brute_force_best(&layout, &units, shards));
    }

    #[test]
    fn default_options_give_the_fewest_shards_that_fit(layout in model(8), cap_pages in 1u64..64) {
        let cap = cap_pages * WASM_PAGE;
        let units = storage_units(&layout, Boundary::Tensor);
        let fewest = (1..=units.len()).find(|&k| brute_force_best(&layout, &units, k) <= cap);
        let options = PlanOptions { shards: None, max_shard_size: cap, boundary: Boundary::Tensor };
        match (Plan::new(&layout, &options), fewest) {
            (Ok(plan), Some(k)) => prop_assert_eq!(plan.shards.len(), k),
            (Err(PlanError::UnitTooLarge { .. }), None) => {}
            (result, fewest) => prop_assert!(false, "plan {:?} but brute force says {:?}", result.map(|p| p.shards.len()), fewest),
        }
    }

    #[test]
    fn plan_json_round_trips(layout in model(200), shards in 1u32..=16, boundary in boundary()) {
        let Ok(plan) = Plan::new(&layout, &options(Some(shards), boundary)) else {
            prop_assume!(false);
            unreachable!()
        };
        let again = Plan::from_json(&plan.to_json()).unwrap();
        prop_assert_eq!(&again, &plan);
        prop_assert!(again.check_model(&layout).is_ok());
    }

    #[test]
    fn a_subset_of_the_tensors_maps_no_run_of_left_out_bytes_of_a_mebibyte_or_more(
        layout in model(300), shards in 1u32..=4, keep_every in 2usize..5
    ) {
        let kept: std::collections::HashSet<String> = layout
            .tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| i % keep_every == 0)
            .map(|(_, t)| t.name.clone())
            .collect();
        let subset = layout.only(|name| kept.contains(name));
        let Ok(plan) = Plan::new(&subset, &options(Some(shards), Boundary::Tensor)) else {
            prop_assume!(false);
            unreachable!()
        };
        let granule = subset.alignment.max(HOST_PAGE);
        for shard in &plan.shards {
            for extent in &shard.extents {
                let end = extent.file_offset + extent.bytes;
                let mut inside: Vec<(u64, u64)> = shard
                    .tensors
                    .iter()
                    .map(|&t| &plan.tensors[t].span)
                    .filter(|t| t.file == extent.file && t.file_offset >= extent.file_offset && t.file_offset < end)
                    .map(|t| (t.file_offset, t.file_offset + t.bytes))
                    .collect();
                inside.sort();
                prop_assert!(!inside.is_empty(), "an extent maps none of its shard's tensors");
                prop_assert!(inside[0].0 - extent.file_offset < granule);
                prop_assert_eq!(inside.iter().map(|t| t.1).max().unwrap(), end);
                let mut mapped_to = inside[0].1;
                for &(start, stop) in &inside[1..] {
                    prop_assert!(start < mapped_to + SKIPPED_GAP, "a gap of {} bytes is mapped", start - mapped_to);
                    mapped_to = mapped_to.max(stop);
                }
            }
        }
    }
}

#[test]
fn asking_for_more_shards_than_tensors_is_refused() {
    let layout = layout_of(
        vec![(0, vec![16, 2], 0, None), (1, vec![8], 0, None)],
        1,
        32,
        100,
        0,
    );
    let error = Plan::new(&layout, &options(Some(3), Boundary::Tensor)).unwrap_err();
    assert!(
        matches!(
            error,
            PlanError::TooManyShards {
                shards: 3,
                units: 2,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_model_without_tensors_is_refused_as_such_whatever_the_shard_count() {
    let layout = layout_of(Vec::new(), 1, 32, 100, 0);
    for shards in [None, Some(1), Some(4)] {
        for boundary in [Boundary::Tensor, Boundary::Layer] {
            let error = Plan::new(&layout, &options(shards, boundary)).unwrap_err();
            assert!(matches!(error, PlanError::NoTensors), "{error}");
            assert!(
                error.to_string().contains("the model has no tensors"),
                "{error}"
            );
        }
    }
}

#[test]
fn shards_that_cannot_fit_under_the_cap_are_refused_with_the_size_needed() {
    let raw = (0..4).map(|_| (0, vec![64 * 1024], 0, None)).collect();
    let layout = layout_of(raw, 1, 32, 100, 0);
    let options = PlanOptions {
        shards: Some(2),
        max_shard_size: 400 * 1024,
        boundary: Boundary::Tensor,
    };
    let error = Plan::new(&layout, &options).unwrap_err();
    assert!(
        matches!(error, PlanError::ShardsDoNotFit { shards: 2, needed, .. } if needed > 400 * 1024),
        "{error}"
    );
}

#[test]
fn a_tensor_larger_than_the_cap_is_named() {
    let layout = layout_of(vec![(0, vec![1 << 20], 0, None)], 1, 32, 100, 0);
    let options = PlanOptions {
        shards: None,
        max_shard_size: 1 << 20,
        boundary: Boundary::Tensor,
    };
    let error = Plan::new(&layout, &options).unwrap_err().to_string();
    assert!(
        error.contains("misc.f0t0.weight") && error.contains("--max-shard-size"),
        "{error}"
    );
}

#[test]
fn a_plan_for_another_model_is_refused() {
    let layout = layout_of(vec![(0, vec![256, 4], 0, None); 3], 1, 32, 100, 0);
    let plan = Plan::new(&layout, &options(Some(2), Boundary::Tensor)).unwrap();
    let mut changed = layout.clone();
    changed.files[0].fingerprint = "test:other".into();
    assert!(matches!(
        plan.check_model(&changed),
        Err(PlanError::WrongModel(_))
    ));
    let mut resized = layout.clone();
    resized.tensors[1].dims = vec![256, 3];
    assert!(matches!(
        plan.check_model(&resized),
        Err(PlanError::WrongModel(_))
    ));
}

#[test]
fn an_inconsistent_plan_file_is_refused() {
    let layout = layout_of(vec![(0, vec![256, 4], 0, None); 3], 1, 32, 100, 0);
    let plan = Plan::new(&layout, &options(Some(2), Boundary::Tensor)).unwrap();
    let mut moved = plan.clone();
    moved.tensors[2].offset += 32;
    assert!(matches!(
        Plan::from_json(&moved.to_json()),
        Err(PlanError::BadPlan(_))
    ));
    let mut dropped = plan.clone();
    dropped.shards[1].tensors.clear();
    assert!(matches!(
        Plan::from_json(&dropped.to_json()),
        Err(PlanError::BadPlan(_))
    ));
    let other_format = plan
        .to_json()
        .replace("shardload-plan/1", "shardload-plan/9");
    assert!(matches!(
        Plan::from_json(&other_format),
        Err(PlanError::BadPlan(_))
    ));
}
