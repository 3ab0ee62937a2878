//! `shardload generate` as a user and a program see it: llama.cpp's greedy
//! text on the real model, and bad input met with a clear error or a clean
//! stop, never a panic, a hang or a trap.

use std::path::Path;
use std::process::{Command, Output};

use shardload_gguf::{GgmlType, GgufWriter, Value};
use shardload_suite::{SMOLLM2, model, root};

fn shardload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A tiny llama (2 heads of 128 over 1 KV head, 1 block, vocab 64) in F32
/// (its query weight in `q_type`), with every key but those in `omit`, and
/// NaN in every norm weight when `nan`.
fn tiny_llama(path: &Path, omit: &[&str], nan: bool, q_type: GgmlType) {
    let (embd, ffn, vocab, kv) = (256u64, 64u64, 64u64, 128u64);
    let mut w = GgufWriter::new();
    let keys = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(128)),
        ("llama.embedding_length", Value::U32(embd as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    for (key, value) in keys {
        if !omit.contains(&key) {
            w.kv(key, value);
        }
    }
    let f32 = GgmlType::F32;
    w.tensor("token_embd.weight", f32, &[embd, vocab])
        .tensor("blk.0.attn_norm.weight", f32, &[embd])
        .tensor("blk.0.attn_q.weight", q_type, &[embd, embd])
        .tensor("blk.0.attn_k.weight", f32, &[embd, kv])
        .tensor("blk.0.attn_v.weight", f32, &[embd, kv])
        .tensor("blk.0.attn_output.weight", f32, &[embd, embd])
        .tensor("blk.0.ffn_norm.weight", f32, &[embd])
        .tensor("blk.0.ffn_gate.weight", f32, &[embd, ffn])
        .tensor("blk.0.ffn_up.weight", f32, &[embd, ffn])
        .tensor("blk.0.ffn_down.weight", f32, &[ffn, embd])
        .tensor("output_norm.weight", f32, &[embd]);
    let norms = [1usize, 6, 10];
    let mut fill = |tensor: usize, offset: u64, buf: &mut [u8]| {
        for (i, chunk) in buf.chunks_exact_mut(4).enumerate() {
            let k = offset as usize / 4 + i;
            let v = if norms.contains(&tensor) {
                if nan { f32::NAN } else { 1.0 }
            } else {
                ((k * 7919 + tensor * 104729) % 2001) as f32 / 10000.0 - 0.1
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    };
    w.write(path, Some(&mut fill)).unwrap();
}

#[test]
fn generate_prints_llama_cpp_greedy_continuation_of_smollm2() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/reference/greedy-smollm2.json")).unwrap(),
    )
    .unwrap();
    let case = &reference["cases"][0];
    assert_eq!(case["name"], "capital");
    let output = shardload(&[
        "generate",
        model(SMOLLM2).to_str().unwrap(),
        "-p",
        case["text"].as_str().unwrap(),
        "-n",
        "32",
        "--temp",
        "0",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["prompt_tokens"], case["prompt_ids"]);
    assert_eq!(report["tokens"], case["generated"]);
    assert_eq!(report["text"], case["generated_text"]);
    for key in ["ready", "prompt", "generate", "first_token"] {
        assert!(
            report["timings_ms"][key].as_f64().is_some(),
            "timings_ms.{key}"
        );
    }
    assert!(report["memory"]["private"].as_u64().unwrap() > 0);
}

#[test]
fn generation_past_the_context_stops_with_a_message() {
    let output = shardload(&[
        "generate",
        model(SMOLLM2).to_str().unwrap(),
        "-p",
        "Hello there",
        "-n",
        "50",
        "--ctx",
        "8",
        "--temp",
        "0",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the context is full"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_prompts_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    let smollm2 = model(SMOLLM2);
    let m = smollm2.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["generate", m, "-f", latin1.to_str().unwrap()],
            "not UTF-8",
        ),
        (&["generate", m, "-p", ""], "the prompt is empty"),
        (
            &["generate", m, "--prompt-tokens", "1,2,3,4,5", "--ctx", "4"],
            "more than --ctx 4",
        ),
        (
            &["generate", m, "--prompt-tokens", "1,49152"],
            "token id 49152 is out of range",
        ),
    ];
    for (args, expected) in cases {
        let output = shardload(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    }
}

#[test]
fn a_missing_hyperparameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-eps.gguf");
    tiny_llama(
        &path,
        &["llama.attention.layer_norm_rms_epsilon"],
        false,
        GgmlType::F32,
    );
    let output = shardload(&[
        "generate",
        path.to_str().unwrap(),
        "--prompt-tokens",
        "1,2",
        "-n",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("missing key llama.attention.layer_norm_rms_epsilon"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn nan_weights_give_some_output_but_no_trap_and_no_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.gguf");
    tiny_llama(&path, &[], true, GgmlType::F32);
    let args = [
        "generate",
        path.to_str().unwrap(),
        "--prompt-tokens",
        "1,2,3",
        "-n",
        "4",
        "--json",
        "--temp",
        "0",
    ];
    let output = shardload(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tokens"].as_array().unwrap().len(), 4);
    // And the same tiny model with finite weights runs too (the NaN is the only difference).
    tiny_llama(&path, &[], false, GgmlType::F32);
    assert!(shardload(&args).status.success());
}

#[test]
fn a_tensor_type_without_a_guest_kernel_is_refused_by_name_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq2.gguf");
    tiny_llama(&path, &[], false, GgmlType::IQ2_XXS);
    let output = shardload(&[
        "generate",
        path.to_str().unwrap(),
        "--prompt-tokens",
        "1,2",
        "-n",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let error = stderr(&output);
    assert!(
        error.contains(
            "tensor blk.0.attn_q.weight has type IQ2_XXS, which the guest has no kernel for"
        ),
        "{error}"
    );
    assert!(!error.contains("trap"), "{error}");
}

#[test]
fn the_summary_starts_on_a_line_of_its_own_even_with_the_profile() {
    // stdout and stderr into one file, as a terminal shows them.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("both.txt");
    let file = std::fs::File::create(&log).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args([
            "generate",
            model(SMOLLM2).to_str().unwrap(),
            "-p",
            "The capital of France is",
        ])
        .args(["-n", "6", "--temp", "0", "--profile", "--threads", "2"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    for start in ["profile (", "  matmul ", "prompt    ", "generated "] {
        assert!(
            text.lines().any(|line| line.starts_with(start)),
            "no line starts with {start:?}:\n{text}"
        );
    }
}
