//! The browser host, served or exported. A tab cannot map a file, generate a
//! guest or build a forward-pass program, so `shardload web` gives it all of
//! that from one origin: the page and its ES modules (`web/` in the
//! repository, built into the binary), the plan, the guest generated for it
//! (relaxed-SIMD and plain-SIMD builds, importing the shard memories shared
//! so that every web worker reads one copy of the weights), the same
//! forward-pass program the wasmtime host runs, the tokenizer and chat
//! template resolved from the GGUF, the host's XXH64 of every tensor, and
//! the model files with HTTP Range support. [`Site::export`] writes the same
//! files to a folder for any static server.
//!
//! Every response carries the cross-origin isolation headers: the guest's
//! memories are shared, and browsers only allow `SharedArrayBuffer` (hence
//! shared wasm memories) in a cross-origin isolated page.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use shard_planner::Plan;
use shardload_gguf::{GgmlType, GgufFile};
use shardload_guest::program::{self as abi, MAX_BATCH};
use shardload_guest::{DotProduct, ShardMemories};
use shardload_runtime::{ChatTemplate, Program, SamplerConfig, SessionOptions};
use shardload_tokenizer::Tokenizer;
use tower_http::services::ServeFile;
use tower_http::set_header::SetResponseHeaderLayer;

/// The most web workers a page runs: the program lays out each thread's
/// working space for this many (about 2 MiB each for a 70B model).
pub const MAX_WORKERS: usize = 16;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const JSON: &str = "application/json";
const WASM: &str = "application/wasm";
const BINARY: &str = "application/octet-stream";

/// The page's files, as they are in `web/`: (path, content type, text).
const PAGE_FILES: &[(&str, &str, &str)] = &[
    ("index.html", HTML, include_str!("../../../web/index.html")),
    ("page.js", JS, include_str!("../../../web/page.js")),
    (
        "shardload.js",
        JS,
        include_str!("../../../web/shardload.js"),
    ),
    ("worker.js", JS, include_str!("../../../web/worker.js")),
    ("session.js", JS, include_str!("../../../web/session.js")),
    ("sampler.js", JS, include_str!("../../../web/sampler.js")),
    (
        "tokenizer.js",
        JS,
        include_str!("../../../web/tokenizer.js"),
    ),
    ("cache.js", JS, include_str!("../../../web/cache.js")),
    (
        "vendor/jinja.js",
        JS,
        include_str!("../../../web/vendor/jinja.js"),
    ),
];

/// How a site is built.
#[derive(Clone, Debug)]
pub struct SiteOptions {
    /// Tokens of context the page's conversation holds.
    pub ctx: usize,
}

/// Everything one `shardload web` serves or exports, built before the first request.
pub struct Site {
    /// Generated files: (path, content type, bytes).
    files: Vec<(String, &'static str, Vec<u8>)>,
    /// The manifest, less the model files' URLs (they differ between serving and exporting).
    manifest: Value,
    /// The model's files on this machine, in plan order.
    model_files: Vec<PathBuf>,
}

impl Site {
    /// Generates the guest for the plan (both dot-product builds), the
    /// forward-pass program of `file`'s architecture, the tokenizer and chat
    /// template data, and the manifest the page starts from. `checksums[t]`
    /// is the host's XXH64 (seed 0) of tensor `t`'s bytes, read from the file.
    /// A model without a usable tokenizer or template still loads: the page
    /// then takes token ids (`?tokens=`), and says why it cannot chat.
    pub fn new(
        model_name: &str,
        plan: &Plan,
        file: &GgufFile,
        checksums: &[u64],
        options: &SiteOptions,
    ) -> Result<Site> {
        if checksums.len() != plan.tensors.len() {
            return Err(anyhow!(
                "{} checksums for {} tensors",
                checksums.len(),
                plan.tensors.len()
            ));
        }
        let types = shardload_store::guest_types(plan);
        let memories = ShardMemories::Shared(plan.shards.iter().map(|s| s.pages).collect());
        let guest = |dot| {
            shardload_guest::guest_wasm(&memories, &types, dot)
                .map_err(|e| anyhow!("cannot generate the guest: {e}"))
        };
        let routes = shard_planner::Router::new(plan).routes().len();
        let scratch_free = shardload_guest::abi::scratch_free_offset(routes, plan.tensors.len());
        let session = SessionOptions {
            ctx: options.ctx,
            threads: MAX_WORKERS,
            sequences: 1,
            layers: None,
        };
        let program = Program::build(plan, file, &session, scratch_free)?;
        let hp = shardload_runtime::Hyperparameters::read(file)?;
        let tokenizer = Tokenizer::from_gguf(file).map_err(|e| e.to_string());
        let template = ChatTemplate::from_gguf(file).map_err(|e| format!("{e:#}"));
        // The page writes the routing tables itself and needs each type's id
        // and whether the guest has kernels for it: given from the one table.
        let type_ids: serde_json::Map<String, Value> = types
            .iter()
            .map(|t| (t.name().to_string(), json!(t.id())))
            .collect();
        let kernel_types: Vec<&str> = types
            .iter()
            .filter(|t| shardload_guest::KERNEL_TYPES.contains(t))
            .map(|t| GgmlType::name(*t))
            .collect();
        let sampler = SamplerConfig::default();
        let manifest = json!({
            "format": "shardload-web/2",
            "model": {"name": model_name},
            "plan": "plan.json",
            "guest": {"relaxed": "guest.wasm", "plain": "guest-plain.wasm"},
            "checksums": "checksums.json",
            "ggml_types": type_ids,
            "kernel_types": kernel_types,
            "scratch_free": scratch_free,
            "program": {
                "url": "program.bin",
                "at": program.at,
                "batch": program.batch,
                "barrier": program.barrier,
                "logits": program.logits,
                "end": program.end,
                "cache_bytes": program.cache_bytes,
                "rings": program.rings,
                "ctx": options.ctx,
                "max_workers": MAX_WORKERS,
                "vocab": hp.vocab,
                "layers": hp.layers,
                "architecture": hp.architecture,
            },
            "abi": {
                "max_batch": MAX_BATCH,
                "batch": {
                    "tokens": abi::batch::TOKENS,
                    "outputs": abi::batch::OUTPUTS,
                    "ids": abi::batch::IDS,
                    "seqs": abi::batch::SEQS,
                    "positions": abi::batch::POSITIONS,
                    "output_rows": abi::batch::OUTPUT_ROWS,
                    "size": abi::batch::SIZE,
                },
                "barrier": {
                    "count": abi::barrier::COUNT,
                    "generation": abi::barrier::GENERATION,
                    "abort": abi::barrier::ABORT,
                },
            },
            "tokenizer": match &tokenizer {
                Ok(_) => json!({"url": "tokenizer.json"}),
                Err(why) => json!({"error": why}),
            },
            "chat_template": match &template {
                Ok(t) => json!({"source": t.source(), "bos_token": t.bos_token(), "eos_token": t.eos_token()}),
                Err(why) => json!({"error": why}),
            },
            "sampler": {
                "temperature": sampler.temperature,
                "top_k": sampler.top_k,
                "top_p": sampler.top_p,
                "min_p": sampler.min_p,
                "seed": sampler.seed,
            },
        });
        let checksums = json!({
            "format": "shardload-checksums/1",
            "tensors": plan.tensors.iter().zip(checksums).map(|(t, h)| json!({
                "name": t.span.name,
                "xxh64": format!("{h:016x}"),
            })).collect::<Vec<_>>(),
        });
        let mut files = vec![
            (
                "plan.json".to_string(),
                JSON,
                serde_json::to_vec_pretty(plan)?,
            ),
            (
                "checksums.json".to_string(),
                JSON,
                serde_json::to_vec(&checksums)?,
            ),
            ("guest.wasm".to_string(), WASM, guest(DotProduct::Relaxed)?),
            (
                "guest-plain.wasm".to_string(),
                WASM,
                guest(DotProduct::Plain)?,
            ),
            ("program.bin".to_string(), BINARY, program.bytes),
        ];
        if let Ok(tokenizer) = &tokenizer {
            files.push((
                "tokenizer.json".to_string(),
                JSON,
                serde_json::to_vec(&tokenizer.to_json())?,
            ));
        }
        for &(path, ty, text) in PAGE_FILES {
            files.push((path.to_string(), ty, text.as_bytes().to_vec()));
        }
        Ok(Site {
            files,
            manifest,
            model_files: plan
                .model
                .files
                .iter()
                .map(|f| PathBuf::from(&f.path))
                .collect(),
        })
    }

    /// The manifest with the model files at `urls` (in plan order).
    fn manifest(&self, urls: &[String]) -> Result<Vec<u8>> {
        let mut manifest = self.manifest.clone();
        let files: Vec<Value> = self
            .model_files
            .iter()
            .zip(urls)
            .map(|(path, url)| {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                json!({
                    "url": url,
                    "name": path.file_name().map(|n| n.to_string_lossy()),
                    "size": size,
                })
            })
            .collect();
        manifest["model"]["files"] = Value::Array(files);
        Ok(serde_json::to_vec_pretty(&manifest)?)
    }

    /// Writes the page, the manifest and every generated file into `dir`, for
    /// a static server that sends COOP and COEP; the page fetches the model
    /// files from `model_urls` (one per file, relative to the page or
    /// absolute; a server that answers Range requests). Returns the paths written.
    pub fn export(&self, dir: &Path, model_urls: &[String]) -> Result<Vec<PathBuf>> {
        if model_urls.len() != self.model_files.len() {
            return Err(anyhow!(
                "{} model URLs for {} model files",
                model_urls.len(),
                self.model_files.len()
            ));
        }
        let mut written = Vec::new();
        let mut write = |path: &str, bytes: &[u8]| -> Result<()> {
            let to = dir.join(path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
            written.push(to);
            Ok(())
        };
        for (path, _, bytes) in &self.files {
            write(path, bytes)?;
        }
        write("manifest.json", &self.manifest(model_urls)?)?;
        Ok(written)
    }

    /// The model files' names, the URLs an export points at by default (the
    /// files placed beside the page).
    pub fn model_file_names(&self) -> Vec<String> {
        self.model_files
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The routes: `/` (the page), each generated file by its name,
    /// `/manifest.json`, and `/model/K` for the plan's K-th file (Range
    /// requests answered). Bound to a loopback `addr`, only requests naming
    /// it (or `localhost`) in `Host` are answered: a web page whose name an
    /// attacker re-points at 127.0.0.1 (DNS rebinding) cannot read the model.
    pub fn router(self, addr: SocketAddr) -> Result<Router> {
        // Bytes: each request clones a reference, not the body.
        let body = |body: axum::body::Bytes, ty: &'static str| {
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, ty)], body).into_response() }
            })
        };
        let urls: Vec<String> = (0..self.model_files.len())
            .map(|k| format!("model/{k}"))
            .collect();
        let manifest = self.manifest(&urls)?;
        let index = PAGE_FILES[0].2;
        let mut router = Router::new()
            .route("/", body(index.into(), HTML))
            .route("/manifest.json", body(manifest.into(), JSON));
        for (path, ty, bytes) in self.files {
            router = router.route(&format!("/{path}"), body(bytes.into(), ty));
        }
        for (k, path) in self.model_files.into_iter().enumerate() {
            // 1 MiB reads (not 64 KiB): fewer, larger chunks for the tab to copy.
            let file = ServeFile::new(path).with_buf_chunk_size(1 << 20);
            router = router.route_service(&format!("/model/{k}"), file);
        }
        let header = |name: &'static str, value: &'static str| {
            SetResponseHeaderLayer::overriding(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        };
        router = loopback_host_only(router, addr, "shardload web");
        Ok(router
            .layer(header("cross-origin-opener-policy", "same-origin"))
            .layer(header("cross-origin-embedder-policy", "require-corp"))
            .layer(header("cache-control", "no-store")))
    }
}

/// `router`, answering only requests whose `Host` names `addr` (or
/// `localhost`) when `addr` is a loopback address (403 otherwise): a web page
/// whose name an attacker re-points at 127.0.0.1 (DNS rebinding) cannot
/// reach a server meant for this machine. `who` names the server in the error.
pub fn loopback_host_only(router: Router, addr: SocketAddr, who: &'static str) -> Router {
    if !addr.ip().is_loopback() {
        return router;
    }
    let port = addr.port();
    let allowed = Arc::new(vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ]);
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let allowed = allowed.clone();
        async move {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            if host.is_some_and(|h| allowed.iter().any(|a| a == h)) {
                next.run(request).await
            } else {
                let message = format!(
                    "{who} answers only requests for {}, not Host {host:?}\n",
                    allowed.join(", ")
                );
                (StatusCode::FORBIDDEN, message).into_response()
            }
        }
    }))
}

/// A bound server: its address is known before it serves, so `--port 0` can
/// print the port it got.
pub struct Server {
    listener: tokio::net::TcpListener,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .build()
            .context("cannot start the HTTP runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| {
                format!("cannot listen on {addr} (is the port in use? try --port 0)")
            })?;
        Ok(Server { listener, runtime })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves the site until the process ends.
    pub fn serve(self, site: Site) -> Result<()> {
        let Server { listener, runtime } = self;
        runtime
            .block_on(async move {
                let addr = listener.local_addr()?;
                let router = site.router(addr).map_err(std::io::Error::other)?;
                axum::serve(listener, router).await
            })
            .context("the HTTP server stopped")
    }
}
