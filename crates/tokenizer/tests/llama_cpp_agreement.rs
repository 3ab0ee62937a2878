//! The real models' tokenizers give exactly llama.cpp's ids on every committed
//! case (tests/reference/tokenize-*.json, written by scripts/llama-reference
//! with `llama-tokenize`), with special tokens parsed and not.

use shardload_gguf::GgufFile;
use shardload_suite::{GEMMA, SMOLLM2, model, root};
use shardload_tokenizer::Tokenizer;

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
    let file = GgufFile::open(model(model_file)).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
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
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from llama.cpp:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_ids_equal_llama_cpp_on_every_case() {
    agrees_with_llama_cpp(SMOLLM2, "tokenize-smollm2.json");
}

#[test]
fn gemma3_ids_equal_llama_cpp_on_every_case() {
    agrees_with_llama_cpp(GEMMA, "tokenize-gemma3.json");
}
