//! `shardload web` and the browser host, in a real browser: Debian's
//! Chromium, headless, driven by playwright-core (`web/tests/drive.mjs`,
//! which only prints the page's JSON report). What the tab computes is
//! checked against the CLI run natively (wasmtime, same guest module) and
//! against python-xxhash.
//!
//! Needs `chromium` on the PATH and `web/node_modules` (scripts/test
//! installs both); a missing one fails the test with what to run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use shardload_suite::{GEMMA, QWEN, SMOLLM2, make_split, model, reference_xxh64, root};

/// A `shardload web` process on a free port, stopped when dropped.
struct WebServer {
    child: Child,
    url: String,
    /// The server's stdout, kept open while it runs.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl WebServer {
    fn start(args: &[&str]) -> WebServer {
        WebServer::on_port(args, 0)
    }

    /// On `port`: the same port again is the same origin, so the same browser storage.
    fn on_port(args: &[&str], port: u16) -> WebServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardload"))
            .arg("web")
            .args(args)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        WebServer {
            child,
            url,
            _stdout: stdout,
        }
    }

    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `url` (page parameters included) in headless Chromium and returns
/// the page's report, with `shown_error` (what the page shows) and `memory`.
fn drive(url: &str, extra: &[&str]) -> Value {
    let web = root().join("web");
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "web/node_modules is missing: run `npm ci --prefix web` (scripts/test does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: run `apt-get install -y chromium` (scripts/test does)"
    );
    json_output(
        Command::new("node")
            .arg(web.join("tests/drive.mjs"))
            .arg(url)
            .args(extra),
        "drive.mjs",
    )
}

/// A command's stdout as JSON; it must succeed (else its stderr is the failure).
fn json_output(command: &mut Command, what: &str) -> Value {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A `shardload` command's `--json` output (it must succeed).
fn shardload_json(args: &[&str]) -> Value {
    json_output(
        Command::new(env!("CARGO_BIN_EXE_shardload"))
            .args(args)
            .arg("--json"),
        "shardload",
    )
}

/// `shardload run --sweep --json`: the same guest, natively, over mapped shards.
fn native_run(model: &Path, extra: &[&str]) -> Value {
    let model = model.to_str().unwrap();
    shardload_json(&[&["run", model, "--shards", "4", "--sweep"], extra].concat())
}

/// An f32 as JSON carried it (serde's shortest f32, or JS's shortest f64 of
/// the same f32): its bits, so equality is bit-identity.
fn bits(value: &Value) -> u32 {
    (value.as_f64().unwrap() as f32).to_bits()
}

fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = acc << 6 | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
    }
    out
}

/// Loads `path` planned into 4 shards in a tab and checks everything the tab
/// computed: tables, every tensor's XXH64, and the sweep's rows.
fn loads_verifies_and_sweeps_as_wasmtime_does(path: &Path, page: &str) -> Value {
    let server = WebServer::start(&[path.to_str().unwrap(), "--shards", "4"]);
    let report = drive(&format!("{}{page}", server.url), &[]);
    assert_eq!(report["error"], Value::Null, "{report:#}");
    let native = native_run(path, &["--sweep-rows", "0:6"]);
    let plan_file = tempfile::NamedTempFile::new().unwrap();
    let planned = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .arg("plan")
        .arg(path)
        .args(["--shards", "4", "-o"])
        .arg(plan_file.path())
        .output()
        .unwrap();
    assert!(planned.status.success());
    let plan: shard_planner::Plan =
        serde_json::from_str(&std::fs::read_to_string(plan_file.path()).unwrap()).unwrap();

    // The tables the JS host wrote are the store's, byte for byte.
    assert_eq!(
        base64(report["tables"].as_str().unwrap()),
        shardload_store::routing_tables(&plan)
    );
    // Every tensor verified in the tab, and its hash is the CLI's and python-xxhash's.
    let tensors = plan.tensors.len();
    assert_eq!(report["tensors"], tensors);
    assert_eq!(report["verified"], tensors);
    assert_eq!(report["failed"], 0);
    let python = reference_xxh64(path);
    let cli = native["tensors"].as_array().unwrap();
    assert_eq!(cli.len(), tensors);
    for t in cli {
        let name = t["name"].as_str().unwrap();
        assert_eq!(report["xxh64"][name], t["xxh64"], "{name}");
        assert_eq!(
            report["xxh64"][name].as_str().unwrap(),
            python[name],
            "{name}"
        );
    }
    assert_eq!(
        report["bytes_copied"],
        plan.shards
            .iter()
            .flat_map(|s| &s.extents)
            .map(|e| e.bytes)
            .sum::<u64>()
    );
    // The sweep's rows are wasmtime's, bit for bit, for every weight.
    let ours = report["sweep"]["rows"].as_array().unwrap();
    let theirs = native["sweep"]["rows"].as_array().unwrap();
    assert!(!ours.is_empty());
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["tensor"], b["tensor"]);
        assert_eq!(a["first_row"], b["first_row"]);
        let (ya, yb) = (a["y"].as_array().unwrap(), b["y"].as_array().unwrap());
        assert_eq!(ya.len(), 6, "{}", a["tensor"]);
        assert_eq!(
            ya.iter().map(bits).collect::<Vec<_>>(),
            yb.iter().map(bits).collect::<Vec<_>>(),
            "{}",
            a["tensor"]
        );
    }
    for key in ["ready_ms", "sweep_gb_per_s", "copy_gb_per_s"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}");
    }
    report
}

#[test]
fn smollm2_in_four_shards_verifies_in_chromium_and_sweeps_bit_identically_with_wasmtime() {
    let report =
        loads_verifies_and_sweeps_as_wasmtime_does(&model(SMOLLM2), "?run=1&verify=1&rows=0:6");
    assert_eq!(report["dot"], "relaxed");
}

#[test]
fn gemma3_in_four_shards_verifies_in_chromium_and_sweeps_bit_identically_with_wasmtime() {
    let report =
        loads_verifies_and_sweeps_as_wasmtime_does(&model(GEMMA), "?run=1&verify=1&rows=0:6");
    assert_eq!(report["dot"], "relaxed");
}

#[test]
fn the_plain_simd_guest_a_browser_without_relaxed_simd_gets_computes_the_same_sweep() {
    let report = loads_verifies_and_sweeps_as_wasmtime_does(
        &model(SMOLLM2),
        "?run=1&verify=1&rows=0:6&dot=plain",
    );
    assert_eq!(report["dot"], "plain");
}

#[test]
fn a_model_file_picked_by_a_person_loads_like_the_served_one() {
    let path = model(SMOLLM2);
    let server = WebServer::start(&[path.to_str().unwrap(), "--shards", "4"]);
    let picked = drive(
        &format!("{}?verify=1", server.url),
        &["--pick", path.to_str().unwrap()],
    );
    let served = drive(&format!("{}?run=1&verify=1", server.url), &[]);
    assert_eq!(picked["error"], Value::Null);
    assert_eq!(picked["source"], "files");
    assert_eq!(served["source"], "server");
    assert_eq!(picked["failed"], 0);
    assert_eq!(picked["verified"], picked["tensors"]);
    for key in ["xxh64", "tables", "bytes_copied"] {
        assert_eq!(picked[key], served[key], "{key}");
    }
    assert_eq!(picked["sweep"]["rows"], served["sweep"]["rows"]);
}

#[test]
fn page_parameters_that_make_no_sense_are_refused_not_ignored() {
    let server = WebServer::start(&[model(SMOLLM2).to_str().unwrap(), "--shards", "2"]);
    for (query, expected) in [
        ("sample=0", "?sample=0: give a whole number of at least 1"),
        (
            "sample=2.5",
            "?sample=2.5: give a whole number of at least 1",
        ),
        ("rows=5:3", "?rows=5:3: give FIRST:END with END past FIRST"),
    ] {
        let report = drive(&format!("{}?run=1&verify=1&{query}", server.url), &[]);
        let error = report["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{query}: no error"));
        assert!(error.starts_with(expected), "{query}: {error}");
    }
}

#[test]
fn a_split_set_loads_from_the_server_and_from_picked_files_with_shards_spanning_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = make_split(&model(SMOLLM2), dir.path(), 100);
    assert_eq!(files.len(), 3);
    let server = WebServer::start(&[files[0].to_str().unwrap(), "--shards", "2"]);
    let (_, plan) = http_get(server.port(), "/plan.json", "");
    let plan: Value = serde_json::from_slice(&plan).unwrap();
    assert!(
        plan["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["extents"].as_array().unwrap().len() > 1),
        "no shard holds the end of one file and the start of the next"
    );
    let served = drive(&format!("{}?run=1&verify=1", server.url), &[]);
    // Picked in any order: the page sorts them by name, the split order.
    let picked = drive(
        &format!("{}?verify=1", server.url),
        &[
            "--pick",
            files[2].to_str().unwrap(),
            "--pick",
            files[0].to_str().unwrap(),
            "--pick",
            files[1].to_str().unwrap(),
        ],
    );
    let python: usize = files.iter().map(|f| reference_xxh64(f).len()).sum();
    for report in [&served, &picked] {
        assert_eq!(report["error"], Value::Null, "{report:#}");
        assert_eq!(report["verified"], 272);
        assert_eq!(report["failed"], 0);
    }
    assert_eq!(python, 272);
    assert_eq!(served["xxh64"], picked["xxh64"]);
}

/// The page's error for a model file other than the one the plan was made for.
fn error_for_picked(file: &Path) -> (String, Value) {
    let path = model(SMOLLM2);
    let server = WebServer::start(&[path.to_str().unwrap(), "--shards", "4"]);
    let report = drive(
        &format!("{}?verify=1", server.url),
        &["--pick", file.to_str().unwrap()],
    );
    let error = report["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {report:#}"));
    assert_eq!(
        report["shown_error"], error,
        "the page shows the error it reports"
    );
    (error.to_string(), report)
}

#[test]
fn another_model_than_the_planned_one_is_refused_naming_both_files_and_sizes() {
    let (error, _) = error_for_picked(&model(GEMMA));
    assert!(error.contains("gemma-3-270m-q4_k_m.gguf is"), "{error}");
    assert!(
        error.contains("SmolLM2-135M-Instruct.Q4_1.gguf of 98,362,432 bytes"),
        "{error}"
    );
}

#[test]
fn a_truncated_model_file_is_refused_before_anything_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(model(SMOLLM2)).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (error, report) = error_for_picked(&truncated);
    assert!(
        report["bytes_copied"].is_null(),
        "copied before refusing: {report:#}"
    );
    assert!(error.contains("is 49,181,216 bytes"), "{error}");
    assert!(error.contains("truncated"), "{error}");
}

#[test]
fn a_same_sized_file_with_other_weights_fails_verification_and_names_a_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut bytes = std::fs::read(model(SMOLLM2)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&changed, &bytes).unwrap();
    let (error, _) = error_for_picked(&changed);
    assert!(
        error.contains("1 of 272 tensors differ from the host's checksums (first: blk."),
        "{error}"
    );
}

#[test]
fn with_webassembly_turned_off_by_a_flag_the_page_says_what_it_needs() {
    let server = WebServer::start(&[model(SMOLLM2).to_str().unwrap(), "--shards", "4"]);
    let report = drive(
        &format!("{}?run=1", server.url),
        &["--js-flags", "--jitless"],
    );
    let error = report["error"].as_str().unwrap();
    assert!(
        error.starts_with("WebAssembly is turned off or missing"),
        "{error}"
    );
    assert!(error.contains("memory64, multi-memory and SIMD"), "{error}");
    assert_eq!(report["shown_error"], error);
}

#[test]
fn when_the_browser_refuses_a_shards_memory_the_page_says_how_much_it_needed() {
    let server = WebServer::start(&[model(SMOLLM2).to_str().unwrap(), "--shards", "4"]);
    // V8's cap on any one memory: 64 pages (4 MiB), below every shard of this plan.
    let report = drive(
        &format!("{}?run=1", server.url),
        &["--js-flags", "--wasm-max-mem-pages=64"],
    );
    let error = report["error"].as_str().unwrap();
    assert!(error.starts_with("cannot get "), "{error}");
    assert!(
        error.contains("of memory for shard 0 (the tab needs"),
        "{error}"
    );
    assert_eq!(report["shown_error"], error);
}

/// One raw HTTP/1.1 exchange: the status line and headers, and the body.
fn http_get(port: u16, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let host = if headers.contains("Host:") {
        String::new()
    } else {
        format!("Host: 127.0.0.1:{port}\r\n")
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\n{host}{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&response[..split]).to_lowercase(),
        response[split + 4..].to_vec(),
    )
}

#[test]
fn the_server_answers_range_requests_with_the_files_bytes_and_isolates_the_page() {
    let path = model(SMOLLM2);
    let server = WebServer::start(&[path.to_str().unwrap(), "--shards", "4"]);
    let file = std::fs::read(&path).unwrap();
    let (head, body) = http_get(
        server.port(),
        "/model/0",
        "Range: bytes=1000000-1000099\r\n",
    );
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains(&format!(
            "content-range: bytes 1000000-1000099/{}",
            file.len()
        )),
        "{head}"
    );
    assert_eq!(body, file[1_000_000..1_000_100]);
    // Shared memories need a cross-origin isolated page.
    let (head, body) = http_get(server.port(), "/", "");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("cross-origin-opener-policy: same-origin"),
        "{head}"
    );
    assert!(
        head.contains("cross-origin-embedder-policy: require-corp"),
        "{head}"
    );
    assert!(String::from_utf8(body).unwrap().contains("id=\"report\""));
    let (head, _) = http_get(
        server.port(),
        "/model/0",
        &format!("Range: bytes={}-\r\n", file.len() + 10),
    );
    assert!(head.starts_with("http/1.1 416"), "{head}");
    let (head, _) = http_get(server.port(), "/model/1", "");
    assert!(head.starts_with("http/1.1 404"), "{head}");
}

#[test]
fn requests_for_another_host_name_are_refused_so_dns_rebinding_cannot_read_the_model() {
    let server = WebServer::start(&[model(SMOLLM2).to_str().unwrap(), "--shards", "2"]);
    let port = server.port();
    let (head, body) = http_get(
        port,
        "/model/0",
        "Host: attacker.example:80\r\nRange: bytes=0-3\r\n",
    );
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(!body.starts_with(b"GGUF"));
    let (head, _) = http_get(port, "/model/0", "Range: bytes=0-3\r\n");
    assert!(head.starts_with("http/1.1 206"), "{head}");
    let (head, body) = http_get(
        port,
        "/model/0",
        &format!("Host: localhost:{port}\r\nRange: bytes=0-3\r\n"),
    );
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, b"GGUF");
}

#[test]
fn a_port_in_use_is_an_error_that_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(["web", model(SMOLLM2).to_str().unwrap(), "--port", &port])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("--port 0"), "{stderr}");
}

/// `shardload generate --json` natively (wasmtime), the reference the tab must equal.
fn native_generate(model: &Path, args: &[&str]) -> Value {
    let model = model.to_str().unwrap();
    shardload_json(&[&["generate", model, "--threads", "2"], args].concat())
}

/// A URL query value, percent-encoded.
fn query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Greedy generation in the tab, with 1 and 2 web workers, against `shardload generate`.
fn greedy_in_the_tab_is_generates(name: &str) {
    let path = model(name);
    let prompt = "The capital of France is";
    let native = native_generate(&path, &["-p", prompt, "-n", "32", "--temp", "0"]);
    let server = WebServer::start(&[path.to_str().unwrap(), "--shards", "3"]);
    for workers in [1, 2] {
        let report = drive(
            &format!(
                "{}?run=1&cache=0&prompt={}&n=32&temp=0&workers={workers}",
                server.url,
                query(prompt)
            ),
            &[],
        );
        assert_eq!(report["error"], Value::Null, "{report:#}");
        assert_eq!(report["workers"], workers);
        assert_eq!(report["prompt_tokens"], native["prompt_tokens"], "{name}");
        assert_eq!(
            report["tokens"], native["tokens"],
            "{name}, {workers} workers"
        );
        assert_eq!(report["text"], native["text"], "{name}");
        assert_eq!(report["tokens"].as_array().unwrap().len(), 32);
    }
}

#[test]
fn smollm2_greedy_in_the_tab_gives_shardload_generates_ids_with_one_and_two_workers() {
    greedy_in_the_tab_is_generates(SMOLLM2);
}

#[test]
fn gemma3_greedy_in_the_tab_gives_shardload_generates_ids_with_one_and_two_workers() {
    greedy_in_the_tab_is_generates(GEMMA);
}

#[test]
fn a_seeded_sampled_run_in_the_tab_draws_shardload_generates_tokens() {
    let path = model(SMOLLM2);
    let prompt = "Once upon a time";
    let native = native_generate(&path, &["-p", prompt, "-n", "48", "--seed", "7"]);
    let server = WebServer::start(&[path.to_str().unwrap()]);
    let report = drive(
        &format!(
            "{}?run=1&cache=0&prompt={}&n=48&seed=7&workers=2",
            server.url,
            query(prompt)
        ),
        &[],
    );
    assert_eq!(report["error"], Value::Null, "{report:#}");
    assert_eq!(report["tokens"], native["tokens"]);
    // Sampled, not greedy: the same seed elsewhere would be a weak check otherwise.
    let greedy = native_generate(&path, &["-p", prompt, "-n", "48", "--temp", "0"]);
    assert_ne!(report["tokens"], greedy["tokens"]);
}

#[test]
fn the_tabs_chat_prompt_for_a_two_turn_conversation_is_shardload_chats_for_three_models() {
    let messages = [
        ("user", "What is the capital of France?"),
        ("assistant", "The capital of France is Paris."),
        ("user", "And of Italy? Answer in one word."),
    ];
    let json: Vec<Value> = messages
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let json = serde_json::to_string(&json).unwrap();
    for name in [SMOLLM2, GEMMA, QWEN] {
        let path = model(name);
        let file = shardload_gguf::GgufFile::open(&path).unwrap();
        let template = shardload_runtime::ChatTemplate::from_gguf(&file).unwrap();
        let tokenizer = shardload_tokenizer::Tokenizer::from_gguf(&file).unwrap();
        let turns: Vec<_> = messages
            .iter()
            .map(|(role, content)| shardload_runtime::Message::new(*role, *content))
            .collect();
        let server = WebServer::start(&[path.to_str().unwrap()]);
        let report = drive(
            &format!(
                "{}?run=1&cache=0&workers=2&messages={}",
                server.url,
                query(&json)
            ),
            &[],
        );
        assert_eq!(report["error"], Value::Null, "{name}: {report:#}");
        assert_eq!(
            report["rendered"],
            template.render(&turns, true).unwrap(),
            "{name}"
        );
        assert_eq!(
            report["prompt_tokens"],
            serde_json::json!(template.prompt_tokens(&tokenizer, &turns).unwrap()),
            "{name}"
        );
    }
}

/// Every vocabulary's tokenizer data (as `shardload web` serves it), run by
/// web/tokenizer.js in Chromium on the committed llama-tokenize cases.
#[test]
fn every_vocabulary_tokenizes_in_chromium_exactly_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    let vocabularies: Vec<_> = std::fs::read_dir(root().join("models/vocab"))
        .expect("models/vocab is missing: run scripts/fetch-vocabs (scripts/test does)")
        .map(|e| e.unwrap().path())
        .chain([model(SMOLLM2), model(GEMMA), model(QWEN)])
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    for path in &vocabularies {
        let file = shardload_gguf::GgufFile::open(path).unwrap();
        let tokenizer = shardload_tokenizer::Tokenizer::from_gguf(&file).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy();
        std::fs::write(
            dir.path().join(format!("{name}.json")),
            tokenizer.to_json().to_string(),
        )
        .unwrap();
    }
    let result = json_output(
        Command::new("node")
            .arg(root().join("web/tests/tokenize.mjs"))
            .arg(dir.path()),
        "tokenize.mjs",
    );
    assert_eq!(result["mismatches"], serde_json::json!([]), "{result:#}");
    assert_eq!(result["vocabularies"], vocabularies.len(), "{result:#}");
    assert!(result["cases"].as_u64().unwrap() >= 59 * vocabularies.len() as u64);
}

#[test]
fn a_reload_copies_the_model_from_the_browsers_cache_and_fetches_none_of_it() {
    let path = model(SMOLLM2);
    let profile = tempfile::tempdir().unwrap();
    let profile = profile.path().to_str().unwrap();
    let server = WebServer::start(&[path.to_str().unwrap()]);
    let page = format!("{}?run=1&tokens=19556,905&n=8&temp=0", server.url);
    let first = drive(&page, &["--profile", profile]);
    let second = drive(&page, &["--profile", profile]);
    for report in [&first, &second] {
        assert_eq!(report["error"], Value::Null, "{report:#}");
        assert_eq!(report["cache"]["error"], Value::Null, "{report:#}");
    }
    let copied = &first["bytes_copied"];
    assert_eq!(first["cache"]["from_network"], *copied);
    assert_eq!(first["cache"]["from_cache"], 0);
    assert_eq!(second["cache"]["from_network"], 0, "{second:#}");
    assert_eq!(second["cache"]["from_cache"], *copied);
    assert_eq!(first["tokens"], second["tokens"]);
}

#[test]
fn a_changed_model_file_is_not_taken_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SMOLLM2);
    std::fs::copy(model(SMOLLM2), &path).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let profile = profile.path().to_str().unwrap();
    let server = WebServer::start(&[path.to_str().unwrap()]);
    let port = server.port();
    let first = drive(&format!("{}?run=1", server.url), &["--profile", profile]);
    assert_eq!(first["error"], Value::Null, "{first:#}");
    drop(server);
    // One byte of the first tensor's data: the fingerprint reads it, so the plan's changes.
    let data_offset = shardload_gguf::GgufFile::open(&path)
        .unwrap()
        .header
        .data_offset;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[data_offset as usize + 7] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    // The same origin (port), so the same browser storage.
    let server = WebServer::on_port(&[path.to_str().unwrap()], port);
    let second = drive(
        &format!("{}?run=1&verify=1&sweep=0", server.url),
        &["--profile", profile],
    );
    assert_eq!(second["error"], Value::Null, "{second:#}");
    assert_eq!(second["cache"]["from_cache"], 0, "{second:#}");
    assert_eq!(second["cache"]["from_network"], second["bytes_copied"]);
    assert_eq!(second["failed"], 0);
    assert_eq!(second["verified"], 272);
}

#[test]
fn a_storage_quota_refused_is_said_in_words_and_the_model_still_runs() {
    let path = model(SMOLLM2);
    let native = native_generate(
        &path,
        &["--prompt-tokens", "19556,905", "-n", "8", "--temp", "0"],
    );
    let server = WebServer::start(&[path.to_str().unwrap()]);
    let report = drive(
        &format!("{}?run=1&tokens=19556,905&n=8&temp=0", server.url),
        &["--quota", "1000000"],
    );
    assert_eq!(report["error"], Value::Null, "{report:#}");
    let error = report["cache"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(error.contains("storage quota refused"), "{error}");
    assert!(
        error.contains("loads from the network each time"),
        "{error}"
    );
    assert_eq!(report["tokens"], native["tokens"]);
}

/// `shardload web --export` of `path` into a new folder, the model at `model_url`.
fn export(path: &Path, model_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .arg("web")
        .arg(path)
        .arg("--export")
        .arg(dir.path())
        .args(["--model-url", model_url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Cross-Origin-Embedder-Policy"), "{stdout}");
    dir
}

#[test]
fn an_exported_site_on_a_plain_static_server_generates_shardload_generates_ids() {
    let path = model(SMOLLM2);
    let models = path.parent().unwrap().to_str().unwrap();
    let site = export(&path, &format!("/models/{SMOLLM2}"));
    for file in [
        "index.html",
        "manifest.json",
        "program.bin",
        "tokenizer.json",
        "guest.wasm",
        "vendor/jinja.js",
    ] {
        assert!(site.path().join(file).exists(), "{file}");
    }
    let native = native_generate(&path, &["-p", "Hello", "-n", "16", "--temp", "0"]);
    let report = drive(
        "/?run=1&cache=0&prompt=Hello&n=16&temp=0",
        &[
            "--static",
            &format!("/={}", site.path().display()),
            "--static",
            &format!("/models/={models}"),
        ],
    );
    assert_eq!(report["error"], Value::Null, "{report:#}");
    assert_eq!(report["tokens"], native["tokens"]);
}

#[test]
fn a_truncated_model_at_the_exported_url_is_an_error_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model(SMOLLM2)).unwrap();
    std::fs::write(
        dir.path().join(SMOLLM2),
        &bytes[..bytes.len() - 4096 * 1024],
    )
    .unwrap();
    let site = export(&model(SMOLLM2), &format!("/cut/{SMOLLM2}"));
    let report = drive(
        "/?run=1&cache=0",
        &[
            "--static",
            &format!("/={}", site.path().display()),
            "--static",
            &format!("/cut/={}", dir.path().display()),
        ],
    );
    let error = report["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(error.starts_with(SMOLLM2), "{error}");
    assert!(
        error.contains("truncated") || error.contains("416"),
        "{error}"
    );
}

#[test]
fn without_cross_origin_isolation_the_page_says_which_headers_it_needs() {
    let site = export(&model(SMOLLM2), SMOLLM2);
    let report = drive(
        "/?run=1",
        &[
            "--static",
            &format!("/={}", site.path().display()),
            "--no-isolation",
        ],
    );
    let error = report["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(error.contains("not cross-origin isolated"), "{error}");
    assert!(error.contains("COOP and COEP"), "{error}");
    assert_eq!(report["shown_error"], error);
}
