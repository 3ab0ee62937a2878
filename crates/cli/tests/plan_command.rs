//! `shardload plan` as a user and a program see it.

use std::process::{Command, Output};

use shardload_suite::{GEMMA, SMOLLM2, model, reference_tensors};

fn shardload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_agrees_with_gguf_py(name: &str) {
    let path = model(name);
    let output = shardload(&["plan", path.to_str().unwrap(), "--shards", "4", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["format"], "shardload-plan/1");
    assert_eq!(plan["shards"].as_array().unwrap().len(), 4);
    let tensors = plan["tensors"].as_array().unwrap();
    let reference = reference_tensors(&path);
    assert_eq!(tensors.len(), reference.len());
    for (ours, theirs) in tensors.iter().zip(&reference) {
        assert_eq!(ours["name"], theirs.name.as_str());
        assert_eq!(ours["type"], theirs.ty.as_str());
        assert_eq!(ours["dims"], serde_json::json!(theirs.dims));
        assert_eq!(ours["bytes"], theirs.bytes);
        assert_eq!(ours["file_offset"], theirs.data_offset);
    }
}

#[test]
fn smollm2_plan_json_agrees_with_gguf_py() {
    json_agrees_with_gguf_py(SMOLLM2);
}

#[test]
fn gemma_plan_json_agrees_with_gguf_py() {
    json_agrees_with_gguf_py(GEMMA);
}

#[test]
fn the_table_shows_every_shard_totals_and_balance() {
    let output = shardload(&["plan", model(SMOLLM2).to_str().unwrap(), "--shards", "4"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for needle in [
        "272 tensors",
        "total",
        "balance",
        "token_embd.weight",
        "output_norm.weight",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let shard_rows = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(shard_rows, 4, "{text}");
}

#[test]
fn the_written_plan_file_is_the_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.json");
    let path = model(SMOLLM2);
    let args = [
        "plan",
        path.to_str().unwrap(),
        "--max-shard-size",
        "40MiB",
        "--boundary",
        "layer",
    ];
    let json = shardload(&[&args[..], &["--json"]].concat());
    let written = shardload(&[&args[..], &["-o", file.to_str().unwrap()]].concat());
    assert!(
        json.status.success() && written.status.success(),
        "{}",
        stderr(&written)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        stdout(&json).trim()
    );
}

#[test]
fn bad_usage_exits_2_and_says_what_is_wrong() {
    let output = shardload(&["plan", "x.gguf", "--max-shard-size", "12 parsecs"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown unit"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        shardload(&["plan", "--boundary", "diagonal"]).status.code(),
        Some(2)
    );
}

#[test]
fn a_file_that_is_not_gguf_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.gguf");
    std::fs::write(&file, b"these are not the weights you are looking for").unwrap();
    let output = shardload(&["plan", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("notes.gguf"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_model_without_tensors_says_so_whatever_the_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.gguf");
    // Magic, version 3, no tensors, no metadata, padded to the alignment.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 16]);
    bytes.resize(32, 0);
    std::fs::write(&file, bytes).unwrap();
    for shards in [&[][..], &["--shards", "1"], &["--shards", "4"]] {
        let output = shardload(&[&["plan", file.to_str().unwrap()], shards].concat());
        assert_eq!(output.status.code(), Some(1));
        let error = stderr(&output);
        assert!(error.contains("the model has no tensors"), "{error}");
        assert!(!error.contains("cannot make"), "{error}");
    }
}

#[test]
fn help_teaches_with_examples() {
    let output = shardload(&["plan", "--help"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(
        text.contains("Examples:")
            && text.contains("--max-shard-size")
            && text.contains("--boundary")
    );
}

#[test]
fn stages_cover_the_layers_and_each_holds_only_the_tensors_its_layers_read() {
    let path = model(GEMMA);
    let output = shardload(&["plan", path.to_str().unwrap(), "--stages", "3", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["format"], "shardload-stages/1");
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    let mut next = 0;
    for (index, stage) in stages.iter().enumerate() {
        let (start, end) = (
            stage["layers"]["start"].as_u64().unwrap(),
            stage["layers"]["end"].as_u64().unwrap(),
        );
        assert_eq!(
            start, next,
            "stage {index} starts where the one before ended"
        );
        assert!(end > start);
        next = end;
        for t in stage["plan"]["tensors"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let block = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .map(|b| b.parse::<u64>().unwrap());
            match block {
                Some(b) => assert!((start..end).contains(&b), "stage {index} holds {name}"),
                // Gemma ties its head to the embedding: the first and the last stage read it.
                None => assert!(index == 0 || index == 2, "stage {index} holds {name}"),
            }
        }
    }
    assert_eq!(next, plan["layers"].as_u64().unwrap());
}

#[test]
fn a_stage_that_cannot_fit_its_machine_is_named_with_what_it_needs() {
    let path = model(GEMMA);
    let stages = |extra: &[&str]| {
        let output = shardload(&[&["plan", path.to_str().unwrap(), "--stages"], extra].concat());
        assert_eq!(output.status.code(), Some(1));
        stderr(&output)
    };
    let refused = stages(&["2", "--stage-memory", "100MiB,1GiB"]);
    assert!(
        refused.contains("stage 0 (layers 0..1) needs 182253568 bytes (173.8 MiB) but its machine has 104857600 bytes (100.0 MiB) free"),
        "{refused}"
    );
    let refused = stages(&["2", "--stage-memory", "1GiB"]);
    assert!(
        refused.contains("--stage-memory gives 1 sizes for --stages 2"),
        "{refused}"
    );
    let refused = stages(&["19"]);
    assert!(
        refused.contains("cannot make 19 stages: the model has only 18 layers"),
        "{refused}"
    );
}
