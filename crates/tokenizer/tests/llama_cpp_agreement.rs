//! The real models' tokenizers, and every vocabulary of scripts/fetch-vocabs
//! (llama.cpp's own vocabulary-only GGUFs of many model families, and Llama
//! 3's with each other pre-tokenizer), give exactly llama.cpp's ids on every
//! committed case (tests/reference/tokenize-*.json and
//! tests/reference/vocab/, written by scripts/llama-reference), with special
//! tokens parsed and not.

use std::path::Path;

use shardload_gguf::{GgufFile, Value};
use shardload_suite::{GEMMA, QWEN, SMOLLM2, model, root, vocabulary};
use shardload_tokenizer::{Tokenizer, pre_tokenizer_families};

fn cases() -> Vec<(String, Vec<u8>)> {
    let path = root().join("tests/reference/tokenize-cases.json");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the committed cases")).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let bytes = match c.get("hex") {
                Some(hex) => {
                    let hex = hex.as_str().unwrap();
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect()
                }
                None => c["text"].as_str().unwrap().as_bytes().to_vec(),
            };
            (c["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn agrees_with_llama_cpp(model_file: &str, reference: &str) {
    let failures = differences(&model(model_file), reference);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// How the tokenizer of `model_path` differs from llama.cpp's reference ids.
fn differences(model_path: &Path, reference: &str) -> Vec<String> {
    let file = GgufFile::open(model_path).unwrap();
    let tokenizer =
        Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let path = root().join("tests/reference").join(reference);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the committed reference")).unwrap();
    let expected = doc["cases"].as_array().unwrap();
    let cases = cases();
    assert_eq!(
        cases.len(),
        expected.len(),
        "{reference} is stale: run scripts/llama-reference"
    );
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for ((name, text), reference) in cases.iter().zip(expected) {
        assert_eq!(
            name,
            reference["name"].as_str().unwrap(),
            "{reference} is stale"
        );
        for (parse_special, key) in [(true, "ids"), (false, "ids_no_special")] {
            let ours = tokenizer.encode(text, true, parse_special);
            let theirs = ids(&reference[key]);
            if ours != theirs {
                failures.push(format!(
                    "{name} ({key}):\n  ours   {ours:?}\n  llama  {theirs:?}"
                ));
            }
        }
    }
    if !failures.is_empty() {
        failures.insert(
            0,
            format!(
                "{}: {} of {} cases differ from llama.cpp:",
                model_path.display(),
                failures.len(),
                2 * cases.len()
            ),
        );
    }
    failures
}

#[test]
fn smollm2_ids_equal_llama_cpp_on_every_case() {
    agrees_with_llama_cpp(SMOLLM2, "tokenize-smollm2.json");
}

#[test]
fn gemma3_ids_equal_llama_cpp_on_every_case() {
    agrees_with_llama_cpp(GEMMA, "tokenize-gemma3.json");
}

#[test]
fn qwen2_coder_ids_equal_llama_cpp_on_every_case() {
    agrees_with_llama_cpp(QWEN, "tokenize-qwen2-coder.json");
}

/// The committed vocabulary references: (vocabulary name, reference file).
fn vocabulary_references() -> Vec<(String, String)> {
    let mut refs: Vec<(String, String)> = std::fs::read_dir(root().join("tests/reference/vocab"))
        .expect("the committed vocabulary references")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|f| {
            let name = f
                .strip_prefix("tokenize-")?
                .strip_suffix(".json")?
                .to_string();
            Some((name, format!("vocab/{f}")))
        })
        .collect();
    refs.sort();
    refs
}

#[test]
fn every_vocabulary_gives_llama_cpp_ids_on_every_case() {
    let refs = vocabulary_references();
    assert!(refs.len() >= 30, "{} vocabulary references", refs.len());
    let failures: Vec<String> = refs
        .iter()
        .flat_map(|(name, reference)| differences(&vocabulary(name), reference))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_pre_tokenizer_family_is_checked_against_llama_cpp() {
    let checked: Vec<String> = vocabulary_references()
        .iter()
        .filter_map(|(name, _)| {
            let file = GgufFile::open(vocabulary(name)).unwrap();
            let pre = match file.get("tokenizer.ggml.model").and_then(Value::as_str) {
                Some("gpt2") => file.get("tokenizer.ggml.pre").and_then(Value::as_str),
                _ => return None,
            };
            Some(pre.unwrap_or("default").to_string())
        })
        .collect();
    for family in pre_tokenizer_families() {
        assert!(
            family.iter().any(|name| checked.iter().any(|c| c == name)),
            "no vocabulary checks the pre-tokenizer family {family:?}"
        );
    }
}

#[test]
fn vocabulary_only_files_tokenize() {
    let file = GgufFile::open(vocabulary("qwen2")).unwrap();
    assert!(file.header.tensors.is_empty());
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(tokenizer.encode(b"Hello world", true, true), [9707, 1879]);
}
