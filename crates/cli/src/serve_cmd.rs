//! `shardload serve`: the OpenAI-compatible server (crates/server) over one
//! mapped copy of the model.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use shardload_server::{STEP_TOKENS, ServeOptions};
use shardload_store::{OpenModel, WeightStore};

use crate::units::human;
use crate::{DEFAULT_MODEL, StoreArgs, check_model_exists, http_url};

/// What to serve, where, and how many conversations at once.
#[derive(Args)]
pub struct ServeArgs {
    /// The GGUF model (for a split set, its first file). Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// The address to listen on. The default is this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port to listen on (0: any free port, printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Slots: completions generated at once, batched together (each a sequence with its own KV cache).
    #[arg(long, short = 'p', visible_alias = "np", default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=STEP_TOKENS as u64))]
    parallel: usize,
    /// Context per slot in tokens (prompt and completion); sizes each slot's KV cache.
    #[arg(long, short = 'c', default_value_t = 4096)]
    ctx: usize,
    /// Guest threads (one guest instance each, all slots' batches split among them).
    #[arg(long, short = 't', default_value_t = std::thread::available_parallelism().map_or(1, usize::from))]
    threads: usize,
    /// Requests that may wait for a free slot; past that, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Seconds a request may take, waiting for a slot included; then it fails and frees its slot.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(args: &ServeArgs) -> Result<ExitCode> {
    check_model_exists(&args.model)?;
    if args.api_key.as_deref().is_some_and(str::is_empty) {
        bail!("--api-key: the key is empty");
    }
    let model = OpenModel::open(&args.model)?;
    let plan = args.store.plan(&model)?;
    let (mode, cache) = (args.store.mode(), args.store.cache());
    let addr = SocketAddr::new(args.host, args.port);
    if !addr.ip().is_loopback() {
        eprintln!(
            "shardload: warning: listening on {}: anyone who can reach it can use the model{}",
            addr.ip(),
            if args.api_key.is_some() {
                " with the key (sent in clear over plain HTTP: put HTTPS in front)"
            } else {
                " (give --api-key, and put HTTPS in front)"
            }
        );
    }
    let options = ServeOptions {
        addr,
        parallel: args.parallel,
        ctx: args.ctx,
        threads: args.threads,
        queue: args.queue,
        api_key: args.api_key.clone(),
        // The file's name, as llama-server names a model (`/v1/models`).
        model_name: args
            .model
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_else(|| model.name()),
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    let (parallel, ctx) = (args.parallel, args.ctx);
    shardload_server::serve(
        model,
        move |_| WeightStore::with_options(plan, mode, None, &cache),
        options,
        move |ready| {
            // Whoever started the server may stop reading its output; it serves on.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "serving at {}/v1 ({parallel} slots of {ctx} tokens, {} of KV cache each); Ctrl-C stops",
                http_url(ready.addr),
                human(ready.kv_cache_bytes_per_slot as u64)
            );
            let _ = out.flush();
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
