//! `shardload run` as a user and a program see it.

use std::process::{Command, Output};

use shardload_suite::{GEMMA, SMOLLM2, model, reference_xxh64};

fn shardload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(args)
        .output()
        .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn run_json_hashes_every_tensor_as_python_xxhash_does() {
    let path = model(SMOLLM2);
    let report = json(&shardload(&[
        "run",
        path.to_str().unwrap(),
        "--shards",
        "4",
        "--json",
    ]));
    let reference = reference_xxh64(&path);
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), reference.len());
    for t in tensors {
        assert_eq!(
            t["xxh64"].as_str().unwrap(),
            reference[t["name"].as_str().unwrap()]
        );
    }
    assert_eq!(report["failed"], 0);
    let timings = &report["timings_ms"];
    for key in ["plan", "load", "compile", "instantiate", "ready", "verify"] {
        assert!(timings[key].as_f64().is_some(), "timings_ms.{key}");
    }
}

#[test]
fn sample_verifies_the_first_last_and_spaced_tensors_of_each_shard() {
    let path = model(SMOLLM2);
    let path = path.to_str().unwrap();
    let plan = json(&shardload(&["plan", path, "--shards", "3", "--json"]));
    // The plan's own shard lists: per shard, the tensors a sample of 3 must
    // verify are its first, its middle and its last, in that order.
    let names = |indices: &[serde_json::Value]| -> Vec<String> {
        indices
            .iter()
            .map(|i| {
                plan["tensors"][i.as_u64().unwrap() as usize]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let mut expected = Vec::new();
    for shard in plan["shards"].as_array().unwrap() {
        let tensors = shard["tensors"].as_array().unwrap();
        let n = tensors.len();
        assert!(
            n >= 3,
            "each shard of the test plan holds at least 3 tensors"
        );
        expected.extend(names(&[
            tensors[0].clone(),
            tensors[(n - 1) / 2].clone(),
            tensors[n - 1].clone(),
        ]));
    }
    let args = [
        "run",
        path,
        "--shards",
        "3",
        "--sample",
        "3",
        "--instances",
        "2",
        "--json",
    ];
    let report = json(&shardload(&args));
    let verified: Vec<String> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(verified, expected);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["memory"].as_array().unwrap().len(), 2);
}

#[test]
fn a_plan_made_from_another_model_exits_1_before_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("gemma.json");
    let made = shardload(&[
        "plan",
        model(GEMMA).to_str().unwrap(),
        "-o",
        plan.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    let output = shardload(&[
        "run",
        model(SMOLLM2).to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("was not made from"));
}

#[test]
fn a_plan_file_reads_the_model_named_on_the_command_line_not_the_path_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (planned_at, moved_to) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    std::fs::copy(model(SMOLLM2), &planned_at).unwrap();
    let plan = dir.path().join("plan.json");
    let planned = shardload(&[
        "plan",
        planned_at.to_str().unwrap(),
        "--shards",
        "2",
        "-o",
        plan.to_str().unwrap(),
    ]);
    assert!(planned.status.success());
    std::fs::rename(&planned_at, &moved_to).unwrap();
    let report = json(&shardload(&[
        "run",
        moved_to.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
        "--sample",
        "1",
        "--json",
    ]));
    assert_eq!(report["failed"], 0);
}
