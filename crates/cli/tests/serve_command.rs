//! `shardload serve` against real clients: the official `openai` Python
//! package and httpx (tests/serve_client.py), on the real default model.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use shardload_suite::{SMOLLM2, model, root};

/// A running `shardload serve`, killed when dropped.
struct Server {
    child: Child,
    base_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `shardload serve` on the default model on a free port and waits
/// until it says it serves (the model loaded).
fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(["serve", model(SMOLLM2).to_str().unwrap(), "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base_url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    Server { child, base_url }
}

/// Runs tests/serve_client.py against `server` and parses what it printed.
fn client(server: &Server, args: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(root().join("tests/serve_client.py"))
        .arg(&server.base_url)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "serve_client.py {args:?} failed (pip install -r scripts/requirements.txt?): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_openai_client_gets_chat_and_completions_plain_and_streamed() {
    let server = serve(&["--parallel", "2", "--ctx", "1024"]);
    let got = client(&server, &["basics"]);
    assert_eq!(got["models"][0], SMOLLM2.trim_end_matches(".gguf"));
    let plain = &got["plain"];
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["role"], "assistant");
    assert!(
        plain["content"].as_str().unwrap().contains("Paris"),
        "{plain}"
    );
    // Streamed, the same greedy reply in pieces, and the usage chunk last.
    assert_eq!(got["streamed"]["content"], plain["content"]);
    assert_eq!(got["streamed"]["finish_reason"], plain["finish_reason"]);
    assert!(got["streamed"]["chunks"].as_u64().unwrap() > 3);
    let (usage, streamed) = (&plain["usage"], &got["streamed"]["usage"]);
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(streamed[count], usage[count], "{count}");
    }
    // The same prompt again found its tokens in the slot's cache: all but the
    // last, whose logits give the first token, came from it.
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        streamed["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() - 1)
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    assert!(
        got["completion"]["text"]
            .as_str()
            .unwrap()
            .contains("Paris")
    );
    // A stop text ends the reply and is not part of it.
    let stopped = &got["stopped"];
    assert_eq!(stopped["finish_reason"], "stop");
    let content = stopped["content"].as_str().unwrap();
    assert!(content.contains('4') && !content.contains('5'), "{stopped}");
    // Log-probabilities: greedy picks each step's most likely token.
    let lp = &got["logprobs"];
    assert_eq!(lp["tokens"], lp["text"], "{lp}");
    assert_eq!(lp["greedy_is_top"], true, "{lp}");
    assert_eq!(lp["all_negative"], true, "{lp}");
    assert!(
        lp["tops"].as_array().unwrap().iter().all(|n| n == 3),
        "{lp}"
    );
    let legacy = &got["completion_logprobs"];
    let joined: String = legacy["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, legacy["text"].as_str().unwrap());
    assert!(
        legacy["top"].as_array().unwrap().iter().all(|n| n == 2),
        "{legacy}"
    );
    assert_eq!(got["error"]["status"], 400);
    assert!(got["error"]["message"].as_str().unwrap().contains("n:"));
}

#[test]
fn a_greedy_reply_is_what_generate_gives_for_the_same_rendered_prompt() {
    let server = serve(&["--parallel", "2", "--ctx", "1024"]);
    let got = client(&server, &["basics"]);
    let reply = got["plain"]["content"].as_str().unwrap();
    // The prompt the server rendered, then `shardload generate` on it.
    let rendered = Command::new("python3")
        .args([
            "-c",
            "import httpx, json, sys; print(httpx.post(sys.argv[1].removesuffix('/v1') + '/apply-template', \
             json={'messages': [{'role': 'user', 'content': 'What is the capital of France? Answer in one word.'}]}).json()['prompt'], end='')",
            &server.base_url,
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let prompt = String::from_utf8(rendered.stdout).unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let generated = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args([
            "generate",
            model(SMOLLM2).to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "24",
            "-p",
            &prompt,
        ])
        .output()
        .unwrap();
    assert!(generated.status.success());
    assert_eq!(
        String::from_utf8(generated.stdout).unwrap().trim_end(),
        reply.trim_end()
    );
}

#[test]
fn eight_concurrent_greedy_or_seeded_requests_give_the_tokens_each_gives_alone() {
    let server = serve(&["--parallel", "8", "--ctx", "512", "--threads", "2"]);
    let got = client(&server, &["concurrent", "8"]);
    for way in ["greedy", "seeded"] {
        assert_eq!(got[way]["alone"], got[way]["together"], "{way}");
        let replies: Vec<&str> = got[way]["alone"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        // Different prompts, different replies: no request sees another's tokens.
        let mut distinct = replies.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "{way}: {replies:?}");
    }
    // Sampling did sample: the seeded replies are not the greedy ones.
    assert_ne!(got["greedy"]["alone"], got["seeded"]["alone"]);
}

#[test]
fn bad_requests_are_clear_errors_and_the_server_goes_on() {
    let server = serve(&["--parallel", "2", "--ctx", "512"]);
    let got = client(&server, &["bad-requests"]);
    for (name, case) in got.as_object().unwrap() {
        if name == "after" {
            continue;
        }
        assert_eq!(case["status"], case["want"], "{name}: {case}");
        if case["want"] != 200 {
            assert_eq!(case["code"], case["want"], "{name}: {case}");
            assert!(
                case["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{name}: {case}"
            );
        }
    }
    let message = |name: &str| got[name]["message"].as_str().unwrap().to_string();
    assert!(message("wrong type").contains("temperature"));
    assert!(message("prompt past the context").contains("512"));
    assert!(message("token id out of range").contains("prompt[2]"));
    assert_eq!(got["after"]["status"], 200);
}

#[test]
fn a_client_that_hangs_up_frees_its_slot_at_once() {
    let server = serve(&["--parallel", "1", "--ctx", "1024"]);
    let got = client(&server, &["hang-up"]);
    assert_eq!(got["chunks_seen"], 2);
    assert!(!got["after"].as_str().unwrap().is_empty());
    // The abandoned story stopped within a few tokens, not at its 400.
    let generated = got["tokens_generated"].as_u64().unwrap();
    assert!(generated < 100, "{generated} tokens generated in all");
}

#[test]
fn fifty_requests_for_four_slots_are_answered_or_told_to_retry() {
    let server = serve(&["--parallel", "4", "--ctx", "256", "--queue", "16"]);
    let got = client(&server, &["flood", "50"]);
    assert_eq!(got["other"], 0, "{got}");
    assert_eq!(got["busy"], got["busy_with_retry_after"], "{got}");
    assert!(got["ok"].as_u64().unwrap() >= 20, "{got}");
    assert!(got["busy"].as_u64().unwrap() > 0, "{got}");
    assert_eq!(got["after"], 200);
}

#[test]
fn with_an_api_key_every_route_but_health_wants_it() {
    let server = serve(&["--parallel", "1", "--ctx", "256", "--api-key", "s3cret"]);
    let got = client(&server, &["auth", "s3cret"]);
    assert_eq!(got["none"], 401);
    assert_eq!(got["wrong"], 401);
    assert_eq!(got["right"], 200);
    assert_eq!(got["health without a key"], 200);
}

/// `GET PATH` over a fresh connection: (status, body), or `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

#[test]
fn health_says_loading_until_the_model_is_loaded() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Compiling the guest anew (no cache) keeps the model loading for a while.
    // Killed when dropped, also when this test fails.
    let port_arg = port.to_string();
    let _server = Server {
        child: Command::new(env!("CARGO_BIN_EXE_shardload"))
            .args(["serve", model(SMOLLM2).to_str().unwrap(), "--no-cache"])
            .args(["--port", &port_arg, "--parallel", "1", "--ctx", "256"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        base_url: format!("http://127.0.0.1:{port}/v1"),
    };
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Some((status, body)) = get(port, "/health") {
            if seen.last() != Some(&(status, body.clone())) {
                seen.push((status, body));
            }
            if status == 200 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        seen,
        [
            (503, r#"{"status":"loading model"}"#.to_string()),
            (200, r#"{"status":"ok"}"#.to_string())
        ]
    );
}
