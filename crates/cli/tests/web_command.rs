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
use shardload_suite::{GEMMA, SMOLLM2, make_split, model, reference_xxh64, root};

/// A `shardload web` process on a free port, stopped when dropped.
struct WebServer {
    child: Child,
    url: String,
    /// The server's stdout, kept open while it runs.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl WebServer {
    fn start(args: &[&str]) -> WebServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardload"))
            .arg("web")
            .args(args)
            .args(["--port", "0"])
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
    let output = Command::new("node")
        .arg(web.join("tests/drive.mjs"))
        .arg(url)
        .args(extra)
        .output()
        .expect("node is needed for the browser tests");
    assert!(
        output.status.success(),
        "drive.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `shardload run --sweep --json`: the same guest, natively, over mapped shards.
fn native_run(model: &Path, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .arg("run")
        .arg(model)
        .args(["--shards", "4", "--sweep", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
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
