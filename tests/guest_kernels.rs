//! The guest's dequantize kernels read weights in place from shard memories
//! and agree bit for bit with gguf-py, in every shard of the plan.

use std::collections::BTreeMap;

use shard_planner::PlanOptions;
use shardload_gguf::GgufFile;
use shardload_store::{LoadMode, OpenModel, WeightStore};
use shardload_suite::{GEMMA, SMOLLM2, model, root};

#[test]
fn guest_dequantize_is_bit_exact_with_gguf_py_in_every_shard() {
    let path = root().join("tests/vectors/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let opened = OpenModel::open(&path).unwrap();
    for shards in [1, 3, 5] {
        let plan = opened
            .plan(&PlanOptions {
                shards: Some(shards),
                ..PlanOptions::default()
            })
            .unwrap();
        let index: BTreeMap<String, usize> = plan
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.span.name.clone(), i))
            .collect();
        let store = WeightStore::new(plan.clone(), LoadMode::Mmap).unwrap();
        let (mut guest, _) = store.instantiate().unwrap();
        for &(_, ty, _, _) in shardload_guest::DEQUANTIZE_TYPES {
            let reference = &file.tensors()[index[&format!("{ty}.f32")]];
            let start = (file.header.data_offset + reference.offset) as usize;
            let expected: Vec<u32> = file.bytes()[start..start + reference.bytes as usize]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let tensor = index[ty];
            let both = guest.dequantize(tensor, 0, 2).unwrap();
            let second = guest.dequantize(tensor, 1, 1).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&both),
                expected,
                "{ty} in shard {} of {shards}",
                plan.tensors[tensor].shard
            );
            assert_eq!(bits(&second), expected[512..], "{ty} second row");
            assert!(
                guest.dequantize(tensor, 1, 2).is_err(),
                "{ty}: rows past the tensor must trap"
            );
        }
    }
}

#[test]
fn guest_dequantize_matches_the_native_dequantizer_on_every_real_tensor() {
    for name in [SMOLLM2, GEMMA] {
        real_tensors(name);
    }
}

fn real_tensors(name: &str) {
    let path = model(name);
    let opened = OpenModel::open(&path).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(4),
            ..PlanOptions::default()
        })
        .unwrap();
    let store = WeightStore::new(plan.clone(), LoadMode::Mmap).unwrap();
    let (mut guest, _) = store.instantiate().unwrap();
    let file = GgufFile::open(&path).unwrap();
    for (i, t) in file.tensors().iter().enumerate() {
        let supported = shardload_guest::DEQUANTIZE_TYPES
            .iter()
            .any(|(_, ty, _, _)| *ty == t.ty.name());
        let rows = 3.min(t.dims[1..].iter().product::<u64>());
        if !supported {
            let error = guest.dequantize(i, 0, rows).unwrap_err().to_string();
            assert!(
                error.contains(&format!(
                    "unsupported type {} in tensor {}",
                    t.ty.name(),
                    t.name
                )),
                "{error}"
            );
            continue;
        }
        let row_bytes = (t.bytes / t.dims[1..].iter().product::<u64>()) as usize;
        let start = (file.header.data_offset + t.offset) as usize;
        let mut native = vec![0f32; (rows * t.dims[0]) as usize];
        shardload_quant::dequantize(
            t.ty,
            &file.bytes()[start..start + rows as usize * row_bytes],
            &mut native,
        )
        .unwrap();
        let ours = guest.dequantize(i, 0, rows).unwrap();
        assert!(
            ours.iter()
                .zip(&native)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "tensor {}",
            t.name
        );
    }
}

#[test]
fn types_without_a_kernel_are_refused_by_name_never_wrong_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exotic.gguf");
    let mut writer = shardload_gguf::GgufWriter::new();
    writer
        .kv(
            "general.architecture",
            shardload_gguf::Value::String("test".into()),
        )
        .tensor("a", shardload_gguf::GgmlType::IQ2_XXS, &[256, 2])
        .tensor("b", shardload_gguf::GgmlType::Q4_K, &[256, 2]);
    writer
        .write(&path, Some(&mut |_, _, buf: &mut [u8]| buf.fill(0)))
        .unwrap();
    let plan = OpenModel::open(&path)
        .unwrap()
        .plan(&PlanOptions::default())
        .unwrap();
    let (mut guest, _) = WeightStore::new(plan, LoadMode::Mmap)
        .unwrap()
        .instantiate()
        .unwrap();
    let error = guest.dequantize(0, 0, 1).unwrap_err().to_string();
    assert!(
        error.contains("unsupported type IQ2_XXS in tensor a"),
        "{error}"
    );
    assert_eq!(guest.dequantize(1, 0, 2).unwrap(), vec![0.0; 512]);
}

/// Asserts `got` is within n 2^-24 sum |w x| of the f64 product of `w` and `x`.
fn assert_within_bound(got: f32, w: &[f32], x: &[f32], what: &str) {
    let exact: f64 = w
        .iter()
        .zip(x)
        .map(|(&w, &x)| f64::from(w) * f64::from(x))
        .sum();
    let magnitude: f64 = w
        .iter()
        .zip(x)
        .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
        .sum();
    let bound = w.len() as f64 * 2f64.powi(-24) * magnitude;
    assert!(
        (f64::from(got) - exact).abs() <= bound,
        "{what}: {got} vs {exact} (bound {bound})"
    );
}

fn test_vector(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

#[test]
fn guest_matvec_is_within_the_stated_bound_for_every_type_in_every_shard() {
    let path = root().join("tests/vectors/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let opened = OpenModel::open(&path).unwrap();
    let x = test_vector(512);
    for shards in [1, 3, 5] {
        let plan = opened
            .plan(&PlanOptions {
                shards: Some(shards),
                ..PlanOptions::default()
            })
            .unwrap();
        let index: BTreeMap<String, usize> = plan
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.span.name.clone(), i))
            .collect();
        let (mut guest, _) = WeightStore::new(plan.clone(), LoadMode::Mmap)
            .unwrap()
            .instantiate()
            .unwrap();
        for &(_, ty, _, _) in shardload_guest::DEQUANTIZE_TYPES {
            let reference = &file.tensors()[index[&format!("{ty}.f32")]];
            let start = (file.header.data_offset + reference.offset) as usize;
            let w: Vec<f32> = file.bytes()[start..start + reference.bytes as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let y = guest.matvec(index[ty], 0, 2, &x).unwrap();
            let shard = plan.tensors[index[ty]].shard;
            for r in 0..2 {
                assert_within_bound(
                    y[r],
                    &w[r * 512..(r + 1) * 512],
                    &x,
                    &format!("{ty} row {r} in shard {shard}"),
                );
            }
        }
    }
}

#[test]
fn guest_matvec_on_real_tensors_at_every_shard_edge_is_within_the_bound_of_gguf_py() {
    let path = model(GEMMA);
    let opened = OpenModel::open(&path).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(4),
            ..PlanOptions::default()
        })
        .unwrap();
    let (mut guest, _) = WeightStore::new(plan.clone(), LoadMode::Mmap)
        .unwrap()
        .instantiate()
        .unwrap();
    // The first and last 2-D tensor of every shard; their first and last rows.
    let mut edges = Vec::new();
    for shard in &plan.shards {
        let two_d: Vec<usize> = shard
            .tensors
            .iter()
            .copied()
            .filter(|&t| plan.tensors[t].span.dims.len() == 2)
            .collect();
        edges.extend([two_d[0], two_d[two_d.len() - 1]]);
    }
    let rows_of = |t: usize| [0, plan.tensors[t].span.dims[1] - 1];
    let specs: Vec<String> = edges
        .iter()
        .flat_map(|&t| rows_of(t).map(|row| format!("{}:{row}:1", plan.tensors[t].span.name)))
        .collect();
    let mut args = vec!["dequantize", path.to_str().unwrap()];
    args.extend(specs.iter().map(String::as_str));
    let reference = shardload_suite::gguf_ref(&args);
    for t in edges {
        let span = &plan.tensors[t].span;
        let x = test_vector(span.dims[0] as usize);
        for row in rows_of(t) {
            let hex = reference[&format!("{}:{row}:1", span.name)]
                .as_str()
                .unwrap();
            let w: Vec<f32> = (0..hex.len())
                .step_by(8)
                .map(|i| {
                    f32::from_le_bytes(std::array::from_fn(|k| {
                        u8::from_str_radix(&hex[i + 2 * k..i + 2 * k + 2], 16).unwrap()
                    }))
                })
                .collect();
            let y = guest.matvec(t, row, 1, &x).unwrap();
            assert_within_bound(
                y[0],
                &w,
                &x,
                &format!(
                    "{} ({}) row {row} in shard {}",
                    span.name, span.ty, plan.tensors[t].shard
                ),
            );
        }
    }
}
