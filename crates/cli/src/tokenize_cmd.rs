//! `shardload tokenize`: a model's token ids and pieces for a text, as
//! `llama-tokenize` gives them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use shardload_gguf::GgufFile;
use shardload_tokenizer::Tokenizer;

use crate::{DEFAULT_MODEL, check_model_exists};

/// What to tokenize, with which model, and how.
#[derive(Args)]
pub struct TokenizeArgs {
    /// The GGUF model, then the text; with one argument it is the text and the
    /// model is the default one (the model scripts/fetch-models fetches).
    #[arg(value_name = "[MODEL.gguf] TEXT", num_args = 0..=2)]
    args: Vec<std::ffi::OsString>,
    /// Tokenize this file's bytes instead of TEXT.
    #[arg(short, long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print {"ids": [...], "pieces": [...]} instead of a table.
    #[arg(long)]
    json: bool,
    /// Do not add BOS/EOS even where the model adds them.
    #[arg(long)]
    no_bos: bool,
    /// Tokenize control tokens written in the text (<|im_start|>, <bos>) as plain text.
    #[arg(long)]
    no_special: bool,
}

pub fn run(args: &TokenizeArgs) -> Result<ExitCode> {
    let (model, text): (PathBuf, Vec<u8>) = match (&args.file, args.args.as_slice()) {
        (Some(file), [model]) => (model.into(), read(file)?),
        (Some(file), []) => (DEFAULT_MODEL.into(), read(file)?),
        (None, [model, text]) => (model.into(), bytes(text)),
        (None, [text]) => (DEFAULT_MODEL.into(), bytes(text)),
        (Some(_), _) => bail!("give TEXT or --file, not both"),
        (None, _) => bail!("nothing to tokenize: give TEXT or --file FILE"),
    };
    check_model_exists(&model)?;
    let file = GgufFile::open(&model)?;
    let tokenizer = Tokenizer::from_gguf(&file)
        .with_context(|| format!("{}: cannot build the tokenizer", model.display()))?;
    let ids = tokenizer.encode(&text, !args.no_bos, !args.no_special);
    let pieces = ids
        .iter()
        .map(|&id| tokenizer.piece(id))
        .collect::<Result<Vec<_>, _>>()?;

    let mut out = std::io::stdout().lock();
    if args.json {
        let pieces: Vec<String> = pieces
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let json = serde_json::json!({ "ids": ids, "pieces": pieces });
        writeln!(out, "{json}")?;
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            writeln!(out, "{id:>7}  {}", shown(piece))?;
        }
        writeln!(
            out,
            "{} tokens, {} bytes ({})",
            ids.len(),
            text.len(),
            model.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn bytes(text: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    text.as_bytes().to_vec()
}

/// A piece quoted for a table: whitespace and control characters escaped, bytes
/// that are not whole UTF-8 characters as \xNN.
fn shown(piece: &[u8]) -> String {
    let mut s = String::from("'");
    for chunk in piece.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                '\'' => s.push_str("\\'"),
                '\\' => s.push_str("\\\\"),
                c if c.is_control() => s.push_str(&c.escape_unicode().to_string()),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('\'');
    s
}
