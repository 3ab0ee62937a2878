//! `shardload tokenize` as a user and a program see it: what llama-tokenize
//! prints for the committed cases (tests/reference/tokenize-*.json).

use std::process::{Command, Output};

use shardload_suite::{GEMMA, SMOLLM2, model, root, vocabulary};

fn shardload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(args)
        .output()
        .unwrap()
}

/// llama-tokenize's ids for the named committed case.
fn reference(file: &str, case: &str, key: &str) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/reference").join(file)).unwrap())
            .unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap()[key]
        .clone()
}

fn case_text(case: &str) -> String {
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/reference/tokenize-cases.json")).unwrap(),
    )
    .unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string()
}

fn json_ids(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["ids"].as_array().unwrap().len(),
        json["pieces"].as_array().unwrap().len()
    );
    json["ids"].clone()
}

#[test]
fn json_ids_are_llama_tokenize_ids_for_both_models() {
    for (name, reference_file) in [
        (SMOLLM2, "tokenize-smollm2.json"),
        (GEMMA, "tokenize-gemma3.json"),
    ] {
        let path = model(name);
        for case in [
            "chat template smollm",
            "chat template gemma",
            "emoji zwj",
            "crlf",
        ] {
            let text = case_text(case);
            let output = shardload(&["tokenize", path.to_str().unwrap(), &text, "--json"]);
            assert_eq!(
                json_ids(&output),
                reference(reference_file, case, "ids"),
                "{name}: {case}"
            );
            let output = shardload(&[
                "tokenize",
                path.to_str().unwrap(),
                &text,
                "--json",
                "--no-special",
            ]);
            assert_eq!(
                json_ids(&output),
                reference(reference_file, case, "ids_no_special"),
                "{name}: {case} --no-special"
            );
        }
    }
}

#[test]
fn a_file_is_tokenized_byte_for_byte_with_the_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prose.txt");
    std::fs::write(&file, case_text("prose")).unwrap();
    // No MODEL: the default model (SmolLM2), run from the workspace root.
    let output = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .current_dir(root())
        .args(["tokenize", "-f", file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(
        json_ids(&output),
        reference("tokenize-smollm2.json", "prose", "ids")
    );
}

#[test]
fn the_table_shows_bos_ids_and_escaped_pieces() {
    let output = shardload(&["tokenize", model(GEMMA).to_str().unwrap(), "Hi\nthere"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["2", "'<bos>'"]
    );
    assert!(text.contains("'\\n'"), "{text}");
    assert!(
        lines.last().unwrap().starts_with("4 tokens, 8 bytes"),
        "{text}"
    );
    let output = shardload(&[
        "tokenize",
        model(GEMMA).to_str().unwrap(),
        "Hi",
        "--no-bos",
        "--json",
    ]);
    assert_eq!(json_ids(&output)[0], 10979);
}

#[test]
fn text_and_file_together_are_refused() {
    let output = shardload(&["tokenize", "x.gguf", "text", "-f", "file.txt"]);
    assert!(!output.status.success());
    let output = shardload(&["tokenize"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to tokenize"));
}

#[test]
fn a_vocabulary_only_gguf_tokenizes_but_plan_run_and_generate_refuse_it() {
    let path = vocabulary("qwen2");
    let path = path.to_str().unwrap();
    let text = case_text("han kana hangul mix");
    let ids = json_ids(&shardload(&["tokenize", path, &text, "--json"]));
    assert_eq!(
        ids,
        reference("vocab/tokenize-qwen2.json", "han kana hangul mix", "ids")
    );
    for command in [
        vec!["plan", path],
        vec!["run", path],
        vec!["generate", path, "-p", "hi"],
    ] {
        let output = shardload(&command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command:?} accepted it");
        assert!(
            stderr.contains(path) && stderr.contains("the model has no tensors"),
            "{command:?}: {stderr}"
        );
    }
}
