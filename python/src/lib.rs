//! Python bindings: what a host written in Python needs to run a model, or a
//! range of its layers, through the same guest as every other host. Python
//! opens and plans models, tokenizes, feeds batches and samples; the guest
//! does the math. Pipeline stages on Ray (`shardload.ray`) are built on this.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use shard_planner::{Boundary, PlanOptions, StagePlan};
use shardload_runtime::{
    ChatTemplate, Hyperparameters, Message, Sampler as RuntimeSampler, SamplerConfig, SequenceId,
    Session, SessionOptions, StageOutput,
};
use shardload_store::{GuestCache, LoadMode, OpenModel, WeightStore};

create_exception!(
    shardload,
    Error,
    PyException,
    "Anything shardload refuses or fails at; the message says what and where."
);
create_exception!(
    shardload,
    ModelError,
    Error,
    "A model file that cannot be read or run (it names the file, field and byte offset)."
);
create_exception!(
    shardload,
    PlanError,
    Error,
    "A plan or stage plan that cannot be made, or was made from other files."
);

/// An error as Python sees it: the Rust message with its causes, raised as
/// the exception its first typed cause maps to.
fn to_py(error: anyhow::Error) -> PyErr {
    let message = format!("{error:#}");
    for cause in error.chain() {
        if cause.is::<shardload_gguf::Error>() || cause.is::<shardload_tokenizer::Error>() {
            return ModelError::new_err(message);
        }
        if cause.is::<shard_planner::PlanError>() {
            return PlanError::new_err(message);
        }
    }
    Error::new_err(message)
}

fn value_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// f32 values from little-endian bytes (what `Stage.run` returns and takes).
fn f32s(bytes: &[u8], what: &str) -> PyResult<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(value_error(format!(
            "{what} is {} bytes, not whole f32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A GGUF model, opened and validated (every header field and tensor
/// checked) but not mapped: stages map their part of it.
#[pyclass(frozen, module = "shardload")]
struct Model {
    model: OpenModel,
    hp: Hyperparameters,
}

#[pymethods]
impl Model {
    /// Opens `path` (for a split set, its first file).
    #[new]
    fn new(path: PathBuf) -> PyResult<Model> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "{}: no such model file",
                path.display()
            )));
        }
        let model = OpenModel::open(&path).map_err(to_py)?;
        let hp = Hyperparameters::read(model.gguf.metadata()).map_err(to_py)?;
        Ok(Model { model, hp })
    }

    /// The model's first file, as it was named.
    #[getter]
    fn path(&self) -> String {
        self.model.name()
    }

    /// The shape every host needs: architecture, layers, embd (the residual
    /// width a stage hands on), ffn, heads, kv_heads, head_dim, vocab.
    #[getter]
    fn hyperparameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let hp = &self.hp;
        let d = PyDict::new(py);
        d.set_item("architecture", &hp.architecture)?;
        for (key, value) in [
            ("layers", hp.layers),
            ("embd", hp.embd),
            ("ffn", hp.ffn),
            ("heads", hp.heads),
            ("kv_heads", hp.kv_heads),
            ("head_dim", hp.head_dim),
            ("vocab", hp.vocab),
        ] {
            d.set_item(key, value)?;
        }
        Ok(d)
    }

    /// The model's tokenizer (from its GGUF metadata).
    fn tokenizer(&self) -> PyResult<Tokenizer> {
        let tokenizer = shardload_tokenizer::Tokenizer::from_gguf(self.model.gguf.metadata())
            .context("the model's tokenizer")
            .map_err(to_py)?;
        let template =
            ChatTemplate::from_gguf(self.model.gguf.metadata()).map_err(|e| format!("{e:#}"));
        Ok(Tokenizer {
            tokenizer,
            template,
        })
    }

    /// The shard plan of the whole model, or with `layers=(a, b)` of only
    /// the tensors those layers read, as `shardload plan --json` prints it:
    /// exactly `shards` shards, or the fewest under `max_shard_size`, cut
    /// between any tensors or (`boundary="layer"`) only between blocks.
    /// What a stage of those layers maps.
    #[pyo3(signature = (layers=None, shards=None, max_shard_size=16 << 30, boundary="tensor"))]
    fn plan(
        &self,
        layers: Option<(usize, usize)>,
        shards: Option<u32>,
        max_shard_size: u64,
        boundary: &str,
    ) -> PyResult<String> {
        let boundary = match boundary {
            "tensor" => Boundary::Tensor,
            "layer" => Boundary::Layer,
            other => {
                return Err(value_error(format!(
                    "boundary is \"tensor\" or \"layer\", not {other:?}"
                )));
            }
        };
        let options = PlanOptions {
            shards,
            max_shard_size,
            boundary,
        };
        Ok(self.shard_plan(layers, &options)?.0.to_json())
    }

    /// Plans `stages` pipeline stages (one per machine; `memory`: each
    /// machine's free bytes, to balance against) and returns the stage plan
    /// file's JSON, as `shardload plan --stages` writes it.
    #[pyo3(signature = (stages, memory=None, max_shard_size=16 << 30))]
    fn plan_stages(
        &self,
        stages: usize,
        memory: Option<Vec<u64>>,
        max_shard_size: u64,
    ) -> PyResult<String> {
        let memory: Vec<Option<u64>> = match memory {
            None => vec![None; stages],
            Some(m) if m.len() == stages => m.into_iter().map(Some).collect(),
            Some(m) => {
                return Err(value_error(format!(
                    "memory gives {} sizes for {stages} stages: give one per stage",
                    m.len()
                )));
            }
        };
        let options = PlanOptions {
            shards: None,
            max_shard_size,
            boundary: Boundary::Layer,
        };
        let plan = shardload_runtime::plan_stages(&self.model, &memory, &options).map_err(to_py)?;
        Ok(plan.to_json())
    }
}

impl Model {
    /// The plan of `layers` (all when `None`) and the layers it covers.
    fn shard_plan(
        &self,
        layers: Option<(usize, usize)>,
        options: &PlanOptions,
    ) -> PyResult<(shard_planner::Plan, Range<usize>)> {
        let total = self.hp.layers;
        match layers {
            None => Ok((self.model.plan(options).map_err(to_py)?, 0..total)),
            Some((a, b)) if a >= b || b > total => Err(value_error(format!(
                "layers ({a}, {b}) are not a range of the model's {total} layers"
            ))),
            Some((a, b)) => Ok((
                shardload_runtime::plan_stage(&self.model, a..b, options).map_err(to_py)?,
                a..b,
            )),
        }
    }
}

/// Text to token ids and back, and a conversation to its prompt tokens.
#[pyclass(frozen, module = "shardload")]
struct Tokenizer {
    tokenizer: shardload_tokenizer::Tokenizer,
    /// The chat template, or why the model has none usable.
    template: Result<ChatTemplate, String>,
}

#[pymethods]
impl Tokenizer {
    /// Token ids of `text`: with the model's BOS when `add_special`, and
    /// special tokens written in the text (`<|im_start|>`) parsed as such
    /// when `parse_special`.
    #[pyo3(signature = (text, add_special=true, parse_special=false))]
    fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.tokenizer
            .encode(text.as_bytes(), add_special, parse_special)
    }

    /// The text of token ids (invalid UTF-8, from a cut multi-byte
    /// character, becomes U+FFFD).
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        let bytes = self.tokenizer.decode(&ids).map_err(|e| to_py(e.into()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether generation ends at this token (end of sequence or of turn).
    fn is_eog(&self, id: u32) -> bool {
        self.tokenizer.is_eog(id)
    }

    /// Tokens in the vocabulary.
    #[getter]
    fn n_tokens(&self) -> u32 {
        self.tokenizer.n_tokens()
    }

    /// The prompt tokens of a conversation (a list of `{"role", "content"}`
    /// dicts) through the model's chat template, with the generation prompt:
    /// what `shardload chat` and `serve` evaluate.
    fn chat_tokens(
        &self,
        messages: Vec<std::collections::HashMap<String, String>>,
    ) -> PyResult<Vec<u32>> {
        let template = self
            .template
            .as_ref()
            .map_err(|e| Error::new_err(e.clone()))?;
        let messages = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = |name: &str| {
                    m.get(name)
                        .ok_or_else(|| value_error(format!("messages[{i}] has no {name:?}")))
                };
                Ok(Message::new(field("role")?, field("content")?))
            })
            .collect::<PyResult<Vec<_>>>()?;
        template
            .prompt_tokens(&self.tokenizer, &messages)
            .map_err(to_py)
    }
}

/// The guest over some of a model's layers: the shards of only the tensors
/// those layers read (mapped, not copied), and the KV caches of its
/// sequences. A stage from layer 0 takes token ids; any other takes the
/// residual stream of the layers before it. A stage ending at the last
/// layer gives logits; any other hands its residual stream on.
#[pyclass(frozen, module = "shardload")]
struct Stage {
    state: Mutex<StageState>,
    layers: Range<usize>,
    model_layers: usize,
    embd: usize,
    vocab: usize,
    mapped: u64,
}

struct StageState {
    session: Session,
    // The session's guests read the store's shard memories.
    _store: WeightStore,
}

#[pymethods]
impl Stage {
    /// Maps and instantiates a stage of `model`: layers `layers` (`(a, b)`,
    /// all when `None`), or stage `stage` of `stage_plan` (a stage plan's
    /// JSON, from `Model.plan_stages` or `shardload plan --stages`). `sequences` KV caches of `ctx` tokens each; `threads`
    /// guest instances split every operation.
    #[new]
    // A Python signature: its callers pass keywords, not a Rust argument list.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, layers=None, *, stage_plan=None, stage=None, ctx=4096, threads=1, sequences=1))]
    fn new(
        py: Python<'_>,
        model: &Model,
        layers: Option<(usize, usize)>,
        stage_plan: Option<String>,
        stage: Option<usize>,
        ctx: usize,
        threads: usize,
        sequences: usize,
    ) -> PyResult<Stage> {
        let total = model.hp.layers;
        let (plan, layers) = match (stage_plan, stage, layers) {
            (Some(text), Some(index), None) => {
                let stages = StagePlan::from_json(&text).map_err(|e| to_py(e.into()))?;
                let stage =
                    shardload_runtime::load_stage(&model.model, &stages, index).map_err(to_py)?;
                (stage.plan, stage.layers)
            }
            (None, None, layers) => model.shard_plan(
                layers,
                &PlanOptions {
                    boundary: Boundary::Layer,
                    ..PlanOptions::default()
                },
            )?,
            _ => {
                return Err(value_error(
                    "give layers=(a, b), or stage_plan= and stage= together, or neither".into(),
                ));
            }
        };
        let mapped = plan.shards.iter().map(|s| s.bytes).sum();
        let options = SessionOptions {
            ctx,
            threads,
            sequences,
            layers: Some(layers.clone()),
        };
        let file = model.model.gguf.metadata();
        let state = py
            .detach(|| -> anyhow::Result<StageState> {
                let store =
                    WeightStore::with_options(plan, LoadMode::Mmap, None, &GuestCache::default())?;
                let session = Session::with_options(&store, file, &options)?;
                Ok(StageState {
                    session,
                    _store: store,
                })
            })
            .map_err(to_py)?;
        Ok(Stage {
            state: Mutex::new(state),
            layers,
            model_layers: total,
            embd: model.hp.embd,
            vocab: model.hp.vocab,
            mapped,
        })
    }

    /// The layers this stage runs, `(a, b)`.
    #[getter]
    fn layers(&self) -> (usize, usize) {
        (self.layers.start, self.layers.end)
    }

    /// Whether this stage takes token ids (it starts at layer 0).
    #[getter]
    fn is_first(&self) -> bool {
        self.layers.start == 0
    }

    /// Whether this stage gives logits (it ends at the model's last layer).
    #[getter]
    fn is_last(&self) -> bool {
        self.layers.end == self.model_layers
    }

    /// Floats per token of the residual stream a stage hands on.
    #[getter]
    fn embd(&self) -> usize {
        self.embd
    }

    /// Floats per row of logits.
    #[getter]
    fn vocab(&self) -> usize {
        self.vocab
    }

    /// Bytes of shard memory this stage maps (its tensors, page-rounded).
    #[getter]
    fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// Starts a sequence in a free KV cache slot and returns its id.
    fn create_sequence(&self) -> PyResult<usize> {
        let mut state = self.lock()?;
        state
            .session
            .create_sequence()
            .map(SequenceId::slot)
            .map_err(to_py)
    }

    /// Ends a sequence; its slot goes to the next one created.
    fn free_sequence(&self, sequence: usize) -> PyResult<()> {
        let mut state = self.lock()?;
        let id = Self::sequence(&state, sequence)?;
        state.session.free_sequence(id).map_err(to_py)
    }

    /// The token ids a sequence holds.
    fn tokens(&self, sequence: usize) -> PyResult<Vec<u32>> {
        let state = self.lock()?;
        let id = Self::sequence(&state, sequence)?;
        Ok(state.session.sequence_tokens(id).map_err(to_py)?.to_vec())
    }

    /// Runs a batch of `(sequence, position, token ids)` entries through
    /// this stage's layers. A stage after the first also takes `residual`:
    /// the previous stage's output for these tokens, f32 little-endian,
    /// `embd` floats per token in batch order. Each entry's `position` is
    /// where its tokens go: a sequence holding more tokens is cut back to
    /// it first (a replay after a failure), one holding fewer is refused.
    /// Returns bytes of f32 little-endian: `embd` per token (the residual
    /// stream), or from the last stage `vocab` per entry (the logits after
    /// each entry's last token).
    #[pyo3(signature = (batch, residual=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        batch: Vec<(usize, usize, Vec<u32>)>,
        residual: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let residual = residual.map(|b| f32s(b, "the residual")).transpose()?;
        let mut state = self.lock()?;
        // Every entry is checked before any sequence is cut back: a refused
        // batch leaves every sequence as it was.
        let mut entries = Vec::with_capacity(batch.len());
        for (i, (sequence, position, _)) in batch.iter().enumerate() {
            let id = Self::sequence(&state, *sequence)?;
            let held = state.session.sequence_tokens(id).map_err(to_py)?.len();
            if *position > held {
                return Err(value_error(format!(
                    "batch[{i}]: sequence {sequence} holds {held} tokens, so its next tokens go at position {held}, not {position}"
                )));
            }
            entries.push((id, held));
        }
        for (&(id, held), (_, position, _)) in entries.iter().zip(&batch) {
            if *position < held {
                state
                    .session
                    .truncate_sequence(id, *position)
                    .map_err(to_py)?;
            }
        }
        let session = &mut state.session;
        let output = py
            .detach(|| {
                let entries: Vec<(SequenceId, &[u32])> = entries
                    .iter()
                    .zip(&batch)
                    .map(|(&(id, _), (_, _, tokens))| (id, tokens.as_slice()))
                    .collect();
                session.run(&entries, residual.as_deref())
            })
            .map_err(to_py)?;
        let values = match output {
            StageOutput::Logits(rows) => rows.concat(),
            StageOutput::Residual(stream) => stream,
        };
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in &values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(PyBytes::new(py, &bytes))
    }
}

impl Stage {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, StageState>> {
        self.state
            .lock()
            .map_err(|_| Error::new_err("an earlier call on this stage panicked"))
    }

    fn sequence(state: &StageState, sequence: usize) -> PyResult<SequenceId> {
        state
            .session
            .sequence_at(sequence)
            .map_err(|e| value_error(format!("{e:#}")))
    }
}

/// Picks tokens from logits as llama.cpp's default chain does (greedy at
/// temperature 0). Its random state can be read and given back, so a host
/// that restarts draws on as one long-lived sampler would.
#[pyclass(frozen, module = "shardload")]
struct Sampler {
    config: SamplerConfig,
    sampler: Mutex<RuntimeSampler>,
}

#[pymethods]
impl Sampler {
    /// A sampler; the defaults are llama.cpp's (`--temp 0.8 --top-k 40
    /// --top-p 0.95 --min-p 0.05`), `temperature=0` is greedy.
    #[new]
    #[pyo3(signature = (temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=0xC0FFEE, state=None))]
    fn new(
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        seed: u64,
        state: Option<u64>,
    ) -> Sampler {
        let config = SamplerConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
        };
        let sampler = match state {
            Some(state) => RuntimeSampler::resume(config, state),
            None => RuntimeSampler::new(config),
        };
        Sampler {
            config,
            sampler: Mutex::new(sampler),
        }
    }

    /// The next token from one row of logits (f32 little-endian bytes, as
    /// [`Stage::run`] gives them).
    fn sample(&self, logits: &[u8]) -> PyResult<u32> {
        let values = f32s(logits, "the logits")?;
        if values.is_empty() {
            return Err(value_error("the logits are empty".into()));
        }
        let mut sampler = self
            .sampler
            .lock()
            .map_err(|_| Error::new_err("an earlier draw panicked"))?;
        Ok(sampler.sample(&values))
    }

    /// The random state after the draws so far (give it back as `state=`).
    #[getter]
    fn state(&self) -> PyResult<u64> {
        let sampler = self
            .sampler
            .lock()
            .map_err(|_| Error::new_err("an earlier draw panicked"))?;
        Ok(sampler.state())
    }

    /// The temperature this sampler was made with.
    #[getter]
    fn temperature(&self) -> f32 {
        self.config.temperature
    }
}

/// The native half of the `shardload` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Tokenizer>()?;
    m.add_class::<Stage>()?;
    m.add_class::<Sampler>()?;
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("PlanError", py.get_type::<PlanError>())?;
    Ok(())
}
