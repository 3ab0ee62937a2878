//! The browser host, served. A tab cannot map a file or generate a guest, so
//! one localhost origin gives it everything: the page and its ES module
//! (`web/` in the repository, built into the binary), the plan, the guest
//! module generated for that plan (relaxed-SIMD and plain-SIMD builds), the
//! host's XXH64 of every tensor, and the model files with HTTP Range support.
//!
//! Every response carries the cross-origin isolation headers: the guest's
//! scratch is a shared memory, and browsers only allow `SharedArrayBuffer`
//! (hence shared wasm memories) in a cross-origin isolated page.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use shard_planner::Plan;
use shardload_gguf::GgmlType;
use shardload_guest::DotProduct;
use tower_http::services::ServeFile;
use tower_http::set_header::SetResponseHeaderLayer;

/// The page a person opens.
const INDEX_HTML: &str = include_str!("../../../web/index.html");
/// The page's script: UI and report.
const PAGE_JS: &str = include_str!("../../../web/page.js");
/// The browser host: memories, copying, tables, the guest.
const HOST_JS: &str = include_str!("../../../web/shardload.js");

/// What one `shardload web` serves, built before the first request.
pub struct Site {
    manifest: String,
    plan: String,
    guest_relaxed: Vec<u8>,
    guest_plain: Vec<u8>,
    checksums: String,
    files: Vec<PathBuf>,
}

impl Site {
    /// Generates the guest for the plan (both dot-product builds) and writes
    /// the manifest the page starts from. `checksums[t]` is the host's XXH64
    /// (seed 0) of tensor `t`'s bytes, read from the file.
    pub fn new(model_name: &str, plan: &Plan, checksums: &[u64]) -> Result<Site> {
        if checksums.len() != plan.tensors.len() {
            return Err(anyhow!(
                "{} checksums for {} tensors",
                checksums.len(),
                plan.tensors.len()
            ));
        }
        let shards = u32::try_from(plan.shards.len()).context("too many shards")?;
        let types = shardload_store::guest_types(plan);
        let guest = |dot| {
            shardload_guest::guest_wasm(shards, &types, dot)
                .map_err(|e| anyhow!("cannot generate the guest: {e}"))
        };
        // The page writes the routing tables itself and needs each type's id
        // and whether the guest has kernels for it: given from the one table.
        let type_ids: serde_json::Map<String, serde_json::Value> = types
            .iter()
            .map(|t| (t.name().to_string(), json!(t.id())))
            .collect();
        let kernel_types: Vec<&str> = types
            .iter()
            .filter(|t| shardload_guest::KERNEL_TYPES.contains(t))
            .map(|t| GgmlType::name(*t))
            .collect();
        let manifest = json!({
            "format": "shardload-web/1",
            "model": {
                "name": model_name,
                "files": plan.model.files.iter().enumerate().map(|(k, f)| json!({
                    "url": format!("/model/{k}"),
                    "name": std::path::Path::new(&f.path).file_name().map(|n| n.to_string_lossy()),
                    "size": f.size,
                })).collect::<Vec<_>>(),
            },
            "plan": "/plan.json",
            "guest": {"relaxed": "/guest.wasm", "plain": "/guest-plain.wasm"},
            "checksums": "/checksums.json",
            "ggml_types": type_ids,
            "kernel_types": kernel_types,
        });
        let checksums = json!({
            "format": "shardload-checksums/1",
            "tensors": plan.tensors.iter().zip(checksums).map(|(t, h)| json!({
                "name": t.span.name,
                "xxh64": format!("{h:016x}"),
            })).collect::<Vec<_>>(),
        });
        Ok(Site {
            manifest: serde_json::to_string_pretty(&manifest)?,
            plan: serde_json::to_string_pretty(plan)?,
            guest_relaxed: guest(DotProduct::Relaxed)?,
            guest_plain: guest(DotProduct::Plain)?,
            checksums: serde_json::to_string(&checksums)?,
            files: plan
                .model
                .files
                .iter()
                .map(|f| PathBuf::from(&f.path))
                .collect(),
        })
    }

    /// The routes: `/`, `/page.js`, `/shardload.js`, `/manifest.json`,
    /// `/plan.json`, `/guest.wasm`, `/guest-plain.wasm`, `/checksums.json`,
    /// and `/model/K` for the plan's K-th file (Range requests answered).
    /// Bound to a loopback `addr`, only requests naming it (or `localhost`)
    /// in `Host` are answered: a web page whose name an attacker re-points
    /// at 127.0.0.1 (DNS rebinding) cannot read the model.
    pub fn router(self, addr: SocketAddr) -> Router {
        // Bytes: each request clones a reference, not the body.
        let body = |body: axum::body::Bytes, ty: &'static str| {
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, ty)], body).into_response() }
            })
        };
        const JS: &str = "text/javascript; charset=utf-8";
        const JSON: &str = "application/json";
        const WASM: &str = "application/wasm";
        let mut router = Router::new()
            .route("/", body(INDEX_HTML.into(), "text/html; charset=utf-8"))
            .route("/page.js", body(PAGE_JS.into(), JS))
            .route("/shardload.js", body(HOST_JS.into(), JS))
            .route("/manifest.json", body(self.manifest.into(), JSON))
            .route("/plan.json", body(self.plan.into(), JSON))
            .route("/checksums.json", body(self.checksums.into(), JSON))
            .route("/guest.wasm", body(self.guest_relaxed.into(), WASM))
            .route("/guest-plain.wasm", body(self.guest_plain.into(), WASM));
        for (k, path) in self.files.into_iter().enumerate() {
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
        router
            .layer(header("cross-origin-opener-policy", "same-origin"))
            .layer(header("cross-origin-embedder-policy", "require-corp"))
            .layer(header("cache-control", "no-store"))
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
                axum::serve(listener, site.router(addr)).await
            })
            .context("the HTTP server stopped")
    }
}
