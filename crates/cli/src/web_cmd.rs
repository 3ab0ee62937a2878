//! `shardload web`: serve the browser host for a planned model on localhost.

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
    let server = shardload_web::Server::bind(SocketAddr::new(args.host, args.port))?;
    let total: u64 = plan.tensors.iter().map(|t| t.span.bytes).sum();
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "checksums {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template"),
    );
    let checksums = shardload_store::tensor_checksums(&plan, &|bytes| bar.inc(bytes))?;
    bar.finish_and_clear();
    let site = shardload_web::Site::new(&model.name(), &plan, &checksums)?;
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
