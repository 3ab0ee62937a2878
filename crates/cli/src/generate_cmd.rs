//! `shardload generate`: text from a prompt, the model's math in the guest.
//! Streams tokens to stdout as they are made; a summary on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use shardload_runtime::{Sampler, Session};
use shardload_store::{MemoryUsage, OpenModel};
use shardload_tokenizer::Tokenizer;

use crate::units::human;
use crate::{DEFAULT_MODEL, SamplingArgs, SessionArgs, StoreArgs, check_model_exists};

/// What to generate from, with which model, and how to sample.
#[derive(Args)]
pub struct GenerateArgs {
    /// The GGUF model (for a split set, its first file). Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// The prompt text (special tokens such as <|im_start|> are parsed; BOS added when the model adds one).
    #[arg(short, long, conflicts_with_all = ["file", "prompt_tokens"])]
    prompt: Option<String>,
    /// Read the prompt from this file (UTF-8).
    #[arg(short, long, value_name = "FILE", conflicts_with = "prompt_tokens")]
    file: Option<PathBuf>,
    /// The prompt as token ids (1,2,3), used exactly as given (no BOS added): for models without a tokenizer.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    prompt_tokens: Option<Vec<u32>>,
    /// Tokens to generate (stops earlier at an end-of-generation token or a full context).
    #[arg(short = 'n', long, default_value_t = 128)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Print the time spent in each guest export (prompt and generation), slowest first, on stderr.
    #[arg(long)]
    profile: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the logits each generated token was drawn from to FILE: one row
    /// of vocabulary-size f32 values (little-endian) per token, for
    /// comparing hosts bit for bit.
    #[arg(long, value_name = "FILE")]
    dump_logits: Option<PathBuf>,
}

pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    check_model_exists(&args.model)?;
    let started = Instant::now();
    let model = OpenModel::open(&args.model)?;
    let file = model.gguf.metadata();
    let tokenizer = match Tokenizer::from_gguf(file) {
        Ok(t) => Some(t),
        Err(e) if args.prompt_tokens.is_some() => {
            eprintln!("shardload: no usable tokenizer ({e}); printing token ids");
            None
        }
        Err(e) => {
            return Err(e).context("the model's tokenizer (give --prompt-tokens to bypass it)");
        }
    };
    let prompt: Vec<u32> = match (&args.prompt, &args.file, &args.prompt_tokens) {
        (_, _, Some(ids)) => ids.clone(),
        (Some(text), None, None) => encode(tokenizer.as_ref(), text.as_bytes()),
        (None, Some(path), None) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not UTF-8 (byte {})",
                    path.display(),
                    e.utf8_error().valid_up_to()
                )
            })?;
            encode(tokenizer.as_ref(), text.as_bytes())
        }
        _ => bail!("give a prompt: -p TEXT, -f FILE or --prompt-tokens IDS"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty (no tokens); give some text or --prompt-tokens");
    }
    if prompt.len() > args.session.ctx {
        bail!(
            "the prompt has {} tokens, more than --ctx {}",
            prompt.len(),
            args.session.ctx
        );
    }
    let store = args.store.build(&model)?;
    let mut session = Session::new(&store, file, args.session.ctx, args.session.threads)?;
    let ready = started.elapsed();

    let mut sampler = Sampler::new(args.sampling.config());
    session.set_profiling(args.profile)?;
    let clock = Instant::now();
    let mut logits = session.eval(&prompt)?;
    let prompt_time = clock.elapsed();
    let mut out = std::io::stdout().lock();
    let mut decoder = tokenizer.as_ref().map(Tokenizer::decoder);
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut first_token = None;
    let mut stop = None;
    let clock = Instant::now();
    let mut dump = match &args.dump_logits {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    while generated.len() < args.n_predict {
        if let Some(dump) = &mut dump {
            let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
            dump.write_all(&bytes)?;
        }
        let token = sampler.sample(&logits);
        first_token.get_or_insert_with(|| prompt_time + clock.elapsed());
        generated.push(token);
        if tokenizer.as_ref().is_some_and(|t| t.is_eog(token)) {
            stop = Some("end of generation");
            break;
        }
        let piece = match &mut decoder {
            Some(d) => d.push(token)?,
            None => format!("{token} "),
        };
        text += &piece;
        if !args.json {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
        }
        if generated.len() == args.n_predict {
            break;
        }
        if session.position() >= session.ctx() {
            stop = Some("the context is full (raise --ctx)");
            break;
        }
        logits = session.eval(&[token])?;
    }
    if let Some(mut dump) = dump {
        dump.flush()?;
    }
    if let Some(d) = decoder {
        let rest = d.finish();
        text += &rest;
        if !args.json {
            out.write_all(rest.as_bytes())?;
        }
    }
    let generate_time = clock.elapsed();
    if !args.json {
        // The streamed text ends its line before anything goes to stderr
        // (which may be the same terminal or file).
        writeln!(out)?;
        out.flush()?;
    }
    if args.profile {
        let total = (prompt_time + generate_time).as_secs_f64();
        eprintln!(
            "profile (time per operation in the guest, thread 0's view with its wait at the barrier after each; {:.1} ms in all):",
            total * 1e3
        );
        for (op, calls, time) in session.profile() {
            eprintln!(
                "  {op:<12} {calls:>8} calls {:>10.1} ms {:>5.1}%",
                time.as_secs_f64() * 1e3,
                100.0 * time.as_secs_f64() / total
            );
        }
    }
    let memory = MemoryUsage::now()?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    // The first generated token comes from the prompt's logits: later ones each cost a forward pass.
    let decoded = generated.len().saturating_sub(1);
    if args.json {
        let report = json!({
            "model": model.name(),
            "prompt_tokens": prompt,
            "tokens": generated,
            "text": text,
            "stop": stop.unwrap_or("token limit"),
            "timings_ms": {"ready": ms(ready), "prompt": ms(prompt_time), "generate": ms(generate_time),
                           "first_token": ms(first_token.unwrap_or_default())},
            "tokens_per_s": {"prompt": rate(prompt.len(), prompt_time), "generate": rate(decoded, generate_time)},
            "memory": {"rss": memory.rss, "private": memory.private_dirty, "scratch": session.scratch_bytes()},
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(reason) = stop {
            eprintln!("stopped: {reason}");
        }
        eprintln!(
            "prompt    {} tokens in {:.1} ms ({:.1} tok/s)\ngenerated {} tokens in {:.1} ms ({:.1} tok/s)\nfirst token {:.1} ms, ready {:.1} ms\nmemory    RSS {}, private {} (guest scratch + KV cache {})",
            prompt.len(),
            ms(prompt_time),
            rate(prompt.len(), prompt_time),
            generated.len(),
            ms(generate_time),
            rate(decoded, generate_time),
            ms(first_token.unwrap_or_default()),
            ms(ready),
            human(memory.rss),
            human(memory.private_dirty),
            human(session.scratch_bytes() as u64),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Text to ids as llama.cpp's tools do: special tokens parsed, BOS per the model.
fn encode(tokenizer: Option<&Tokenizer>, text: &[u8]) -> Vec<u32> {
    tokenizer.map_or_else(Vec::new, |t| t.encode(text, true, true))
}
