//! `shardload chat`: a conversation rendered with the model's own chat
//! template, the KV cache kept across turns. User turns come one per line from
//! stdin (a terminal or a pipe); each reply streams to stdout and ends with a
//! newline.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;
use shardload_runtime::{ChatTemplate, Message, Sampler, Session};
use shardload_store::OpenModel;
use shardload_tokenizer::Tokenizer;

use crate::{DEFAULT_MODEL, SamplingArgs, SessionArgs, StoreArgs, check_model_exists};

/// Which model to talk to, and how to sample its replies.
#[derive(Args)]
pub struct ChatArgs {
    /// The GGUF model (for a split set, its first file). Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// A system message to start the conversation with (else the template's default, if any).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Use this Jinja chat template file instead of the model's tokenizer.chat_template.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// Tokens to generate per reply at most (a reply stops earlier at an end-of-generation token).
    #[arg(short = 'n', long, default_value_t = 512)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// Set by SIGINT while a reply is being generated: stop that reply.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Whether a reply is being generated (else SIGINT ends the program).
static GENERATING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if GENERATING.load(Ordering::SeqCst) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    } else {
        // At the prompt: leave at once, as a shell would (only async-signal-safe calls).
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, c"\n".as_ptr().cast(), 1);
            libc::_exit(130);
        }
    }
}

fn install_sigint_handler() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only touches atomics and async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Why a reply stopped.
enum Stop {
    /// End of generation, the token limit or Ctrl-C: the conversation goes on.
    Turn,
    /// The context is full: the conversation ends.
    ContextFull,
}

pub fn run(args: &ChatArgs) -> Result<ExitCode> {
    check_model_exists(&args.model)?;
    let model = OpenModel::open(&args.model)?;
    let file = model.gguf.metadata();
    let tokenizer = Tokenizer::from_gguf(file).context("the model's tokenizer")?;
    let template = match &args.chat_template {
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let text = |id: Option<u32>| {
                id.and_then(|id| tokenizer.token_text(id).ok())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            ChatTemplate::new(&source, &text(tokenizer.bos()), &text(tokenizer.eos()))
                .with_context(|| path.display().to_string())?
        }
        None => {
            ChatTemplate::from_gguf(file).context("give a template with --chat-template FILE")?
        }
    };
    let store = args.store.build(&model)?;
    let mut session = Session::new(&store, file, args.session.ctx, args.session.threads)?;
    let mut sampler = Sampler::new(args.sampling.config());

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::new("system", system.clone()));
    }
    // The tokens in the KV cache, in order (what `session` has evaluated).
    let mut cached: Vec<u32> = Vec::new();
    let interactive = std::io::stdin().is_terminal();
    install_sigint_handler();
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            if interactive {
                eprintln!();
            }
            return Ok(ExitCode::SUCCESS);
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        messages.push(Message::new("user", text));
        let tokens = template.prompt_tokens(&tokenizer, &messages)?;
        if tokens.len() > args.session.ctx {
            eprintln!(
                "shardload: the context is full: the conversation is {} tokens, more than --ctx {}; it ends here (raise --ctx for longer ones)",
                tokens.len(),
                args.session.ctx
            );
            return Ok(ExitCode::SUCCESS);
        }
        // Keep the cached prefix the new prompt shares; evaluate at least one token for logits.
        let common = cached
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        session.truncate(common);
        cached.truncate(common);

        INTERRUPTED.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let result = reply(
            &mut session,
            &mut sampler,
            &tokenizer,
            &tokens[common..],
            &mut cached,
            args.n_predict,
        );
        GENERATING.store(false, Ordering::SeqCst);
        let (text, stop) = result?;
        if INTERRUPTED.swap(false, Ordering::SeqCst) {
            eprintln!("[interrupted]");
        }
        messages.push(Message::new("assistant", text));
        if let Stop::ContextFull = stop {
            eprintln!(
                "shardload: the context is full ({} tokens, --ctx {}): the conversation ends here (raise --ctx for longer ones)",
                session.position(),
                args.session.ctx
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Evaluates `new` after the cache, then samples and streams a reply; every
/// token evaluated is pushed to `cached`. Returns the reply's text.
fn reply(
    session: &mut Session,
    sampler: &mut Sampler,
    tokenizer: &Tokenizer,
    new: &[u32],
    cached: &mut Vec<u32>,
    n_predict: usize,
) -> Result<(String, Stop)> {
    if new.is_empty() {
        bail!("nothing to evaluate");
    }
    let mut logits = session.eval(new)?;
    cached.extend_from_slice(new);
    let mut out = std::io::stdout().lock();
    let mut decoder = tokenizer.decoder();
    let mut text = String::new();
    let mut stop = Stop::Turn;
    for n in 1..=n_predict {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let token = sampler.sample(&logits);
        if tokenizer.is_eog(token) {
            break;
        }
        let piece = decoder.push(token)?;
        text += &piece;
        out.write_all(piece.as_bytes())?;
        out.flush()?;
        if n == n_predict {
            break;
        }
        if session.position() >= session.ctx() {
            stop = Stop::ContextFull;
            break;
        }
        logits = session.eval(&[token])?;
        cached.push(token);
    }
    let rest = decoder.finish();
    text += &rest;
    out.write_all(rest.as_bytes())?;
    writeln!(out)?;
    out.flush()?;
    Ok((text, stop))
}
