//! `shardload chat` as a user sees it, and the chat templates it renders.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use shardload_gguf::GgufFile;
use shardload_runtime::{CHAT_TEMPLATE_KEY, ChatTemplate, Message};
use shardload_suite::{GEMMA, QWEN, SMOLLM2, model};
use shardload_tokenizer::Tokenizer;

/// Runs `shardload chat ARGS` with `input` piped to its stdin.
fn chat(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_holds_a_two_turn_conversation_from_piped_stdin() {
    let path = model(SMOLLM2);
    let output = chat(
        &[path.to_str().unwrap(), "--temp", "0", "-n", "24"],
        "Hi!\nWhat is the capital of France?\n",
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Each reply ends with a newline; greedy SmolLM2 answers each in one line.
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 2, "stdout: {stdout:?}\nstderr: {stderr}");
    assert!(replies.iter().all(|r| !r.trim().is_empty()), "{stdout:?}");
    assert!(replies[1].contains("Paris"), "{stdout:?}");
    // Piped stdin: no `> ` prompt.
    assert!(!stderr.contains("> "), "{stderr}");
}

#[test]
fn gemma_holds_a_two_turn_conversation_from_piped_stdin() {
    let path = model(GEMMA);
    let output = chat(
        &[path.to_str().unwrap(), "--temp", "0", "-n", "16"],
        "Hi!\nWhat is the capital of France?\n",
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Replies end with a newline. What they say is this small base model's
    // business: llama.cpp's greedy text for a Gemma chat prompt is odd too,
    // and tests/generate.rs compares the tokens themselves.
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    assert!(stdout.trim().len() > 4, "{stdout:?}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn qwen_answers_a_coding_question_with_code() {
    let path = model(QWEN);
    let output = chat(
        &[path.to_str().unwrap(), "--temp", "0", "-n", "64"],
        "Write a Python function that reverses a string.\n",
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("```python") && stdout.contains("def ") && stdout.contains("[::-1]"),
        "{stdout:?}"
    );
}

#[test]
fn qwen_template_renders_as_jinja2_renders_it() {
    let file = GgufFile::open(model(QWEN)).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    // Qwen2.5's template (tool-calling branches and all), rendered by Python's
    // jinja2 3.1.6 for the same messages: its default system message when
    // none is given, then ChatML.
    assert_eq!(
        template
            .render(&[Message::new("user", "Hi")], true)
            .unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "2+2?"),
    ];
    assert_eq!(
        template.render(&conversation, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn chat_exits_cleanly_at_end_of_input() {
    let path = model(SMOLLM2);
    let output = chat(&[path.to_str().unwrap()], "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn a_full_context_ends_the_conversation_with_a_message() {
    let path = model(SMOLLM2);
    // The default system prompt and one turn take about 30 tokens.
    let output = chat(
        &[path.to_str().unwrap(), "--temp", "0", "--ctx", "40"],
        "Tell me a long story about a dragon.\nAnd another one.\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("the context is full"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn smollm2_template_renders_as_it_defines() {
    let file = GgufFile::open(model(SMOLLM2)).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    // The template's text (from the GGUF): a default system message when the
    // first message is not one, then `<|im_start|>ROLE\nCONTENT<|im_end|>\n`
    // per message. Python's jinja2 3.1.6 in Hugging Face's setup gives the same.
    assert_eq!(
        template
            .render(&[Message::new("user", "Hi")], true)
            .unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "2+2?"),
    ];
    assert_eq!(
        template.render(&conversation, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // Without the generation prompt, a rendered conversation is a prefix of the
    // next turn's: what lets chat keep its KV cache.
    let shorter = template.render(&conversation[..3], false).unwrap();
    assert!(
        template
            .render(&conversation, true)
            .unwrap()
            .starts_with(&shorter)
    );
}

#[test]
fn gemma_without_a_template_in_its_gguf_gets_gemma_3s_own_and_it_renders() {
    let file = GgufFile::open(model(GEMMA)).unwrap();
    assert!(
        file.get(CHAT_TEMPLATE_KEY).is_none(),
        "this Gemma GGUF carries no template"
    );

    // Gemma 3's own template (strip via `| trim`, raise_exception, `is string`,
    // slicing, whitespace control), with the BOS and EOS texts of the GGUF.
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let text = |id: Option<u32>| {
        String::from_utf8(tokenizer.token_text(id.unwrap()).unwrap().to_vec()).unwrap()
    };
    // Without a template in the GGUF, gemma3 models get Gemma 3's own.
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let _ = text;
    // Expected strings: Python's jinja2 3.1.6 rendering the same template in
    // Hugging Face's environment (trim_blocks, lstrip_blocks, loopcontrols).
    let hi = template
        .render(&[Message::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        hi,
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", " Hi "),
        Message::new("assistant", "Hello!"),
        Message::new("user", "2+2?"),
    ];
    assert_eq!(
        template.render(&conversation, true).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
    );
    // Roles that do not alternate: the template's raise_exception, as an error.
    let error = template
        .render(
            &[Message::new("user", "a"), Message::new("user", "b")],
            true,
        )
        .unwrap_err();
    assert!(format!("{error:#}").contains("must alternate"), "{error:#}");
    // The rendered <bos> tokenizes to the BOS id (chat adds no second one).
    let ids = tokenizer.encode(hi.as_bytes(), false, true);
    assert_eq!(ids.first().copied(), tokenizer.bos());
}

#[test]
fn ctrl_c_stops_a_reply_and_the_conversation_goes_on() {
    use std::io::Read;
    let path = model(SMOLLM2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardload"))
        .args(["chat", path.to_str().unwrap(), "--temp", "0", "-n", "3000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin
        .write_all(b"Write a very long story about a dragon, in great detail.\n")
        .unwrap();
    // Once the reply has begun to stream, interrupt it.
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(sent, 0);
    stdin.write_all(b"Say hi.\n").unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("[interrupted]"), "{stderr}");
    let mut text = first.to_vec();
    text.extend(rest);
    let text = String::from_utf8(text).unwrap();
    // The interrupted reply (cut well before 3000 tokens), then the reply to "Say hi.".
    assert_eq!(
        text.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "{text:?}"
    );
}
