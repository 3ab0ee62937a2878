//! shardload against llama.cpp's own GGUF test corpus: the handcrafted files of
//! llama.cpp's `tests/test-gguf.cpp` (every file class, good and bad, for three
//! seeds), with llama.cpp's verdict on each, as `scripts/llama-gguf-corpus`
//! dumped them into `tests/vectors/gguf-corpus/`.
//!
//! shardload's reader always checks that every tensor's bytes lie in the file,
//! so its verdict is held to llama.cpp's `with_data` verdict (`gguf_init_from_file`
//! asked for a context, which reads the data too); a file llama.cpp accepts
//! from its header alone but not with its data must be refused by shardload
//! for where the data lies. A file both accept must read alike (metadata keys
//! and types, tensor names, types, shapes, offsets and sizes), and plan.
//!
//! One documented exception: the corpus writes random bytes as bool values,
//! which llama.cpp reads as `byte != 0`; shardload keeps the GGUF spec's rule
//! (0 or 1, anything else invalid). Such a file must be refused for that
//! reason, at a bool byte that is neither 0 nor 1; with those bytes set to 1
//! (what llama.cpp reads) it must then get llama.cpp's verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;
use shard_planner::{PlanOptions, WASM_PAGE};
use shardload_gguf::{Error, GgmlType, GgufFile, Header, Value, parse};
use shardload_store::OpenModel;
use shardload_suite::root;

/// What shardload made of one file, the bool rule aside.
struct Verdict {
    /// The header, or why the file was refused.
    result: Result<Header, Error>,
    /// The bool bytes that were neither 0 nor 1 (offset, key), set to 1 to go on.
    lenient_bools: Vec<(u64, String)>,
    /// The bytes that gave `result`: the file, with those bools set to 1.
    bytes: Vec<u8>,
}

/// Parses `bytes`, refusing bools as shardload does, then reading each refused
/// bool as llama.cpp does (true) and parsing again.
fn parse_bool_rule_aside(path: &Path, mut bytes: Vec<u8>) -> Verdict {
    let mut lenient_bools = Vec::new();
    loop {
        match parse(path, &bytes) {
            Err(error) if error.message.starts_with("bool is ") => {
                let at = error.offset as usize;
                assert!(
                    bytes[at] > 1,
                    "{error}: the byte at {at} is {}, a valid bool",
                    bytes[at]
                );
                for says in [
                    "GGUF spec",
                    "GGUF_METADATA_VALUE_TYPE_BOOL",
                    "llama.cpp and gguf-py are lenient",
                ] {
                    assert!(error.message.contains(says), "{error}");
                }
                bytes[at] = 1;
                // The field is `metadata KEY` or `metadata KEY[i]`.
                let key = error
                    .field
                    .strip_prefix("metadata ")
                    .unwrap_or(&error.field);
                let key = key.split('[').next().unwrap_or(key).to_string();
                lenient_bools.push((error.offset, key));
            }
            result => {
                return Verdict {
                    result,
                    lenient_bools,
                    bytes,
                };
            }
        }
    }
}

/// The GGUF type name llama.cpp's `gguf_type_name` gives a value (arrays as
/// `arr:ELEMENT`; an empty array's element type is not kept).
fn gguf_type_name(value: &Value) -> String {
    match value {
        Value::U8(_) => "u8".into(),
        Value::I8(_) => "i8".into(),
        Value::U16(_) => "u16".into(),
        Value::I16(_) => "i16".into(),
        Value::U32(_) => "u32".into(),
        Value::I32(_) => "i32".into(),
        Value::F32(_) => "f32".into(),
        Value::Bool(_) => "bool".into(),
        Value::String(_) => "str".into(),
        Value::Array(items) => match items.first() {
            Some(item) => format!("arr:{}", gguf_type_name(item)),
            None => "arr".into(),
        },
        Value::U64(_) => "u64".into(),
        Value::I64(_) => "i64".into(),
        Value::F64(_) => "f64".into(),
    }
}

/// The header shardload read equals the one llama.cpp read.
fn assert_reads_alike(what: &str, ours: &Header, theirs: &Json) {
    assert_eq!(u64::from(ours.version), theirs["version"], "{what} version");
    assert_eq!(ours.alignment, theirs["alignment"], "{what} alignment");
    let kv = theirs["kv"].as_array().unwrap();
    assert_eq!(ours.metadata.len(), kv.len(), "{what} metadata count");
    for ((key, value), theirs) in ours.metadata.iter().zip(kv) {
        let ty = gguf_type_name(value);
        let their_ty = theirs[1].as_str().unwrap();
        assert_eq!(key, &theirs[0], "{what} metadata key");
        assert!(
            their_ty == ty || (ty == "arr" && their_ty.starts_with("arr:")),
            "{what} {key}: {ty} vs llama.cpp's {their_ty}"
        );
    }
    let tensors = theirs["tensors"].as_array().unwrap();
    assert_eq!(ours.tensors.len(), tensors.len(), "{what} tensor count");
    if !tensors.is_empty() {
        // llama.cpp pads the data offset only when there are tensors.
        assert_eq!(
            ours.data_offset, theirs["data_offset"],
            "{what} data offset"
        );
    }
    for (ours, theirs) in ours.tensors.iter().zip(tensors) {
        let name = &ours.name;
        assert_eq!(name, &theirs["name"], "{what} tensor name");
        assert_eq!(
            u64::from(ours.ty.id()),
            theirs["type"],
            "{what} {name} type"
        );
        let mut ne = ours.dims.clone();
        ne.resize(4, 1);
        let their_ne: Vec<u64> = theirs["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(ne, their_ne, "{what} {name} shape");
        assert_eq!(ours.offset, theirs["offset"], "{what} {name} offset");
        assert_eq!(ours.bytes, theirs["size"], "{what} {name} bytes");
    }
}

#[test]
fn every_file_of_llama_cpp_corpus_gets_llama_cpp_verdict_the_bool_rule_aside() {
    let vectors = root().join("tests/vectors/gguf-corpus");
    let manifest: Json =
        serde_json::from_str(&std::fs::read_to_string(vectors.join("manifest.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(vectors.join("files.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar unpacks the corpus");
    assert!(status.success(), "tar -xzf files.tar.gz failed");

    let files = manifest["files"].as_array().unwrap();
    let mut classes: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let (mut accepted, mut planned, mut lenient) = (0, 0, 0);
    for entry in files {
        let class = entry["class"].as_str().unwrap();
        let seed = entry["seed"].as_u64().unwrap();
        classes.entry(class).or_default().insert(seed);
        let what = format!("{class} (seed {seed})");
        let header_only = entry["llama_cpp"]["header_only"].as_bool().unwrap();
        let with_data = entry["llama_cpp"]["with_data"].as_bool().unwrap();
        // The manifest agrees with what test-gguf itself expects of the class.
        let asked = if class.starts_with("DATA_") {
            with_data
        } else {
            header_only
        };
        assert_eq!(
            asked, entry["test_gguf_expects"],
            "{what}: llama.cpp's verdict is not what test-gguf expects"
        );

        let path = dir.path().join(entry["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, entry["bytes"], "{what} size");
        let verdict = parse_bool_rule_aside(&path, bytes);
        let llama_error = entry["llama_cpp_error"].as_str().unwrap_or("");

        // GgufFile (what every command opens) refuses the file as it is when
        // it has such bools, and otherwise agrees with parse.
        let opened = GgufFile::open(&path);
        if verdict.lenient_bools.is_empty() {
            assert_eq!(opened.is_ok(), verdict.result.is_ok(), "{what}");
        } else {
            let error = opened.err().expect("a file with a bool of 2..=255");
            assert!(error.message.starts_with("bool is "), "{what}: {error}");
            assert_eq!(error.offset, verdict.lenient_bools[0].0, "{what}: {error}");
            lenient += 1;
        }

        match (&verdict.result, with_data) {
            (Ok(header), true) => {
                accepted += 1;
                assert_reads_alike(&what, header, entry);
                // The bools are llama.cpp's too: every one shardload had to
                // read leniently is a key llama.cpp read as bool.
                for (at, key) in &verdict.lenient_bools {
                    let ty = entry["kv"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|kv| kv[0] == key.as_str())
                        .map(|kv| kv[1].as_str().unwrap());
                    assert!(
                        matches!(ty, Some("bool" | "arr:bool")),
                        "{what}: the bool at {at} is in {key}, which llama.cpp read as {ty:?}"
                    );
                }
                // And it plans, as `shardload plan` would (bools set to 1).
                let file = dir.path().join(format!("{seed}-{class}.gguf"));
                std::fs::write(&file, &verdict.bytes).unwrap();
                let model = OpenModel::open(&file).unwrap();
                let plan = model.plan(&PlanOptions::default());
                if header.tensors.is_empty() {
                    let error = format!("{:#}", plan.unwrap_err());
                    assert!(
                        error.contains("the model has no tensors"),
                        "{what}: {error}"
                    );
                } else {
                    let plan = plan.unwrap_or_else(|e| panic!("{what}: {e:#}"));
                    assert_eq!(plan.tensors.len(), header.tensors.len(), "{what}");
                    assert!(plan.shards.iter().all(|s| s.bytes % WASM_PAGE == 0));
                    planned += 1;
                }
            }
            (Err(error), false) => {
                // Where llama.cpp reads the header but not the data, so does shardload.
                if header_only {
                    assert!(
                        error.message.contains("past the end")
                            || error.message.contains("run past"),
                        "{what}: llama.cpp read its header, shardload refused it for {error}"
                    );
                }
            }
            (Ok(_), false) => panic!("{what}: shardload accepts it, llama.cpp says {llama_error}"),
            (Err(error), true) => panic!("{what}: llama.cpp accepts it, shardload says {error}"),
        }
    }

    println!(
        "{} files: {accepted} accepted as llama.cpp does ({planned} planned), \
         {lenient} refused for the bool rule alone or first",
        files.len()
    );
    // The sample covers every class of test_handcrafted_file, for every seed.
    assert_eq!(classes.len(), 34, "{:?}", classes.keys());
    let seeds = &classes["DATA_SUCCESS"];
    assert!(seeds.len() >= 3, "{seeds:?}");
    assert!(classes.values().all(|s| s == seeds), "{classes:?}");
    // The good files with tensor data were planned, and the bool rule was met.
    assert!(planned >= 3 * seeds.len(), "{planned} planned");
    assert!(
        accepted > planned && lenient > 0,
        "{accepted} accepted, {lenient} lenient"
    );
}

#[test]
fn the_corpus_plans_tensors_of_every_type_llama_cpp_writes() {
    // DATA_SUCCESS files draw their tensor types at random from all of ggml's:
    // together they hold every type in shardload's table.
    let manifest: Json = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/vectors/gguf-corpus/manifest.json")).unwrap(),
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    for entry in manifest["files"].as_array().unwrap() {
        if entry["class"] == "DATA_SUCCESS" {
            for t in entry["tensors"].as_array().unwrap() {
                seen.insert(t["type"].as_u64().unwrap() as u32);
            }
        }
    }
    let missing: Vec<_> = GgmlType::all()
        .iter()
        .filter(|t| !seen.contains(&t.id()))
        .collect();
    assert!(missing.is_empty(), "no DATA_SUCCESS tensor of {missing:?}");
}
