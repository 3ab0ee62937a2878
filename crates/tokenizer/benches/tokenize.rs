//! Tokenizer speed next to llama.cpp's, on the same text and machine, in one
//! run, for the real models and every vocabulary of scripts/fetch-vocabs (on
//! demand: `cargo bench -p shardload-tokenizer`; needs llama.cpp from
//! scripts/build-llama-cpp, scripts/fetch-models and scripts/fetch-vocabs).
//!
//! The text: every committed case (prose, code, eight scripts, emoji, special
//! tokens) repeated to about 1 MB. Ours: `encode` with BOS and special tokens
//! parsed, best of 3. llama.cpp: `llama-tokenize -f FILE --ids` on the text,
//! minus the same on a tiny file (model load and start-up), best of 3.

use std::process::Command;
use std::time::{Duration, Instant};

use shardload_gguf::GgufFile;
use shardload_suite::{GEMMA, QWEN, SMOLLM2, model, root};
use shardload_tokenizer::Tokenizer;

fn corpus() -> Vec<u8> {
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/reference/tokenize-cases.json")).unwrap(),
    )
    .unwrap();
    let mut unit = String::new();
    for case in doc["cases"].as_array().unwrap() {
        if let Some(text) = case["text"].as_str() {
            unit.push_str(text);
            unit.push('\n');
        }
    }
    let mut text = Vec::new();
    while text.len() < 1 << 20 {
        text.extend_from_slice(unit.as_bytes());
    }
    text
}

fn best_of_3(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn llama_tokenize(bin: &str, model: &str, file: &std::path::Path) -> Duration {
    best_of_3(|| {
        let out = Command::new(format!("{bin}/llama-tokenize"))
            .args([
                "-m",
                model,
                "-f",
                file.to_str().unwrap(),
                "--ids",
                "--log-disable",
                "--no-escape",
            ])
            .output()
            .expect("llama-tokenize: run scripts/build-llama-cpp");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

fn main() {
    let bin = String::from_utf8(
        Command::new(root().join("scripts/build-llama-cpp"))
            .output()
            .expect("scripts/build-llama-cpp")
            .stdout,
    )
    .unwrap();
    let bin = bin.trim().lines().last().unwrap().to_string();
    let text = corpus();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("corpus.txt");
    let tiny = dir.path().join("tiny.txt");
    std::fs::write(&big, &text).unwrap();
    std::fs::write(&tiny, "Hello").unwrap();
    let mb = text.len() as f64 / 1e6;
    println!("{:.2} MB of text", mb);
    println!(
        "{:<42} {:>10} {:>10} {:>14} {:>8}",
        "model", "tokens", "shardload", "llama.cpp", "ratio"
    );
    let mut paths: Vec<std::path::PathBuf> = [SMOLLM2, GEMMA, QWEN].map(model).into();
    let mut vocabularies: Vec<_> = std::fs::read_dir(root().join("models/vocab"))
        .expect("models/vocab: run scripts/fetch-vocabs")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    vocabularies.sort();
    paths.extend(vocabularies);
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let mut n = 0;
        let ours = best_of_3(|| n = tokenizer.encode(&text, true, true).len());
        let path = path.to_str().unwrap();
        let theirs =
            llama_tokenize(&bin, path, &big).saturating_sub(llama_tokenize(&bin, path, &tiny));
        let (ours, theirs) = (mb / ours.as_secs_f64(), mb / theirs.as_secs_f64());
        println!(
            "{name:<42} {n:>10} {:>7.1} MB/s {:>9.1} MB/s {:>7.2}x",
            ours,
            theirs,
            ours / theirs
        );
    }
}
