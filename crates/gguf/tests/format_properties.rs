//! The reader against gguf-py and against itself: the type table, the real
//! models, files the writer makes, and corrupted files.

use std::path::Path;

use proptest::prelude::*;
use shardload_gguf::{GgmlType, GgufFile, GgufWriter, Header, Model, Value, parse, synthetic};
use shardload_suite::{GEMMA, SMOLLM2, gguf_ref, model, reference_tensors};

/// Where the type table's sizes come from: ggml, which writes and reads the
/// files (`ggml_blck_size` and `ggml_type_size` of the vendored llama.cpp, as
/// `scripts/llama-gguf-corpus` dumped them into ggml-types.json). gguf-py
/// agrees on every type but these, where the table follows ggml:
const GGUF_PY_DIFFERS: &[(&str, &str)] = &[
    (
        "Q8_1",
        "gguf-py 0.19 says 40 bytes per block; ggml's block_q8_1 is \
         2*sizeof(ggml_half) + QK8_1 = 36 (static_assert in ggml-common.h)",
    ),
    ("Q2_0", "newer than gguf-py 0.19, which does not know it"),
];

#[test]
fn the_type_table_equals_ggml_both_ways() {
    let path = shardload_suite::root().join("tests/vectors/gguf-corpus/ggml-types.json");
    let ggml: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ggml = ggml["types"].as_array().unwrap();
    assert_eq!(ggml.len(), GgmlType::all().len(), "ggml has {ggml:?}");
    for entry in ggml {
        // ggml spells names in lower case but for the K types (`q4_K`).
        let name = entry["name"].as_str().unwrap().to_uppercase();
        let ours =
            GgmlType::from_name(&name).unwrap_or_else(|| panic!("ggml type {name} is missing"));
        assert_eq!(u64::from(ours.id()), entry["id"], "{name} id");
        assert_eq!(ours.block_size(), entry["block_size"], "{name} block size");
        assert_eq!(ours.type_size(), entry["type_size"], "{name} type size");
    }
}

#[test]
fn the_type_table_equals_gguf_py_quant_sizes_but_where_ggml_differs() {
    let theirs = gguf_ref(&["quant-sizes"]);
    let theirs = theirs.as_object().unwrap();
    for &ours in GgmlType::all() {
        let name = ours.name();
        let differs = GGUF_PY_DIFFERS.iter().find(|(n, _)| *n == name);
        let Some(entry) = theirs.get(name) else {
            assert!(
                differs.is_some(),
                "gguf-py lacks {name}, and no reason is listed"
            );
            continue;
        };
        let same = u64::from(ours.id()) == entry["id"]
            && ours.block_size() == entry["block_size"]
            && ours.type_size() == entry["type_size"];
        match differs {
            None => assert!(
                same,
                "{name}: ours {ours:?} {}x{} vs gguf-py {entry}",
                ours.block_size(),
                ours.type_size()
            ),
            // A listed difference that gguf-py has fixed is no longer one.
            Some((_, why)) => assert!(!same, "{name} is listed as differing ({why}) but agrees"),
        }
    }
    for name in theirs.keys() {
        assert!(
            GgmlType::from_name(name).is_some(),
            "gguf-py type {name} is missing"
        );
    }
}

fn real_model_agrees_with_gguf_py(name: &str) {
    let path = model(name);
    let file = GgufFile::open(&path).unwrap();
    let reference = reference_tensors(&path);
    assert_eq!(file.tensors().len(), reference.len());
    for (ours, theirs) in file.tensors().iter().zip(&reference) {
        assert_eq!(ours.name, theirs.name);
        assert_eq!(ours.ty.name(), theirs.ty);
        assert_eq!(ours.dims, theirs.dims);
        assert_eq!(ours.bytes, theirs.bytes);
        assert_eq!(file.header.data_offset + ours.offset, theirs.data_offset);
    }
}

#[test]
fn smollm2_tensor_table_equals_gguf_py() {
    real_model_agrees_with_gguf_py(SMOLLM2);
    let file = GgufFile::open(model(SMOLLM2)).unwrap();
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.block_count(), Some(30));
    assert_eq!(
        file.get("tokenizer.ggml.model").and_then(Value::as_str),
        Some("gpt2")
    );
    assert_eq!(
        file.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(<[_]>::len),
        Some(49152)
    );
}

#[test]
fn gemma_tensor_table_equals_gguf_py() {
    real_model_agrees_with_gguf_py(GEMMA);
    let file = GgufFile::open(model(GEMMA)).unwrap();
    assert_eq!(file.architecture(), Some("gemma3"));
    assert_eq!(file.block_count(), Some(18));
    let tokenizer = file.tokenizer().unwrap();
    assert_eq!((tokenizer.model, tokenizer.tokens.len()), ("llama", 262144));
    assert_eq!(tokenizer.scores.map(<[_]>::len), Some(262144));
    assert_eq!(
        (tokenizer.bos, tokenizer.eos, tokenizer.add_bos),
        (Some(2), Some(1), Some(true))
    );
}

#[test]
fn opening_a_later_file_of_a_split_set_says_to_pass_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let files = shardload_suite::make_split(&model(SMOLLM2), dir.path(), 100);
    let error = Model::open(&files[1]).err().unwrap().to_string();
    assert!(
        error.contains("file 2 of a 3-file split set") && error.contains("first file"),
        "{error}"
    );
    std::fs::remove_file(&files[2]).unwrap();
    let error = Model::open(&files[0]).err().unwrap().to_string();
    assert!(
        error.contains("is missing") && error.contains("split-00003-of-00003.gguf"),
        "{error}"
    );
}

#[test]
fn gguf_py_reads_a_file_written_by_the_writer_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("written.gguf");
    let mut writer = GgufWriter::new();
    writer
        .kv("general.architecture", Value::String("llama".into()))
        .kv("general.alignment", Value::U32(64))
        .tensor("a", GgmlType::Q4_K, &[512, 3])
        .tensor("b", GgmlType::F16, &[7])
        .tensor("c", GgmlType::IQ4_NL, &[64, 2, 2]);
    writer
        .write(
            &path,
            Some(&mut |t, at, buf: &mut [u8]| buf.fill((t as u64 + at) as u8)),
        )
        .unwrap();
    let ours = GgufFile::open(&path).unwrap();
    let theirs = reference_tensors(&path);
    for (o, t) in ours.tensors().iter().zip(&theirs) {
        assert_eq!(
            (o.name.as_str(), o.ty.name(), &o.dims, o.bytes),
            (t.name.as_str(), t.ty.as_str(), &t.dims, t.bytes)
        );
        assert_eq!(ours.header.data_offset + o.offset, t.data_offset);
        assert_eq!(t.data_offset % 64, 0);
    }
}

#[test]
fn the_70b_inventory_is_724_tensors_of_42_47_gb_in_a_sparse_file_gguf_py_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-3-70b.gguf");
    synthetic::llama3_70b_q4_k_m().write(&path, None).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.tensors().len(), 724);
    assert_eq!(
        file.tensors().iter().map(|t| t.bytes).sum::<u64>(),
        42_470_588_672
    );
    let q6k =
        |name: &str| file.tensors().iter().find(|t| t.name == name).unwrap().ty == GgmlType::Q6_K;
    assert!(
        q6k("blk.0.attn_v.weight") && q6k("blk.12.ffn_down.weight") && q6k("blk.75.attn_v.weight")
    );
    assert!(!q6k("blk.10.attn_v.weight") && !q6k("blk.11.ffn_down.weight"));
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        on_disk < 16 << 20,
        "a 42 GB synthetic model takes {on_disk} bytes of disk"
    );
    assert_eq!(reference_tensors(&path).len(), 724);
}

/// Random values of every type, arrays nested a few levels.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f32>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::F32),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        ".{0,20}".prop_map(Value::String),
    ];
    // GGUF arrays hold one element type: build homogeneous ones from one sample.
    leaf.prop_recursive(3, 64, 8, |inner| {
        (inner, 0usize..8).prop_map(|(item, n)| Value::Array(vec![item; n]))
    })
}

fn writer() -> impl Strategy<Value = (GgufWriter, u32)> {
    let tensor = (
        0..GgmlType::all().len(),
        prop::collection::vec(1u64..5, 0..=3),
        1u64..4,
    );
    (
        prop::collection::vec(("[a-z.]{1,12}", value()), 0..6),
        prop::collection::vec(tensor, 0..12),
        prop::sample::select(vec![1u32, 8, 32, 256, 4096]),
    )
        .prop_map(|(kvs, tensors, alignment)| {
            let mut w = GgufWriter::new();
            let mut seen = std::collections::HashSet::new();
            for (key, value) in kvs {
                if seen.insert(key.clone()) && key != "general.alignment" {
                    w.kv(&key, value);
                }
            }
            w.kv("general.alignment", Value::U32(alignment));
            for (i, (ty, mut dims, blocks)) in tensors.into_iter().enumerate() {
                let ty = GgmlType::all()[ty];
                dims.insert(0, blocks * ty.block_size());
                w.tensor(&format!("t{i}"), ty, &dims);
            }
            (w, alignment)
        })
}

/// What every accepted header promises.
fn assert_invariants(header: &Header, file_size: u64) {
    assert!(header.alignment.is_power_of_two());
    assert!(header.data_offset <= file_size);
    let mut spans: Vec<(u64, u64)> = header
        .tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.bytes))
        .collect();
    spans.sort();
    for t in &header.tensors {
        assert_eq!(t.offset % header.alignment, 0);
        assert!(header.data_offset + t.offset + t.bytes <= file_size);
        assert!(!t.dims.is_empty() && t.dims.len() <= 4 && t.name.len() <= 64);
    }
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_written_file_reads_back_as_the_same_table_and_metadata((writer, alignment) in writer()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.gguf");
        let layout = writer.write(&path, Some(&mut |_, _, buf: &mut [u8]| buf.fill(7))).unwrap();
        let file = GgufFile::open(&path).unwrap();
        prop_assert_eq!(file.header.alignment, u64::from(alignment));
        prop_assert_eq!(file.header.data_offset, layout.data_offset);
        prop_assert_eq!(file.tensors().iter().map(|t| t.offset).collect::<Vec<_>>(), layout.offsets);
        let reparsed = parse(Path::new("again"), file.bytes()).unwrap();
        prop_assert_eq!(&reparsed, &file.header);
    }

    #[test]
    fn a_corrupted_or_truncated_file_is_refused_or_valid_never_a_panic(
        (writer, _) in writer(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xff])), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.gguf");
        writer.write(&path, None).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(header) = parse(Path::new("corrupt.gguf"), &bytes) {
            assert_invariants(&header, bytes.len() as u64);
        }
    }
}

#[test]
fn corrupting_a_real_header_anywhere_never_panics() {
    let path = model(SMOLLM2);
    let bytes = std::fs::read(&path).unwrap();
    let header = parse(&path, &bytes).unwrap().data_offset as usize;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let edits = prop::collection::vec((0..header, any::<u8>()), 1..4);
    runner
        .run(&edits, |edits| {
            let mut corrupt = bytes[..header + 4096].to_vec();
            for (at, value) in edits {
                corrupt[at] = value;
            }
            if let Ok(h) = parse(Path::new("corrupt.gguf"), &corrupt) {
                assert_invariants(&h, corrupt.len() as u64);
            }
            Ok(())
        })
        .unwrap();
}
