//! `shardload web`: serve the browser host for a planned model on localhost,
//! or export it as static files.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Result;
use shardload_store::OpenModel;

use crate::units::human;
use crate::{WebArgs, check_model_exists, http_url};

pub fn run(args: &WebArgs) -> Result<ExitCode> {
    check_model_exists(&args.model)?;
    let model = OpenModel::open(&args.model)?;
    let plan = args.plan.plan(&model)?;
    // Bind first: a port in use is reported before minutes of hashing.
    let server = match &args.export {
        Some(_) => None,
        None => Some(shardload_web::Server::bind(SocketAddr::new(
            args.host, args.port,
        ))?),
    };
    let total: u64 = plan.tensors.iter().map(|t| t.span.bytes).sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "checksums {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template"),
    );
    let checksums = shardload_store::tensor_checksums(&plan, &|bytes| bar.inc(bytes))?;
    bar.finish_and_clear();
    let options = shardload_web::SiteOptions { ctx: args.ctx };
    let site = shardload_web::Site::new(
        &model.name(),
        &plan,
        model.gguf.metadata(),
        &checksums,
        &options,
    )?;
    let Some(server) = server else {
        return export(args, &site);
    };
    let addr = server.local_addr()?;
    // Whoever started the server may stop reading its output; it serves on.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "serving {} ({} tensors, {} in {} shard{}) at {}/\n\
         open it in a browser (add ?run=1 to load at once); Ctrl-C stops",
        model.name(),
        plan.tensors.len(),
        human(total),
        plan.shards.len(),
        if plan.shards.len() == 1 { "" } else { "s" },
        http_url(addr)
    );
    let _ = out.flush();
    drop(out);
    if !addr.ip().is_loopback() {
        eprintln!(
            "shardload: warning: listening on {}: the model file is readable by anyone who can reach it, \
             and a browser on another machine gets no shared memory over plain HTTP (not a secure \
             origin): reach it as http://localhost through an SSH tunnel, or put HTTPS in front",
            addr.ip()
        );
    }
    server.serve(site)?;
    Ok(ExitCode::SUCCESS)
}

/// `--export DIR`: the site's files into DIR, the model at `--model-url`s.
fn export(args: &WebArgs, site: &shardload_web::Site) -> Result<ExitCode> {
    let dir = args.export.as_deref().unwrap_or(std::path::Path::new("."));
    let urls = if args.model_url.is_empty() {
        site.model_file_names()
    } else {
        args.model_url.clone()
    };
    let written = site.export(dir, &urls)?;
    let bytes: u64 = written
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "wrote {} files ({}) to {}; the page fetches the model from {}\n\
         host the folder on a server that sends Cross-Origin-Opener-Policy: same-origin and\n\
         Cross-Origin-Embedder-Policy: require-corp, and serves the model with Range requests",
        written.len(),
        human(bytes),
        dir.display(),
        urls.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
