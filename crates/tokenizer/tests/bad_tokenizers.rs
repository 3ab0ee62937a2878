//! Hostile or broken tokenizers are refused with the key at fault named, and
//! bad ids are errors, not panics. Files are written with the GGUF writer.

use shardload_gguf::{GgufFile, GgufWriter, Value};
use shardload_tokenizer::{Error, Tokenizer};

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A tiny valid byte-level BPE tokenizer: "a", "b", "ab", then edits.
fn bpe(edit: impl FnOnce(&mut Vec<(&'static str, Value)>)) -> Result<Tokenizer, Error> {
    let mut keys = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["a", "b", "ab", "<|end|>"]),
        ),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(3),
            ]),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(3)),
    ];
    edit(&mut keys);
    let mut writer = GgufWriter::new();
    writer.kv("general.architecture", Value::String("llama".into()));
    for (key, value) in keys {
        writer.kv(key, value);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    writer.write(&path, None).unwrap();
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
}

fn error_of(edit: impl FnOnce(&mut Vec<(&'static str, Value)>)) -> String {
    match bpe(edit) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

fn set(keys: &mut Vec<(&'static str, Value)>, key: &'static str, value: Value) {
    keys.retain(|(k, _)| *k != key);
    keys.push((key, value));
}

#[test]
fn the_tiny_tokenizer_merges_and_parses_its_control_token() {
    let t = bpe(|_| {}).unwrap();
    assert_eq!(t.encode(b"ab<|end|>ba", false, true), [2, 3, 1, 0]);
    // Not parsed, the control text is plain text, whose bytes this vocabulary
    // lacks: dropped, as llama.cpp drops them.
    assert_eq!(t.encode(b"ab<|end|>", false, false), [2]);
    assert!(t.is_control(3).unwrap() && t.is_eog(3));
    assert_eq!(t.eot(), Some(3));
}

#[test]
fn a_missing_model_key_is_named() {
    let e = error_of(|k| k.retain(|(key, _)| *key != "tokenizer.ggml.model"));
    assert!(e.starts_with("tokenizer.ggml.model: missing"), "{e}");
}

#[test]
fn an_unknown_pre_tokenizer_is_named_with_its_value_and_the_supported_list() {
    let e = error_of(|k| set(k, "tokenizer.ggml.pre", Value::String("qwen9".into())));
    assert!(
        e.starts_with("tokenizer.ggml.pre:")
            && e.contains("\"qwen9\"")
            && e.contains("supported: llama3, ")
            && e.contains(" qwen2, "),
        "{e}"
    );
}

#[test]
fn an_unknown_tokenizer_model_is_named() {
    let e = error_of(|k| set(k, "tokenizer.ggml.model", Value::String("t5".into())));
    assert!(
        e.starts_with("tokenizer.ggml.model:") && e.contains("\"t5\""),
        "{e}"
    );
}

#[test]
fn merges_naming_unknown_tokens_are_refused() {
    let e = error_of(|k| set(k, "tokenizer.ggml.merges", strings(&["a c"])));
    assert!(
        e.starts_with("tokenizer.ggml.merges: merge 0 names \"c\""),
        "{e}"
    );
    let e = error_of(|k| set(k, "tokenizer.ggml.merges", strings(&["b a"])));
    assert!(
        e.starts_with("tokenizer.ggml.merges: merge 0 names \"ba\""),
        "{e}"
    );
    let e = error_of(|k| set(k, "tokenizer.ggml.merges", strings(&["ab"])));
    assert!(e.starts_with("tokenizer.ggml.merges: merge 0"), "{e}");
}

#[test]
fn a_token_list_that_is_not_strings_is_refused() {
    let e = error_of(|k| {
        set(
            k,
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::U32(7), Value::U32(8)]),
        )
    });
    assert!(
        e.starts_with("tokenizer.ggml.tokens: entry 0 is U32(7), not a string"),
        "{e}"
    );
    let e = error_of(|k| set(k, "tokenizer.ggml.tokens", Value::String("abc".into())));
    assert!(
        e.starts_with("tokenizer.ggml.tokens: expected an array"),
        "{e}"
    );
}

#[test]
fn special_ids_out_of_range_and_wrong_types_are_named() {
    let e = error_of(|k| set(k, "tokenizer.ggml.bos_token_id", Value::U32(4)));
    assert!(
        e.starts_with("tokenizer.ggml.bos_token_id: token id 4 is out of range"),
        "{e}"
    );
    let e = error_of(|k| set(k, "tokenizer.ggml.eos_token_id", Value::I32(-1)));
    assert!(
        e.starts_with("tokenizer.ggml.eos_token_id: expected an integer"),
        "{e}"
    );
    let e = error_of(|k| set(k, "tokenizer.ggml.add_bos_token", Value::U8(1)));
    assert!(
        e.starts_with("tokenizer.ggml.add_bos_token: expected a bool"),
        "{e}"
    );
    let e = error_of(|k| {
        set(k, "tokenizer.ggml.add_eos_token", Value::Bool(true));
    });
    assert!(e.starts_with("tokenizer.ggml.eos_token_id: missing"), "{e}");
    let e = error_of(|k| {
        set(
            k,
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1)]),
        )
    });
    assert!(
        e.starts_with("tokenizer.ggml.token_type: 1 types for 4 tokens"),
        "{e}"
    );
}

#[test]
fn sentencepiece_without_byte_tokens_is_refused() {
    let e = error_of(|k| set(k, "tokenizer.ggml.model", Value::String("llama".into())));
    assert!(
        e.starts_with("tokenizer.ggml.tokens: no byte-fallback token <0x00>"),
        "{e}"
    );
}

#[test]
fn ids_out_of_range_are_errors_when_decoding() {
    let t = bpe(|_| {}).unwrap();
    for result in [
        t.decode(&[0, 4]).map(drop),
        t.piece(4).map(drop),
        t.decoder().push(u32::MAX).map(drop),
    ] {
        let e = result.unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("4 tokens"), "{e}");
    }
}
