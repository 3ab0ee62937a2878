//! The llama forward pass in the guest against llama.cpp (references written
//! by scripts/llama-reference from llama.cpp 0c1e570, never built in CI):
//! greedy continuations, logits, and the properties the runtime promises.

use serde_json::Value;
use shard_planner::PlanOptions;
use shardload_runtime::{Sampler, SamplerConfig, Session};
use shardload_store::{LoadMode, OpenModel, WeightStore};
use shardload_suite::{GEMMA, SMOLLM2, model, root};

/// llama.cpp's own greedy text differs between two of its setups at steps
/// whose top-2 logits are this close (shared/notes/reference-data.md): below
/// it, which token wins is decided by rounding, not by the model.
const NEAR_TIE: f64 = 0.35;

fn session(name: &str, shards: u32, ctx: usize) -> (WeightStore, Session) {
    session_with_threads(name, shards, ctx, 1)
}

fn session_with_threads(
    name: &str,
    shards: u32,
    ctx: usize,
    threads: usize,
) -> (WeightStore, Session) {
    let opened = OpenModel::open(&model(name)).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(shards),
            ..PlanOptions::default()
        })
        .unwrap();
    let store = WeightStore::new(plan, LoadMode::Mmap).unwrap();
    let session = Session::new(&store, opened.gguf.metadata(), ctx, threads).unwrap();
    (store, session)
}

fn reference(file: &str) -> Value {
    let path = root().join("tests/reference").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(logits: &[f32]) -> u32 {
    Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    })
    .sample(logits)
}

#[test]
fn greedy_continuations_match_llama_cpp_token_for_token_except_at_its_near_ties() {
    let reference = reference("greedy-smollm2.json");
    let (_store, mut session) = session(SMOLLM2, 2, 1024);
    let mut identical = 0;
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        session.truncate(0);
        let expected = ids(&case["generated"]);
        let mut logits = session.eval(&ids(&case["prompt_ids"])).unwrap();
        let mut parted = false;
        for (step, &want) in expected.iter().enumerate() {
            let got = greedy(&logits);
            if got != want {
                // Where the two sides part, llama.cpp's own logits must show a
                // near-tie between its token and ours; then both go on from
                // llama.cpp's token, so the rest is still compared.
                let info = &case["steps"][step];
                let top = info["top"].as_array().unwrap();
                let logit_of = |id: u32| {
                    top.iter()
                        .find(|p| p[0].as_u64() == Some(u64::from(id)))
                        .map(|p| p[1].as_f64().unwrap())
                };
                let best = top[0][1].as_f64().unwrap();
                let ours = logit_of(got).unwrap_or_else(|| {
                    panic!("{name} step {step}: our token {got} is not in llama.cpp's top 10")
                });
                assert!(
                    best - ours < NEAR_TIE,
                    "{name} step {step}: we chose {got} ({ours}), llama.cpp {want} ({best}): not a near-tie"
                );
                parted = true;
            }
            if step + 1 < expected.len() {
                logits = session.eval(&[want]).unwrap();
            }
        }
        identical += usize::from(!parted);
    }
    // Measured: 6 of 9 identical; the others part at gaps of 0.05 to 0.31.
    assert!(
        identical >= 5,
        "only {identical} of 9 continuations identical"
    );
}

/// Both sides quantize activations to 8 bits per 32 values before each
/// matmul (ggml with Q8_1 for Q4_1 weights, ours Q8_0 with a sum correction)
/// and round K and V to f16, so logits agree to tenths, not bits. Measured on
/// the two stored vectors (49152 logits spanning -20..18): our logits sit
/// lower by a common 0.31-0.49 (softmax ignores it; its source is not yet
/// found) and, centred, differ by at most 0.72 and 0.82. The tolerance is on
/// centred logits; greedy agreement is the sharper test.
const LOGIT_TOLERANCE: f32 = 1.0;

#[test]
fn logits_at_the_last_prompt_position_are_within_tolerance_of_llama_cpp() {
    let reference = reference("greedy-smollm2.json");
    let bin = std::fs::read(root().join("tests/reference/logits-smollm2.bin")).unwrap();
    let (_store, mut session) = session(SMOLLM2, 3, 512);
    let mut checked = 0;
    for case in reference["cases"].as_array().unwrap() {
        let Some(file) = case.get("logits_file") else {
            continue;
        };
        let (offset, count) = (
            file["offset"].as_u64().unwrap() as usize,
            file["count"].as_u64().unwrap() as usize,
        );
        let expected: Vec<f32> = bin[offset..offset + count * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        session.truncate(0);
        let got = session.eval(&ids(&case["prompt_ids"])).unwrap();
        assert_eq!(got.len(), expected.len());
        // Softmax ignores a common offset: compare logits centred on their means.
        let centre = |v: &[f32]| {
            let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
            v.iter()
                .map(move |&x| (f64::from(x) - mean) as f32)
                .collect::<Vec<f32>>()
        };
        let (got_c, expected_c) = (centre(&got), centre(&expected));
        let worst = got_c
            .iter()
            .zip(&expected_c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let offset = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| f64::from(a - b))
            .sum::<f64>()
            / got.len() as f64;
        assert!(
            offset.abs() < 1.0,
            "{}: logits offset by {offset}",
            case["name"]
        );
        assert!(
            worst <= LOGIT_TOLERANCE,
            "{}: max |centred logit diff| {worst}",
            case["name"]
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

const TOKENS: [u32; 40] = [
    504, 3575, 282, 4649, 314, 7042, 30, 198, 198, 504, 1797, 1918, 553, 253, 2155, 282, 4723, 216,
    35, 33, 33, 2215, 1, 2, 3, 1000, 2000, 3000, 40000, 49151, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    21,
];

#[test]
fn batched_prompt_and_token_by_token_and_a_cached_prefix_give_bit_identical_logits() {
    let (_store, mut session) = session(SMOLLM2, 2, 128);
    // 40 tokens: more than one batch of 32.
    let batched = session.eval(&TOKENS).unwrap();
    session.truncate(0);
    let mut one_by_one = Vec::new();
    for &t in &TOKENS {
        one_by_one = session.eval(&[t]).unwrap();
    }
    assert_eq!(bits(&batched), bits(&one_by_one));
    // The cache keeps a prefix; evaluating the rest equals recomputing it all.
    session.truncate(17);
    let cached = session.eval(&TOKENS[17..]).unwrap();
    assert_eq!(bits(&batched), bits(&cached));
}

#[test]
fn any_shard_count_gives_bit_identical_logits() {
    let logits: Vec<Vec<u32>> = [1, 3, 5]
        .iter()
        .map(|&shards| {
            let (_store, mut session) = session(SMOLLM2, shards, 64);
            bits(&session.eval(&TOKENS[..12]).unwrap())
        })
        .collect();
    assert_eq!(logits[0], logits[1]);
    assert_eq!(logits[0], logits[2]);
}

#[test]
fn one_two_and_three_threads_give_bit_identical_logits() {
    let logits: Vec<Vec<u32>> = [1, 2, 3]
        .iter()
        .map(|&threads| {
            let (_store, mut session) = session_with_threads(SMOLLM2, 2, 64, threads);
            let mut last = session.eval(&TOKENS[..12]).unwrap();
            for &t in &TOKENS[12..16] {
                last = session.eval(&[t]).unwrap();
            }
            bits(&last)
        })
        .collect();
    assert_eq!(logits[0], logits[1]);
    assert_eq!(logits[0], logits[2]);
}

#[test]
fn bad_prompts_are_errors_not_panics() {
    let (_store, mut session) = session(SMOLLM2, 1, 16);
    let error = session.eval(&[]).unwrap_err().to_string();
    assert!(error.contains("empty"), "{error}");
    let error = session.eval(&[49152]).unwrap_err().to_string();
    assert!(error.contains("token id 49152 is out of range"), "{error}");
    let error = session.eval(&[1; 17]).unwrap_err().to_string();
    assert!(error.contains("context is full"), "{error}");
    // Nothing was evaluated by the refused calls.
    assert_eq!(session.position(), 0);
}

#[test]
fn an_unsupported_architecture_is_refused_by_name_before_anything_runs() {
    let opened = OpenModel::open(&model(GEMMA)).unwrap();
    let plan = opened.plan(&PlanOptions::default()).unwrap();
    let store = WeightStore::new(plan, LoadMode::Mmap).unwrap();
    let error = Session::new(&store, opened.gguf.metadata(), 64, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("unsupported architecture gemma3 (supported: llama)"),
        "{error}"
    );
}
