//! Shared by the end-to-end tests and benches: where the real models are, and
//! the independent references (gguf-py, python-xxhash) through `scripts/gguf_ref.py`.
//!
//! Missing models or references fail loudly with the command that fixes it:
//! a test that silently skips proves nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// SmolLM2-135M-Instruct, Q4_1: the default model (llama architecture).
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Gemma 3 270M, Q4_K_M: a second architecture and mix of quant types.
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: a real 1.5B model (qwen2 architecture,
/// Q, K and V biases, NEOX RoPE, its own output matrix).
pub const QWEN: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of a real model fetched by `scripts/fetch-models`.
pub fn model(name: &str) -> PathBuf {
    let path = root().join("models").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models",
        path.display()
    );
    path
}

/// The path of a vocabulary-only GGUF fetched by `scripts/fetch-vocabs`.
pub fn vocabulary(name: &str) -> PathBuf {
    let path = root().join("models/vocab").join(format!("{name}.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-vocabs",
        path.display()
    );
    path
}

/// Runs `scripts/gguf_ref.py` and parses its JSON answer.
pub fn gguf_ref(args: &[&str]) -> Value {
    let script = root().join("scripts/gguf_ref.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "gguf_ref.py {args:?} failed (pip install -r scripts/requirements.txt?): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("gguf_ref.py prints JSON")
}

/// A tensor as gguf-py's reader sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct ReferenceTensor {
    /// Tensor name.
    pub name: String,
    /// ggml type, gguf-py spelling.
    pub ty: String,
    /// Dims, ne0 first.
    pub dims: Vec<u64>,
    /// Data bytes.
    pub bytes: u64,
    /// Absolute file offset of the data.
    pub data_offset: u64,
}

/// gguf-py's tensor table of a GGUF file.
pub fn reference_tensors(path: &Path) -> Vec<ReferenceTensor> {
    let table = gguf_ref(&["tensors", path.to_str().expect("utf-8 path")]);
    table
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| ReferenceTensor {
            name: t["name"].as_str().unwrap().to_string(),
            ty: t["type"].as_str().unwrap().to_string(),
            dims: t["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect(),
            bytes: t["bytes"].as_u64().unwrap(),
            data_offset: t["data_offset"].as_u64().unwrap(),
        })
        .collect()
}

/// Writes a llama.cpp-style split set of `source` into `dir` with gguf-py,
/// `tensors_per_file` tensors per file; returns the files in order.
pub fn make_split(source: &Path, dir: &Path, tensors_per_file: usize) -> Vec<PathBuf> {
    let out = dir.join("split.gguf");
    let files = gguf_ref(&[
        "split",
        source.to_str().expect("utf-8 path"),
        out.to_str().expect("utf-8 path"),
        &tensors_per_file.to_string(),
    ]);
    files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .collect()
}

/// XXH64 (seed 0) of every tensor's bytes, by python-xxhash over gguf-py's view.
pub fn reference_xxh64(path: &Path) -> std::collections::HashMap<String, String> {
    let hashes = gguf_ref(&["xxh64", path.to_str().expect("utf-8 path")]);
    hashes
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// The vector every matvec test and the decode-step bench multiply by:
/// values in [-1, 1), deterministic, not smooth.
pub fn test_vector(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// gguf-py's f64 references for one row of `y = W x` (`gguf_ref.py matvec`).
#[derive(Clone, Copy, Debug)]
pub struct MatvecReference {
    /// Σ w·x over gguf-py's dequantized weights.
    pub dot: f64,
    /// Σ |w·x|: bounds the rounding of a float dot.
    pub magnitude: f64,
    /// Σ w·x̃, x̃ being gguf-py's Q8_0 round trip of x.
    pub dot_q8: f64,
    /// Σ (|s| + |m|)·|x̃|, w = s + m split into scaled quant and block min.
    pub magnitude_q8: f64,
    /// Σ |w|·0.5625·d: what quantizing x to Q8_0 may add.
    pub quantization_bound: f64,
}

/// gguf-py's references for rows `NAME:ROW` of tensors in `path`, times `x`.
pub fn matvec_references(
    path: &Path,
    x: &[f32],
    rows: &[String],
) -> std::collections::HashMap<String, MatvecReference> {
    let hex: String = x
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut args = vec!["matvec", path.to_str().expect("utf-8 path"), &hex];
    args.extend(rows.iter().map(String::as_str));
    let answer = gguf_ref(&args);
    let number = |row: &Value, key: &str| row[key].as_f64().expect("a number");
    rows.iter()
        .map(|spec| {
            let row = &answer[spec.as_str()];
            let reference = MatvecReference {
                dot: number(row, "dot"),
                magnitude: number(row, "magnitude"),
                dot_q8: number(row, "dot_q8"),
                magnitude_q8: number(row, "magnitude_q8"),
                quantization_bound: number(row, "quantization_bound"),
            };
            (spec.clone(), reference)
        })
        .collect()
}

/// Checks one element of a matvec of a `ty` row of `n` elements against
/// gguf-py, with the bounds `shardload_quant::matvec` states: float types
/// within `n·2⁻²⁴·Σ|w·x|` of Σ w·x; quantized types within
/// `(2G + 8)·2⁻²⁴·Σ(|s| + |m|)·|x̃|` of Σ w·x̃ (G groups of 32; the 8 covers
/// gguf-py's own rounding of w), and within that plus the quantization
/// bound of Σ w·x.
pub fn check_matvec(ty: &str, n: usize, got: f32, r: &MatvecReference) -> Result<(), String> {
    let got = f64::from(got);
    let unit = 2f64.powi(-24);
    if shardload_gguf::GgmlType::from_name(ty).is_some_and(|t| t.is_float()) {
        let bound = n as f64 * unit * r.magnitude;
        if (got - r.dot).abs() > bound {
            return Err(format!("{got} vs {} (bound {bound})", r.dot));
        }
        return Ok(());
    }
    let rounding = (2.0 * (n / 32) as f64 + 8.0) * unit * r.magnitude_q8;
    if (got - r.dot_q8).abs() > rounding {
        return Err(format!(
            "{got} vs {} with x quantized (bound {rounding})",
            r.dot_q8
        ));
    }
    let bound = rounding + r.quantization_bound;
    if (got - r.dot).abs() > bound {
        return Err(format!("{got} vs exact {} (bound {bound})", r.dot));
    }
    Ok(())
}
