//! `shardload`: plan, build and run sharded multi-memory wasm weight stores.
//!
//! Thin by design: argument parsing and printing live here; reading models is
//! `shardload-gguf`, planning is `shard-planner`, memories and the guest are
//! `shardload-store`.

mod bench_cmd;
mod chat_cmd;
mod generate_cmd;
mod guest_cmd;
mod plan_cmd;
mod run_cmd;
mod serve_cmd;
mod synth_cmd;
mod tokenize_cmd;
mod units;
mod web_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shard_planner::{Boundary, PlanOptions};

/// The model `plan` and `run` use when none is named: what `scripts/fetch-models` fetches.
const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "shardload",
    version,
    about = "Run 70B-class GGUF models in WebAssembly: weights sharded across memory64 memories",
    long_about = "A single wasm memory tops out at 4 GiB (wasm32) or 16 GiB (memory64 in today's browsers), \
far below a 70B model. shardload splits a GGUF model's tensors across several memory64 memories, maps them \
straight from the file, and routes each logical tensor offset to a (memory, offset) pair for a guest module \
that imports them all with multi-memory."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Split a model's tensors into shard memories and print (or write) the plan.
    #[command(after_help = "Examples:
  shardload plan models/SmolLM2-135M-Instruct.Q4_1.gguf --shards 4
  shardload plan llama-70b-00001-of-00004.gguf                  # fewest 16 GiB shards
  shardload plan model.gguf --max-shard-size 4GiB --boundary layer -o plan.json
  shardload plan model.gguf --shards 4 --json | jq '.shards[].bytes'
  shardload plan llama-3-70b.gguf --stages 3 -o stages.json     # one stage per machine, for python -m shardload.ray
  shardload plan llama-3-70b.gguf --stages 3 --stage-memory 20GiB,20GiB,8GiB

A split set is read whole from its first file (name-00001-of-0000N.gguf).")]
    Plan(PlanArgs),
    /// Build the shard memories, run the guest over them, and verify every tensor it reads.
    #[command(after_help = "Examples:
  shardload run                                          # the default model, fewest 16 GiB shards
  shardload run models/gemma-3-270m-q4_k_m.gguf --shards 4
  shardload run model.gguf --plan plan.json --load copy  # the copy baseline
  shardload run llama-70b.gguf --shards 4 --sample 2 --instances 4 --json

Verification: for each tensor, the guest computes XXH64 (seed 0) of its bytes in place, read
through the routing table from its shard memory; the host computes it from the file. Exit 1
if any differ. `xxh64` in --json is what `xxhsum -H1` prints for the tensor's bytes.")]
    Run(RunArgs),
    /// Write the guest module for N shard memories (for inspection or other runtimes).
    #[command(
        after_help = "Example:\n  shardload guest --shards 4 -o guest.wasm\n\nThe ABI is documented in guest/README.md."
    )]
    Guest(GuestArgs),
    /// Measure time to ready (mmap vs copy), read throughput and a decode step's matvecs (guest vs native), in one run.
    #[command(after_help = "Examples:
  shardload bench                                        # the default model
  shardload bench models/*.gguf --shards 4 --synthetic-blocks 4
  shardload bench --dot plain                            # matvec without relaxed SIMD

Ratios compare against baselines measured in the same run: copied memories for time to ready,
the same algorithm run natively over the same bytes for read throughput and matvec. The decode
step multiplies every 2-D weight by a vector, split by rows over 1 and 2 threads (one guest
instance each), in GB/s of weight bytes. Page cache warm, best of 3 after a warm-up.")]
    Bench(BenchArgs),
    /// Write a synthetic Llama-3-70B Q4_K_M (exact tensor inventory; sparse or random data).
    #[command(after_help = "Examples:
  shardload synth -o /tmp/llama-3-70b.gguf                 # 42.5 GB sparse file, no disk used
  shardload run /tmp/llama-3-70b.gguf --shards 4 --sample 2
  shardload synth -o /tmp/l4.gguf --blocks 4 --random     # 3.6 GB of real bytes, for benchmarks")]
    Synth(SynthArgs),
    /// Print a text's token ids and pieces, exactly as llama.cpp's llama-tokenize gives them.
    #[command(after_help = "Examples:
  shardload tokenize 'Hello world'                        # the default model
  shardload tokenize models/gemma-3-270m-q4_k_m.gguf '<start_of_turn>user\nHi<end_of_turn>'
  shardload tokenize -f prompt.txt --json | jq '.ids | length'
  shardload tokenize models/gemma-3-270m-q4_k_m.gguf '<bos>' --no-special --no-bos

BOS (and EOS) come first (last) when the model adds them (add_bos_token), as llama-tokenize.
Control tokens written in the text (<|im_start|>, <start_of_turn>) become their ids unless
--no-special. Any bytes are accepted (--file); see the README's Tokenizers section for invalid UTF-8.")]
    Tokenize(tokenize_cmd::TokenizeArgs),
    /// Generate text from a prompt: the whole transformer runs in the guest over the mapped shards.
    #[command(after_help = "Examples:
  shardload generate -p \"The capital of France is\" -n 32 --temp 0      # greedy, the default model
  shardload generate models/SmolLM2-135M-Instruct.Q4_1.gguf -f prompt.txt --shards 3
  shardload generate llama-3-70b.gguf --prompt-tokens 128000,791,6864 -n 1 --ctx 512
  shardload generate -p \"<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\" --json

Text streams to stdout as it is made; prompt and generation speed, time to first token, time to
ready and memory go to stderr. Sampling defaults are llama.cpp's (--temp 0.8 --top-k 40 --top-p
0.95 --min-p 0.05); --temp 0 is greedy. An architecture the runtime does not know is refused by
name, with the list of those it knows.")]
    Generate(generate_cmd::GenerateArgs),
    /// Chat with a model: its own chat template, the KV cache kept across turns, replies streamed.
    #[command(after_help = "Examples:
  shardload chat                                             # the default model (SmolLM2)
  shardload chat --system \"You are a terse assistant.\" --temp 0
  printf 'Hi!\\nWhat is 2+2?\\n' | shardload chat --temp 0 -n 64   # two turns from a pipe
  shardload chat model.gguf --chat-template template.jinja --ctx 8192

One user turn per line of stdin (a `> ` prompt on stderr when stdin is a terminal); each reply
streams to stdout and ends with a newline. Each turn renders the whole conversation with the
model's tokenizer.chat_template (Jinja, via minijinja) and evaluates only the tokens past the
prefix already in the KV cache. End of input exits; Ctrl-C stops a reply, and at the prompt exits.
A conversation that outgrows --ctx ends with a message. A GGUF without a chat template gets its
architecture's own where the runtime has one; otherwise give --chat-template.")]
    Chat(chat_cmd::ChatArgs),
    /// Serve the browser chat: the model in memory64 memories in a tab, the guest on web workers.
    #[command(after_help = "Examples:
  shardload web                                          # the default model, http://127.0.0.1:8080/
  shardload web models/gemma-3-270m-q4_k_m.gguf --shards 4 --port 0   # any free port
  shardload web big.gguf --plan plan.json --ctx 8192
  shardload web --export site/ --model-url https://example.org/m.gguf  # a static bundle

Serves, from one cross-origin isolated origin: the page (web/), the plan, the guest generated
for it (its shard memories imported shared, so every web worker reads one copy), the same
forward-pass program wasmtime runs, the tokenizer and chat template resolved from the GGUF, the
host's XXH64 of every tensor, and the model files with HTTP Range requests. The tab copies each
shard into its own memory64 memory (browsers cannot map files; a reload copies from the
browser's Origin Private File System instead of the network), starts one web worker per thread,
and chats with the model's own template; replies stream with tok/s, time to first token and the
context used. Verification and a decode-step sweep are in a panel.

For scripts: ?run=1 loads at once; &prompt=TEXT (or &tokens=IDS) &n=N &temp= &seed= generates
as `shardload generate` does; &messages=JSON renders a chat; &verify=1 verifies; &workers=T;
&cache=0. The JSON report is written into #report. Needs memory64, multi-memory, SIMD and
cross-origin isolation (Chrome or Edge 133+, Firefox 134+).")]
    Web(WebArgs),
    /// Serve the model over HTTP: OpenAI's API and llama-server's, several conversations batched together.
    #[command(after_help = "Examples:
  shardload serve                                            # the default model, http://127.0.0.1:8080/v1
  shardload serve models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --parallel 8 --ctx 8192
  shardload serve --port 0 --api-key secret                  # any free port (printed); keyed
  curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}], \"temperature\": 0}'

Routes: GET /health (503 until the model is loaded), /v1/models; POST /v1/chat/completions and
/v1/completions (\"stream\": true for Server-Sent Events), /tokenize, /detokenize, /apply-template.
Each slot is a sequence with its own KV cache of --ctx tokens; every step puts the next token of
every running completion and a chunk of any prompt being read through one batch of the guest, so
the weights are read once per step for all. A request whose prompt extends a slot's cached tokens
(the next turn of a chat) evaluates only the new part. Greedy (temperature 0) and seeded requests
give the same tokens alone or beside others. Errors are OpenAI's {\"error\": {message, type, code}}.")]
    Serve(serve_cmd::ServeArgs),
}

/// How to split a model: shared by every command that plans.
#[derive(Args)]
struct SplitArgs {
    /// Exactly N shards, contiguous in storage order, with the smallest possible largest shard.
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// No shard memory larger than SIZE (16GiB, 512MiB, 1.5GB...). Without --shards: the fewest shards that fit.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size, default_value = "16GiB")]
    max_shard_size: u64,
    /// Where shard cuts may fall: between any tensors, or only between transformer blocks (blk.N).
    #[arg(long, value_enum, default_value_t = BoundaryArg::Tensor)]
    boundary: BoundaryArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum BoundaryArg {
    /// Between any two tensors.
    Tensor,
    /// Only between transformer blocks, so no block straddles two memories.
    Layer,
}

impl SplitArgs {
    fn options(&self) -> PlanOptions {
        PlanOptions {
            shards: self.shards,
            max_shard_size: self.max_shard_size,
            boundary: match self.boundary {
                BoundaryArg::Tensor => Boundary::Tensor,
                BoundaryArg::Layer => Boundary::Layer,
            },
        }
    }
}

#[derive(Args)]
struct PlanArgs {
    /// The GGUF model (for a split set, its first file). Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[command(flatten)]
    split: SplitArgs,
    /// Print the plan as JSON (the plan file format) instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the plan file here (for `shardload run --plan`, or with --stages the
    /// stage plan for `python -m shardload.ray --plan`).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Cut the model by layers into N pipeline stages, one per machine, each
    /// planned into its own shards of only the tensors its layers read (the
    /// shard options apply within each stage). Layers are balanced so the
    /// largest stage is as small as can be.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    stages: Option<usize>,
    /// With --stages: each machine's free memory, in stage order
    /// (20GiB,20GiB,12GiB). Layers are then balanced so the fullest machine
    /// is as empty as can be, and a stage that cannot fit is refused.
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',', value_parser = units::parse_size, requires = "stages")]
    stage_memory: Vec<u64>,
}

/// Sampling options shared by `generate` and `chat`; the defaults are llama.cpp's.
#[derive(Args)]
struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Sample among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Sample among the most likely tokens reaching probability P (1: all).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Random seed: the same seed and input give the same text.
    #[arg(long, default_value_t = 0xC0FFEE)]
    seed: u64,
}

impl SamplingArgs {
    fn config(&self) -> shardload_runtime::SamplerConfig {
        shardload_runtime::SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        }
    }
}

/// How `run`, `generate` and `chat` build the weight store: a plan (or
/// planning options) and a load mode.
#[derive(Args)]
struct StoreArgs {
    #[command(flatten)]
    plan: PlanSource,
    /// How shard memories get their bytes: mapped from the file (zero copy) or copied into host memories.
    #[arg(long, value_enum, default_value_t = LoadArg::Mmap)]
    load: LoadArg,
    /// Compile the guest anew instead of loading it from the cache of compiled guests
    /// ($SHARDLOAD_CACHE_DIR, else $XDG_CACHE_HOME/shardload, else ~/.cache/shardload).
    #[arg(long)]
    no_cache: bool,
}

/// Where a command's plan comes from: a plan file, or planning now.
#[derive(Args)]
struct PlanSource {
    /// Use this plan file (from `shardload plan -o`) instead of planning; refused if made from another model.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["shards", "max_shard_size", "boundary"])]
    plan: Option<PathBuf>,
    #[command(flatten)]
    split: SplitArgs,
}

impl PlanSource {
    /// The plan file's plan (checked against the model), or a new one.
    fn plan(&self, model: &shardload_store::OpenModel) -> anyhow::Result<shard_planner::Plan> {
        match &self.plan {
            Some(path) => model.load_plan(path),
            None => model.plan(&self.split.options()),
        }
    }
}

impl StoreArgs {
    fn plan(&self, model: &shardload_store::OpenModel) -> anyhow::Result<shard_planner::Plan> {
        self.plan.plan(model)
    }

    fn mode(&self) -> shardload_store::LoadMode {
        match self.load {
            LoadArg::Mmap => shardload_store::LoadMode::Mmap,
            LoadArg::Copy => shardload_store::LoadMode::Copy,
        }
    }

    fn build(
        &self,
        model: &shardload_store::OpenModel,
    ) -> anyhow::Result<shardload_store::WeightStore> {
        shardload_store::WeightStore::with_options(
            self.plan(model)?,
            self.mode(),
            None,
            &self.cache(),
        )
    }

    fn cache(&self) -> shardload_store::GuestCache {
        if self.no_cache {
            shardload_store::GuestCache::Off
        } else {
            shardload_store::GuestCache::default()
        }
    }
}

/// A session's size and threads, shared by `generate` and `chat`.
#[derive(Args)]
struct SessionArgs {
    /// Context size in tokens (everything evaluated must fit); sizes the KV cache.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Threads: one guest instance each, sharing activations; matmul rows and attention heads are split among them.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, usize::from))]
    threads: usize,
}

#[derive(Args)]
struct RunArgs {
    /// The GGUF model (for a split set, its first file). Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Run K guest instances (separate stores, each with its own shard memories) over the same model.
    #[arg(long, value_name = "K", default_value_t = 1)]
    instances: usize,
    /// Verify only N tensors per shard (the first, the last, evenly spaced between) instead of all.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    sample: Option<usize>,
    /// After verifying, run one decode step's matvec sweep (every 2-D weight times a fixed vector)
    /// and report its GB/s (and, with --json, output rows): what the browser page runs, to compare.
    #[arg(long)]
    sweep: bool,
    /// The output rows of each swept weight to report, as FIRST:END (end exclusive, clamped).
    #[arg(long, value_name = "FIRST:END", default_value = "0:4", value_parser = units::parse_row_range, requires = "sweep")]
    sweep_rows: std::ops::Range<u64>,
    /// Print a machine-readable report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WebArgs {
    /// The GGUF model (for a split set, its first file). Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[command(flatten)]
    plan: PlanSource,
    /// The port to listen on (0: any free port, printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The address to listen on. The default is this machine only: anyone who can reach it can read the model.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Context size of the page's conversation, in tokens; sizes the tab's KV cache.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Write the page, guest, plan, program and tokenizer into DIR for a static server
    /// (which must send COOP and COEP headers and answer Range requests), instead of serving.
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// With --export: where the page fetches each model file (repeat for a split set, in order).
    /// Default: the file's name, so the model sits beside the page.
    #[arg(long, value_name = "URL", requires = "export")]
    model_url: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LoadArg {
    /// Map each shard's file extents private, copy-on-write: ready in milliseconds, pages shared.
    Mmap,
    /// Copy the bytes into ordinary memories in parallel: the baseline.
    Copy,
}

#[derive(Args)]
struct GuestArgs {
    /// How many shard memories the guest imports.
    #[arg(long, value_name = "N")]
    shards: u32,
    /// Where to write the module.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// matvec's integer dot product: relaxed SIMD (faster, where the engine has it; wasmtime does)
    /// or plain SIMD128 only, for engines without relaxed SIMD. Both give the same numbers.
    #[arg(long, value_enum, default_value_t = DotArg::Relaxed)]
    dot: DotArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum DotArg {
    /// `i32x4.relaxed_dot_i8x16_i7x16_add_s` where quants fit in 7 bits.
    Relaxed,
    /// `i32x4.dot_i16x8_s` over sign-extended halves.
    Plain,
}

impl From<DotArg> for shardload_guest::DotProduct {
    fn from(dot: DotArg) -> Self {
        match dot {
            DotArg::Relaxed => shardload_guest::DotProduct::Relaxed,
            DotArg::Plain => shardload_guest::DotProduct::Plain,
        }
    }
}

impl std::fmt::Display for DotArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DotArg::Relaxed => "relaxed SIMD",
            DotArg::Plain => "plain SIMD128",
        })
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Models to measure. Default: the model scripts/fetch-models fetches.
    #[arg(value_name = "MODEL.gguf", default_value = DEFAULT_MODEL)]
    models: Vec<PathBuf>,
    /// Shards to plan each model into.
    #[arg(long, value_name = "N", default_value_t = 4)]
    shards: u32,
    /// Also write and measure a random-data model of the first K Llama-3-70B blocks (4 blocks: 3.6 GB) in a temp dir.
    #[arg(long, value_name = "K", default_value_t = 0)]
    synthetic_blocks: u64,
    /// Measure the forward pass instead: prompt processing (512 tokens) and generation (128 tokens)
    /// tok/s, next to llama.cpp's llama-bench on the same model and thread counts, in one run.
    #[arg(long)]
    generate: bool,
    /// Thread counts for --generate.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "1,2"
    )]
    threads: Vec<usize>,
    /// llama.cpp's llama-bench for --generate. Default: the one scripts/build-llama-cpp builds, if present.
    #[arg(long, value_name = "PATH")]
    llama_bench: Option<PathBuf>,
    /// The guest's matvec dot product. Default: relaxed SIMD where wasmtime compiles it, else plain.
    #[arg(long, value_enum, value_name = "DOT")]
    dot: Option<DotArg>,
    /// Print machine-readable results.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SynthArgs {
    /// Where to write the model.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Transformer blocks to include (80 is the whole model).
    #[arg(long, value_name = "K", default_value_t = 80)]
    blocks: u64,
    /// Fill tensors with random weights (random quants, small finite scales, unit norms) instead of a hole: costs real disk, runs the real forward pass.
    #[arg(long)]
    random: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan_cmd::run(&args),
        Command::Run(args) => run_cmd::run(&args),
        Command::Guest(args) => guest_cmd::run(&args),
        Command::Bench(args) => bench_cmd::run(&args),
        Command::Synth(args) => synth_cmd::run(&args),
        Command::Tokenize(args) => tokenize_cmd::run(&args),
        Command::Generate(args) => generate_cmd::run(&args),
        Command::Chat(args) => chat_cmd::run(&args),
        Command::Web(args) => web_cmd::run(&args),
        Command::Serve(args) => serve_cmd::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("shardload: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns a missing default model into the instruction that fixes it.
/// `http://HOST:PORT` of a bound address (IPv6 in brackets), as the servers print it.
fn http_url(addr: std::net::SocketAddr) -> String {
    match addr.ip() {
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}", addr.port()),
        std::net::IpAddr::V4(ip) => format!("http://{ip}:{}", addr.port()),
    }
}

fn check_model_exists(model: &std::path::Path) -> anyhow::Result<()> {
    if model.exists() {
        return Ok(());
    }
    if model == std::path::Path::new(DEFAULT_MODEL) {
        anyhow::bail!(
            "the default model {DEFAULT_MODEL} is missing: run scripts/fetch-models (or name a model)"
        );
    }
    anyhow::bail!("{}: no such file", model.display())
}
