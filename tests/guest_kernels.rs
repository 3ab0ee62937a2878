//! The guest's kernels read weights in place from shard memories: dequantize
//! agrees bit for bit with gguf-py, and matvec bit for bit with the native
//! integer matvec and within its stated bound of gguf-py, in every shard.

use std::collections::BTreeMap;

use shard_planner::PlanOptions;
use shardload_gguf::{GgmlType, GgufFile};
use shardload_store::{DotProduct, LoadMode, OpenModel, WeightStore};
use shardload_suite::{GEMMA, SMOLLM2, check_matvec, matvec_references, model, root, test_vector};

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
        for ty in shardload_guest::KERNEL_TYPES.iter().map(|t| t.name()) {
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
        let supported = shardload_guest::KERNEL_TYPES.contains(&t.ty);
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

/// Writes a model of `tensors` (name, type, dims), filled by `fill`, into
/// `dir`, and instantiates a guest over it (one shard).
fn guest_over(
    dir: &std::path::Path,
    tensors: &[(&str, shardload_gguf::GgmlType, &[u64])],
    fill: &mut dyn FnMut(usize, u64, &mut [u8]),
) -> (std::path::PathBuf, shardload_store::GuestInstance) {
    let path = dir.join("model.gguf");
    let mut writer = shardload_gguf::GgufWriter::new();
    writer.kv(
        "general.architecture",
        shardload_gguf::Value::String("test".into()),
    );
    for &(name, ty, dims) in tensors {
        writer.tensor(name, ty, dims);
    }
    writer.write(&path, Some(fill)).unwrap();
    let plan = OpenModel::open(&path)
        .unwrap()
        .plan(&PlanOptions::default())
        .unwrap();
    let (guest, _) = WeightStore::new(plan, LoadMode::Mmap)
        .unwrap()
        .instantiate()
        .unwrap();
    (path, guest)
}

#[test]
fn types_without_a_kernel_are_refused_by_name_never_wrong_numbers() {
    use shardload_gguf::GgmlType::{IQ2_XXS, Q4_K};
    let dir = tempfile::tempdir().unwrap();
    let (_, mut guest) = guest_over(
        dir.path(),
        &[("a", IQ2_XXS, &[256, 2]), ("b", Q4_K, &[256, 2])],
        &mut |_, _, buf: &mut [u8]| buf.fill(0),
    );
    let error = guest.dequantize(0, 0, 1).unwrap_err().to_string();
    assert!(
        error.contains("unsupported type IQ2_XXS in tensor a"),
        "{error}"
    );
    assert_eq!(guest.dequantize(1, 0, 2).unwrap(), vec![0.0; 512]);
}

#[test]
fn float_rows_of_any_length_convert_exactly_as_gguf_py_does_every_bit_pattern() {
    // Rows of 13: one 8-lane step and a 5-element tail per row; the fill walks
    // through all 65536 f16 and bf16 bit patterns (NaN payloads included).
    use shardload_gguf::GgmlType::{BF16, F16};
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0u16;
    let (path, mut guest) = guest_over(
        dir.path(),
        &[("f16", F16, &[13, 5042]), ("bf16", BF16, &[13, 5042])],
        &mut |_, _, buf: &mut [u8]| {
            for pair in buf.chunks_mut(2) {
                pair.copy_from_slice(&next.to_le_bytes()[..pair.len()]);
                next = next.wrapping_add(1);
            }
        },
    );
    let reference = shardload_suite::gguf_ref(&[
        "dequantize",
        path.to_str().unwrap(),
        "f16:0:5042",
        "bf16:0:5042",
    ]);
    let file = GgufFile::open(&path).unwrap();
    for (i, t) in file.tensors().iter().enumerate() {
        let hex = reference[&format!("{}:0:5042", t.name)].as_str().unwrap();
        let expected: Vec<u32> = (0..hex.len())
            .step_by(8)
            .map(|k| {
                u32::from_le_bytes(std::array::from_fn(|b| {
                    u8::from_str_radix(&hex[k + 2 * b..k + 2 * b + 2], 16).unwrap()
                }))
            })
            .collect();
        let start = (file.header.data_offset + t.offset) as usize;
        let mut native = vec![0f32; expected.len()];
        shardload_quant::dequantize(
            t.ty,
            &file.bytes()[start..start + t.bytes as usize],
            &mut native,
        )
        .unwrap();
        let ours = guest.dequantize(i, 0, 5042).unwrap();
        for (what, got) in [("guest", bits(&ours)), ("native", bits(&native))] {
            let differ: Vec<String> = (0..expected.len())
                .filter(|&k| got[k] != expected[k])
                .take(3)
                .map(|k| format!("element {k}: {:#x}, gguf-py {:#x}", got[k], expected[k]))
                .collect();
            assert!(differ.is_empty(), "{what} {}: {differ:?}", t.name);
        }
        let row = guest.dequantize(i, 7, 1).unwrap();
        assert_eq!(bits(&row), expected[7 * 13..8 * 13], "{} row 7", t.name);
    }
}

/// Both guests a plan can get: relaxed SIMD and plain SIMD128 dot products.
fn both_guests(plan: &shard_planner::Plan) -> Vec<(DotProduct, shardload_store::GuestInstance)> {
    [DotProduct::Relaxed, DotProduct::Plain]
        .into_iter()
        .map(|dot| {
            let store =
                WeightStore::with_dot_product(plan.clone(), LoadMode::Mmap, Some(dot)).unwrap();
            assert_eq!(store.dot_product(), dot);
            (dot, store.instantiate().unwrap().0)
        })
        .collect()
}

/// The native matvec of rows `[first, first + rows)` of a plan's tensor, from the file.
fn native_matvec(file: &GgufFile, name: &str, first: u64, rows: u64, x: &[f32]) -> Vec<f32> {
    let t = file.tensors().iter().find(|t| t.name == name).unwrap();
    let row_bytes = t.bytes / t.dims[1..].iter().product::<u64>();
    let start = (file.header.data_offset + t.offset + first * row_bytes) as usize;
    let mut y = vec![0f32; rows as usize];
    shardload_quant::matvec(
        t.ty,
        &file.bytes()[start..start + (rows * row_bytes) as usize],
        x,
        &mut y,
    )
    .unwrap();
    y
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn guest_matvec_is_the_native_algorithm_bit_for_bit_and_within_the_bound_of_gguf_py_in_every_shard()
{
    let path = root().join("tests/vectors/quants.gguf");
    let file = GgufFile::open(&path).unwrap();
    let opened = OpenModel::open(&path).unwrap();
    let x = test_vector(512);
    let types: Vec<&str> = shardload_guest::KERNEL_TYPES
        .iter()
        .map(|t| t.name())
        .collect();
    let rows: Vec<String> = types
        .iter()
        .flat_map(|ty| [0, 1].map(|r| format!("{ty}:{r}")))
        .collect();
    let references = matvec_references(&path, &x, &rows);
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
        for (dot, mut guest) in both_guests(&plan) {
            for &ty in &types {
                let tensor = index[ty];
                let shard = plan.tensors[tensor].shard;
                let y = guest.matvec(tensor, 0, 2, &x).unwrap();
                let what = format!("{ty} in shard {shard} of {shards}, {dot:?} dot");
                if !GgmlType::from_name(ty).is_some_and(GgmlType::is_float) {
                    assert_eq!(
                        bits(&y),
                        bits(&native_matvec(&file, ty, 0, 2, &x)),
                        "{what}"
                    );
                    let second = guest.matvec(tensor, 1, 1, &x).unwrap();
                    assert_eq!(second[0].to_bits(), y[1].to_bits(), "{what}: row 1 alone");
                }
                for (r, &got) in y.iter().enumerate() {
                    if let Err(e) = check_matvec(ty, 512, got, &references[&format!("{ty}:{r}")]) {
                        panic!("{what} row {r}: {e}");
                    }
                }
                assert!(
                    guest.matvec(tensor, 1, 2, &x).is_err(),
                    "{what}: rows past the tensor must trap"
                );
            }
        }
    }
}

#[test]
fn guest_matvec_on_real_tensors_at_every_shard_edge_is_native_bit_for_bit_and_within_the_bound() {
    for name in [SMOLLM2, GEMMA] {
        real_shard_edges(name);
    }
}

fn real_shard_edges(name: &str) {
    let path = model(name);
    let file = GgufFile::open(&path).unwrap();
    let plan = OpenModel::open(&path)
        .unwrap()
        .plan(&PlanOptions {
            shards: Some(4),
            ..PlanOptions::default()
        })
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
    let spec = |t: usize, row: u64| format!("{}:{row}", plan.tensors[t].span.name);
    let mut guests = both_guests(&plan);
    for (n, group) in edges
        .iter()
        .fold(BTreeMap::<u64, Vec<usize>>::new(), |mut m, &t| {
            m.entry(plan.tensors[t].span.dims[0]).or_default().push(t);
            m
        })
    {
        let x = test_vector(n as usize);
        let specs: Vec<String> = group
            .iter()
            .flat_map(|&t| rows_of(t).map(|r| spec(t, r)))
            .collect();
        let references = matvec_references(&path, &x, &specs);
        for &t in &group {
            let span = &plan.tensors[t].span;
            for row in rows_of(t) {
                let native = native_matvec(&file, &span.name, row, 1, &x);
                for (dot, guest) in guests.iter_mut() {
                    let y = guest.matvec(t, row, 1, &x).unwrap();
                    let what = format!(
                        "{name}: {} ({}) row {row} in shard {}, {dot:?} dot",
                        span.name, span.ty, plan.tensors[t].shard
                    );
                    assert_eq!(y[0].to_bits(), native[0].to_bits(), "{what}");
                    if let Err(e) =
                        check_matvec(&span.ty, n as usize, y[0], &references[&spec(t, row)])
                    {
                        panic!("{what}: {e}");
                    }
                }
            }
        }
    }
}

/// Nine rows of random blocks of every quantized kernel type: the guest's
/// matvec over all of them and over an unaligned run (rows 2..8) equals the
/// native one bit for bit, so the kernel that dots four rows at once and the
/// one-row kernel it leaves the remainder to both compute the scalar
/// algorithm's sums (NaN where random f16 scales make one, in both).
#[test]
fn guest_matvec_over_many_rows_four_at_a_time_is_native_bit_for_bit_for_every_type() {
    const ROWS: u64 = 9;
    const ROW_LEN: u64 = 512;
    let types: Vec<GgmlType> = shardload_gguf::KERNEL_TYPES
        .iter()
        .copied()
        .filter(|t| !t.is_float())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.gguf");
    let mut writer = shardload_gguf::GgufWriter::new();
    for ty in &types {
        writer.tensor(&format!("t.{}", ty.name()), *ty, &[ROW_LEN, ROWS]);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut fill = |_: usize, _: u64, buf: &mut [u8]| {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
    };
    writer.write(&path, Some(&mut fill)).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let opened = OpenModel::open(&path).unwrap();
    let x = test_vector(ROW_LEN as usize);
    let same = |a: &[f32], b: &[f32]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(p, q)| p.to_bits() == q.to_bits() || p.is_nan() && q.is_nan())
    };
    for shards in [1, 3] {
        let plan = opened
            .plan(&PlanOptions {
                shards: Some(shards),
                ..PlanOptions::default()
            })
            .unwrap();
        for (dot, mut guest) in both_guests(&plan) {
            for (index, ty) in types.iter().enumerate() {
                let name = format!("t.{}", ty.name());
                let all = guest.matvec(index, 0, ROWS, &x).unwrap();
                let native = native_matvec(&file, &name, 0, ROWS, &x);
                assert!(
                    same(&all, &native),
                    "{name}, {dot:?}: {all:?} != {native:?}"
                );
                assert!(all.iter().any(|v| v.is_finite()), "{name}: no finite row");
                let run = guest.matvec(index, 2, 6, &x).unwrap();
                assert!(same(&run, &native[2..8]), "{name}, {dot:?}, rows 2..8");
            }
        }
    }
}
