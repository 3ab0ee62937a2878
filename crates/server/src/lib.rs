//! `shardload serve`: llama-server's and OpenAI's HTTP API over one mapped
//! copy of the weights. Requests become jobs of the engine (`engine.rs`),
//! which batches every running completion into each step; this file is the
//! HTTP side: routes, request fields, response shapes and errors (OpenAI's
//! `{"error": {"message", "type", "code"}}`). Built on axum, the HTTP stack
//! `shardload web` already uses.

mod api;
mod engine;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use shardload_runtime::{ChatTemplate, Session, SessionOptions};
use shardload_store::{OpenModel, WeightStore};
use shardload_tokenizer::Tokenizer;

pub use engine::STEP_TOKENS;

/// How `shardload serve` runs.
pub struct ServeOptions {
    /// Where to listen (the loopback unless told otherwise).
    pub addr: SocketAddr,
    /// Slots: completions run at once, each a sequence with its own KV region.
    pub parallel: usize,
    /// Tokens per slot (prompt and completion).
    pub ctx: usize,
    /// Guest threads.
    pub threads: usize,
    /// Requests waiting for a slot at most; past it, 503 with `Retry-After`.
    pub queue: usize,
    /// When set, every route but `/health` wants `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The model's name in `/v1/models` and responses.
    pub model_name: String,
    /// How long a request may take, waiting included; then it fails and frees its slot.
    pub timeout: std::time::Duration,
}

/// What `serve` reports once the model is loaded.
pub struct Ready {
    /// The address it listens on (the port chosen when 0 was asked).
    pub addr: SocketAddr,
    /// KV cache bytes of each slot.
    pub kv_cache_bytes_per_slot: usize,
}

/// What the routes share once the model is loaded.
pub(crate) struct Loaded {
    pub(crate) tokenizer: &'static Tokenizer,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) jobs: std::sync::mpsc::Sender<engine::Job>,
    pub(crate) counters: Arc<engine::Counters>,
    pub(crate) kv_cache_bytes_per_slot: usize,
}

/// The server's state: options, and the model once loaded (`/health` says 503 until then).
pub(crate) struct State {
    pub(crate) options: ServeOptions,
    pub(crate) loaded: OnceLock<Loaded>,
}

/// Serves until the process ends: binds at once (so `/health` answers while
/// the model loads), then loads the model with `build_store` on a thread of
/// its own and starts the engine. `ready` is called with the bound address
/// once the model is loaded.
pub fn serve(
    model: OpenModel,
    build_store: impl FnOnce(&OpenModel) -> Result<WeightStore> + Send + 'static,
    options: ServeOptions,
    ready: impl FnOnce(Ready) + Send + 'static,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .with_context(|| format!("cannot listen on {}", options.addr))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            options,
            loaded: OnceLock::new(),
        });
        let loader = state.clone();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        std::thread::Builder::new()
            .name("shardload-engine".into())
            .spawn(move || {
                if let Err(e) = load_and_run(model, build_store, &loader, addr, ready) {
                    let _ = failed_tx.send(e);
                }
            })?;
        let app = api::router(state, addr);
        tokio::select! {
            served = axum::serve(listener, app) => served.map_err(anyhow::Error::from),
            Ok(e) = failed_rx => Err(e),
        }
    })
}

fn load_and_run(
    model: OpenModel,
    build_store: impl FnOnce(&OpenModel) -> Result<WeightStore>,
    state: &State,
    addr: SocketAddr,
    ready: impl FnOnce(Ready),
) -> Result<()> {
    let file = model.gguf.metadata();
    // Lives as long as the server: the engine's streaming decoders borrow it.
    let tokenizer: &'static Tokenizer = Box::leak(Box::new(
        Tokenizer::from_gguf(file).context("the model's tokenizer")?,
    ));
    let template = ChatTemplate::from_gguf(file).ok();
    let store = build_store(&model)?;
    let options = &state.options;
    let session = Session::with_options(
        &store,
        file,
        &SessionOptions {
            ctx: options.ctx,
            threads: options.threads,
            sequences: options.parallel,
            layers: None,
        },
    )?;
    let kv_cache_bytes_per_slot = session.kv_cache_bytes() / options.parallel;
    let (jobs, receiver) = std::sync::mpsc::channel();
    let counters = Arc::new(engine::Counters {
        slots: (0..options.parallel).map(|_| Default::default()).collect(),
        ..Default::default()
    });
    let _ = state.loaded.set(Loaded {
        tokenizer,
        template,
        jobs,
        counters: counters.clone(),
        kv_cache_bytes_per_slot,
    });
    ready(Ready {
        addr,
        kv_cache_bytes_per_slot,
    });
    // Runs as long as the server: the routes hold the jobs' sender. The store
    // outlives the session, which runs the guest over its memories.
    engine::run(session, tokenizer, receiver, counters);
    drop(store);
    Ok(())
}
