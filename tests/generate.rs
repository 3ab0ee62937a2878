//! The forward pass in the guest against llama.cpp, for every real model
//! (SmolLM2: llama, Gemma 3: gemma3, Qwen2.5-Coder: qwen2; references written
//! by scripts/llama-reference from llama.cpp 0c1e570, never built in CI):
//! greedy continuations, logits, and the properties the runtime promises.

use serde_json::Value;
use shard_planner::PlanOptions;
use shardload_runtime::{
    Hyperparameters, Sampler, SamplerConfig, SequenceId, Session, SessionOptions, StageOutput,
};
use shardload_store::{LoadMode, OpenModel, WeightStore};
use shardload_suite::{GEMMA, QWEN, SMOLLM2, model, root};

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

/// A store and a session of `sequences` sequences over `layers` (all when `None`).
fn sessions_over(
    name: &str,
    ctx: usize,
    threads: usize,
    sequences: usize,
    layers: &[Option<std::ops::Range<usize>>],
) -> (WeightStore, Vec<Session>) {
    let opened = OpenModel::open(&model(name)).unwrap();
    let plan = opened
        .plan(&PlanOptions {
            shards: Some(2),
            ..PlanOptions::default()
        })
        .unwrap();
    let store = WeightStore::new(plan, LoadMode::Mmap).unwrap();
    let sessions = layers
        .iter()
        .map(|layers| {
            let options = SessionOptions {
                ctx,
                threads,
                sequences,
                layers: layers.clone(),
            };
            Session::with_options(&store, opened.gguf.metadata(), &options).unwrap()
        })
        .collect();
    (store, sessions)
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

/// Runs every greedy case of a reference file and returns how many were
/// identical to llama.cpp's and the largest top-2 gap at which the two parted.
/// Where they part, our token must be in llama.cpp's top 10 within
/// `near_tie` of its best logit; both then go on from llama.cpp's token, so
/// the rest of the case is still compared.
fn greedy_against_llama_cpp(name: &str, file: &str, near_tie: f64) -> (usize, usize, f64) {
    let reference = reference(file);
    let (_store, mut session) = session_with_threads(name, 2, 1024, 2);
    let (mut identical, mut cases, mut widest) = (0, 0, 0f64);
    for case in reference["cases"].as_array().unwrap() {
        let label = case["name"].as_str().unwrap();
        session.truncate(0);
        let expected = ids(&case["generated"]);
        let mut logits = session.eval(&ids(&case["prompt_ids"])).unwrap();
        let mut parted = false;
        for (step, &want) in expected.iter().enumerate() {
            let got = greedy(&logits);
            if got != want {
                let top = case["steps"][step]["top"].as_array().unwrap();
                let best = top[0][1].as_f64().unwrap();
                let ours = top
                    .iter()
                    .find(|p| p[0].as_u64() == Some(u64::from(got)))
                    .map(|p| p[1].as_f64().unwrap())
                    .unwrap_or_else(|| {
                        panic!("{label} step {step}: our token {got} is not in llama.cpp's top 10")
                    });
                assert!(
                    best - ours < near_tie,
                    "{label} step {step}: we chose {got} ({ours}), llama.cpp {want} ({best}): not a near-tie"
                );
                widest = widest.max(best - ours);
                parted = true;
            }
            if step + 1 < expected.len() {
                logits = session.eval(&[want]).unwrap();
            }
        }
        identical += usize::from(!parted);
        cases += 1;
    }
    eprintln!(
        "{name}: {identical} of {cases} continuations identical, widest gap where parted {widest}"
    );
    (identical, cases, widest)
}

#[test]
fn greedy_continuations_match_llama_cpp_token_for_token_except_at_its_near_ties() {
    let (identical, cases, widest) =
        greedy_against_llama_cpp(SMOLLM2, "greedy-smollm2.json", NEAR_TIE);
    // Measured: 6 of 9 identical; the others part at gaps of 0.05 to 0.31.
    assert!(
        identical >= 5,
        "only {identical} of {cases} continuations identical (widest gap {widest})"
    );
}

/// Gemma's logits differ from llama.cpp's by up to 0.42 (centred) among the
/// top 10 (measured, see below), more than llama.cpp differs from itself, so
/// two candidates can swap across a gap of up to twice that; the bound used
/// is 0.5, and the widest gap measured where we parted is 0.37.
const GEMMA_NEAR_TIE: f64 = 0.5;

#[test]
fn gemma_greedy_continuations_match_llama_cpp_except_at_near_ties() {
    let (identical, cases, widest) =
        greedy_against_llama_cpp(GEMMA, "greedy-gemma3.json", GEMMA_NEAR_TIE);
    assert_eq!(cases, 10);
    assert!(
        identical >= 3,
        "only {identical} of {cases} continuations identical (widest gap {widest})"
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

/// Gemma's logits against llama.cpp's top 1000 at the last prompt position,
/// for a short prompt and one of 669 tokens (past the 512-token sliding
/// window, so local and global layers differ). Measured: a common offset of
/// 0.08 and -0.03, centred differences up to 0.59 and 0.47 (0.42 and 0.28
/// among the top 10); the logits span about -10..22.
const GEMMA_LOGIT_TOLERANCE: f32 = 0.75;

/// Checks our logits at the last prompt position of every case of `file`
/// that stores llama.cpp's top 1000 (`logits_top`): a common offset below
/// 0.5 (softmax ignores it), and centred differences within `tolerance`.
/// Returns the prompt lengths checked.
fn top_logits_within_tolerance(name: &str, file: &str, tolerance: f32) -> Vec<usize> {
    let reference = reference(file);
    let (_store, mut session) = session(name, 2, 1024);
    let mut checked = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        let Some(top) = case.get("logits_top") else {
            continue;
        };
        session.truncate(0);
        let prompt = ids(&case["prompt_ids"]);
        let got = session.eval(&prompt).unwrap();
        let diffs: Vec<f32> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|p| got[p[0].as_u64().unwrap() as usize] - p[1].as_f64().unwrap() as f32)
            .collect();
        let offset = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let worst = diffs
            .iter()
            .map(|d| (d - offset).abs())
            .fold(0f32, f32::max);
        assert!(offset.abs() < 0.5, "{}: offset {offset}", case["name"]);
        eprintln!(
            "{name} {}: offset {offset}, centred max {worst}",
            case["name"]
        );
        assert!(worst <= tolerance, "{}: centred max {worst}", case["name"]);
        checked.push(prompt.len());
    }
    checked
}

#[test]
fn gemma_logits_including_past_the_sliding_window_are_within_tolerance_of_llama_cpp() {
    let checked = top_logits_within_tolerance(GEMMA, "greedy-gemma3.json", GEMMA_LOGIT_TOLERANCE);
    assert_eq!(checked.len(), 2);
    assert!(
        checked.iter().any(|&n| n > 512),
        "a prompt past the sliding window: {checked:?}"
    );
}

#[test]
fn qwen2_greedy_continuations_match_llama_cpp_except_at_near_ties() {
    let (identical, cases, widest) =
        greedy_against_llama_cpp(QWEN, "greedy-qwen2-coder.json", NEAR_TIE);
    assert_eq!(cases, 11);
    // Measured: 8 of 11 identical; the others part at top-2 gaps up to 0.043.
    assert!(
        identical >= 7,
        "only {identical} of {cases} continuations identical (widest gap {widest})"
    );
}

/// Qwen2.5-Coder's logits against llama.cpp's top 1000 at the last position
/// of two prompts (the capital and the chat). Measured: common offsets of
/// -0.0005 and -0.019, centred differences up to 0.35 and 0.25 (the logits
/// span about -5..25): within the 8-bit activation noise both runtimes share.
const QWEN_LOGIT_TOLERANCE: f32 = 0.5;

#[test]
fn qwen2_logits_are_within_tolerance_of_llama_cpp() {
    let checked =
        top_logits_within_tolerance(QWEN, "greedy-qwen2-coder.json", QWEN_LOGIT_TOLERANCE);
    assert_eq!(checked.len(), 2);
}

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
    for name in [SMOLLM2, GEMMA] {
        let (_store, mut session) = session(name, 2, 128);
        // 40 tokens: more than one batch of 32, and groups of 4 and single tokens within.
        let batched = session.eval(&TOKENS).unwrap();
        session.truncate(0);
        let mut one_by_one = Vec::new();
        for &t in &TOKENS {
            one_by_one = session.eval(&[t]).unwrap();
        }
        assert_eq!(bits(&batched), bits(&one_by_one), "{name}");
        // The cache keeps a prefix; evaluating the rest equals recomputing it all.
        session.truncate(17);
        let cached = session.eval(&TOKENS[17..]).unwrap();
        assert_eq!(bits(&batched), bits(&cached), "{name}");
    }
}

#[test]
fn any_shard_count_gives_bit_identical_logits() {
    for name in [SMOLLM2, GEMMA] {
        let logits: Vec<Vec<u32>> = [1, 3, 5]
            .iter()
            .map(|&shards| {
                let (_store, mut session) = session(name, shards, 64);
                bits(&session.eval(&TOKENS[..12]).unwrap())
            })
            .collect();
        assert_eq!(logits[0], logits[1], "{name}");
        assert_eq!(logits[0], logits[2], "{name}");
    }
}

#[test]
fn one_two_and_three_threads_give_bit_identical_logits() {
    for name in [SMOLLM2, GEMMA] {
        let logits: Vec<Vec<u32>> = [1, 2, 3]
            .iter()
            .map(|&threads| {
                let (_store, mut session) = session_with_threads(name, 2, 64, threads);
                let mut last = session.eval(&TOKENS[..12]).unwrap();
                for &t in &TOKENS[12..16] {
                    last = session.eval(&[t]).unwrap();
                }
                bits(&last)
            })
            .collect();
        assert_eq!(logits[0], logits[1], "{name}");
        assert_eq!(logits[0], logits[2], "{name}");
    }
}

/// Logits after each step of `steps` (a prompt, then single tokens) in a
/// session of one sequence: what a sequence gives alone.
fn alone(session: &mut Session, steps: &[&[u32]]) -> Vec<Vec<u32>> {
    session.truncate(0);
    steps
        .iter()
        .map(|step| bits(&session.eval(step).unwrap()))
        .collect()
}

#[test]
fn a_sequence_in_a_mixed_batch_gives_bit_identical_logits_to_the_sequence_alone() {
    for name in [SMOLLM2, GEMMA] {
        for threads in [1, 2, 3] {
            let (_store, mut sessions) = sessions_over(name, 128, threads, 3, &[None, None]);
            let mut mixed = sessions.pop().unwrap();
            let mut single = sessions.pop().unwrap();
            let single_seq = single.create_sequence().unwrap();
            assert_eq!(single_seq.slot(), 0);
            // Three sequences: A's 40-token prompt (more than one batch)
            // goes through beside B's and C's next tokens, at other positions.
            let (a, b, c) = (&TOKENS[..], &TOKENS[3..10], &TOKENS[20..23]);
            let steps_a: Vec<&[u32]> = vec![a, &[7], &[8]];
            let steps_b: Vec<&[u32]> = vec![b, &[11], &[12], &[13]];
            let steps_c: Vec<&[u32]> = vec![c, &[21], &[22], &[23]];
            let (sa, sb, sc) = (
                mixed.create_sequence().unwrap(),
                mixed.create_sequence().unwrap(),
                mixed.create_sequence().unwrap(),
            );
            let first = mixed.decode(&[(sb, steps_b[0]), (sc, steps_c[0])]).unwrap();
            let second = mixed
                .decode(&[(sa, steps_a[0]), (sb, steps_b[1]), (sc, steps_c[1])])
                .unwrap();
            let third = mixed
                .decode(&[(sc, steps_c[2]), (sa, steps_a[1]), (sb, steps_b[2])])
                .unwrap();
            let fourth = mixed
                .decode(&[(sb, steps_b[3]), (sa, steps_a[2]), (sc, steps_c[3])])
                .unwrap();
            let got_a = vec![bits(&second[0]), bits(&third[1]), bits(&fourth[1])];
            let got_b = [&first[0], &second[1], &third[2], &fourth[0]].map(|l| bits(l));
            let got_c = [&first[1], &second[2], &third[0], &fourth[2]].map(|l| bits(l));
            assert_eq!(got_a, alone(&mut single, &steps_a), "{name} {threads}T: A");
            assert_eq!(
                got_b.to_vec(),
                alone(&mut single, &steps_b),
                "{name} {threads}T: B"
            );
            assert_eq!(
                got_c.to_vec(),
                alone(&mut single, &steps_c),
                "{name} {threads}T: C"
            );
        }
    }
}

#[test]
fn layers_0_to_k_then_k_to_n_give_bit_identical_logits_to_0_to_n_for_every_k() {
    for name in [SMOLLM2, GEMMA] {
        let layers = Hyperparameters::read(OpenModel::open(&model(name)).unwrap().gguf.metadata())
            .unwrap()
            .layers;
        let (_store, mut whole) = sessions_over(name, 64, 2, 1, &[None]);
        let whole = &mut whole[0];
        let seq = whole.create_sequence().unwrap();
        let want: Vec<Vec<u32>> = [&TOKENS[..12], &TOKENS[12..13]]
            .iter()
            .map(|step| bits(&whole.decode(&[(seq, step)]).unwrap()[0]))
            .collect();
        for k in 1..layers {
            let (_store, stages) = sessions_over(name, 64, 2, 1, &[Some(0..k), Some(k..layers)]);
            let [mut first, mut second] = <[Session; 2]>::try_from(stages).ok().unwrap();
            let (s1, s2) = (
                first.create_sequence().unwrap(),
                second.create_sequence().unwrap(),
            );
            let got: Vec<Vec<u32>> = [&TOKENS[..12], &TOKENS[12..13]]
                .iter()
                .map(|step| {
                    let StageOutput::Residual(stream) = first.run(&[(s1, step)], None).unwrap()
                    else {
                        panic!("layers 0..{k} gave logits");
                    };
                    let StageOutput::Logits(logits) =
                        second.run(&[(s2, step)], Some(&stream)).unwrap()
                    else {
                        panic!("layers {k}..{layers} gave no logits");
                    };
                    bits(&logits[0])
                })
                .collect();
            assert_eq!(got, want, "{name}: layers 0..{k} then {k}..{layers}");
        }
    }
}

#[test]
fn truncating_past_what_a_sliding_window_ring_holds_gives_the_logits_of_a_fresh_evaluation() {
    // ctx 1024: Gemma's sliding-window layers keep a ring of 512 + 32
    // positions per sequence, and two sequences share each cache (so the
    // second's rows start at one ring's capacity, not at the context).
    let (_store, mut sessions) = sessions_over(GEMMA, 1024, 2, 2, &[None]);
    let session = &mut sessions[0];
    let (a, fresh_seq) = (
        session.create_sequence().unwrap(),
        session.create_sequence().unwrap(),
    );
    let prompt: Vec<u32> = (0..600u32).map(|i| (i * 7919 + 13) % 262_144).collect();
    let fresh = |session: &mut Session, n: usize| {
        session.truncate_sequence(fresh_seq, 0).unwrap();
        bits(&session.decode(&[(fresh_seq, &prompt[..n])]).unwrap()[0])
    };
    session.decode(&[(a, &prompt[..])]).unwrap();
    // (go back to, whether the ring still serves it): after 600 positions
    // the ring holds 56.., so position p's window p - 511.. is there from
    // p = 567 on; truncations remember what a longer past overwrote (600 ->
    // 570 -> 540 must not read positions 573.. lingering in 29..).
    let steps = [
        (567, true),
        (566, false),
        (600, true),
        (570, true),
        (540, false),
    ];
    for (back_to, kept) in steps {
        let have = session.sequence_tokens(a).unwrap().len();
        if back_to > have {
            session.decode(&[(a, &prompt[have..back_to])]).unwrap();
            continue;
        }
        session.truncate_sequence(a, back_to).unwrap();
        let cached = session.sequence_cached(a).unwrap();
        assert_eq!(
            cached == back_to,
            kept,
            "{have} tokens truncated to {back_to}: {cached} cached"
        );
        let got = bits(
            &session
                .decode(&[(a, &prompt[back_to..back_to + 1])])
                .unwrap()[0],
        );
        assert_eq!(
            got,
            fresh(session, back_to + 1),
            "{have} tokens truncated to {back_to}"
        );
    }
}

#[test]
fn sequences_are_created_freed_and_refused_by_name() {
    let (_store, mut sessions) = sessions_over(SMOLLM2, 16, 1, 2, &[None]);
    let session = &mut sessions[0];
    let (a, b) = (
        session.create_sequence().unwrap(),
        session.create_sequence().unwrap(),
    );
    let error = session.create_sequence().unwrap_err().to_string();
    assert!(error.contains("all 2 sequences"), "{error}");
    let error = session
        .decode(&[(a, &[1]), (a, &[2])])
        .unwrap_err()
        .to_string();
    assert!(error.contains("appears twice"), "{error}");
    session.decode(&[(a, &[1, 2, 3]), (b, &[4])]).unwrap();
    assert_eq!(session.sequence_tokens(a).unwrap(), &[1, 2, 3]);
    session.free_sequence(a).unwrap();
    let error = session.decode(&[(a, &[1])]).unwrap_err().to_string();
    assert!(error.contains("sequence 0 does not exist"), "{error}");
    // The freed slot is reused, empty.
    let c = session.create_sequence().unwrap();
    assert_eq!(c, a);
    assert!(session.sequence_tokens(c).unwrap().is_empty());
    let unknown: SequenceId = c;
    session.free_sequence(unknown).unwrap();
    assert!(session.free_sequence(unknown).is_err());
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
    use shardload_gguf::{GgmlType, GgufFile, GgufWriter, Value};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("mamba".into()))
        .tensor("token_embd.weight", GgmlType::F32, &[32, 8]);
    w.write(&path, None).unwrap();
    let error = Hyperparameters::read(&GgufFile::open(&path).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("unsupported architecture mamba (supported: llama, gemma3, qwen2)"),
        "{error}"
    );
}
