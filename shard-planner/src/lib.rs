//! Splits a model's tensors across wasm memory shards, and routes logical
//! tensor-data offsets to (memory index, offset) pairs.
//!
//! Pure: a [`ModelLayout`] (the tensor table) goes in, a [`Plan`] comes out,
//! and nothing here reads a file. The plan is the optimal linear partition of
//! the tensors in storage order: exactly N shards with the smallest possible
//! largest shard, or the fewest shards under a size cap.

mod layout;
mod plan;
mod route;
mod stages;

use serde::{Deserialize, Serialize};

pub use layout::{ModelFile, ModelLayout, TensorSpan};
pub use plan::{
    Extent, HOST_PAGE, ModelIdentity, PLAN_FORMAT, PlacedTensor, Plan, SKIPPED_GAP, Shard,
    WASM_PAGE,
};
pub use route::{Route, Router};
pub use stages::{LayerWeights, STAGES_FORMAT, Stage, StagePlan, balance_layers};

/// The memory64 size browsers allow today (16 GiB): the default shard cap.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 16 << 30;

/// Where shard boundaries may fall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Boundary {
    /// Between any two tensors.
    #[default]
    Tensor,
    /// Only between transformer blocks (`blk.N.`), so no block straddles two memories.
    Layer,
}

impl std::fmt::Display for Boundary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Boundary::Tensor => "tensor",
            Boundary::Layer => "layer",
        })
    }
}

/// A byte count as errors print it: exact, and in MiB for people.
struct Size(u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes ({:.1} MiB)",
            self.0,
            self.0 as f64 / f64::from(1 << 20)
        )
    }
}

/// What the user asked of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Exactly this many shards; `None` for the fewest that fit under the cap.
    pub shards: Option<u32>,
    /// No shard memory may be larger than this many bytes.
    pub max_shard_size: u64,
    /// Where cuts may fall.
    pub boundary: Boundary,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            shards: None,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            boundary: Boundary::Tensor,
        }
    }
}

/// Why a plan could not be made or used. Messages say what to change.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// One tensor (or block) is larger than any shard may be.
    #[error("{what} needs a memory of {}, over --max-shard-size {}: raise it", Size(*.bytes), Size(*.cap))]
    UnitTooLarge {
        /// The tensor or block range.
        what: String,
        /// The memory it alone needs.
        bytes: u64,
        /// The cap.
        cap: u64,
    },
    /// N shards cannot hold the model under the cap.
    #[error(
        "{shards} shards cannot hold the model under --max-shard-size {}: the best {shards}-shard plan needs {} for its largest shard; ask for more shards or raise the cap", Size(*.cap), Size(*.needed)
    )]
    ShardsDoNotFit {
        /// Shards asked for.
        shards: usize,
        /// Largest shard of the best plan.
        needed: u64,
        /// The cap.
        cap: u64,
    },
    /// More shards than places to cut.
    #[error(
        "cannot make {shards} shards: the model has only {units} pieces that --boundary {boundary} may not split"
    )]
    TooManyShards {
        /// Shards asked for.
        shards: usize,
        /// Indivisible pieces.
        units: usize,
        /// The boundary rule.
        boundary: Boundary,
    },
    /// The tensor table is empty: there is nothing to put in a shard.
    #[error("the model has no tensors: there is nothing to shard")]
    NoTensors,
    /// `--shards 0`.
    #[error("--shards must be at least 1")]
    ZeroShards,
    /// The model's alignment is unusable.
    #[error("general.alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// The tensor table is inconsistent.
    #[error("tensor {0} {1}")]
    BadTensor(String, &'static str),
    /// Sizes overflow 64 bits.
    #[error("the model's sizes overflow 64-bit arithmetic")]
    TooLarge,
    /// The plan file is not a readable plan.
    #[error("not a {PLAN_FORMAT} plan: {0}")]
    BadPlan(String),
    /// `--stages 0`.
    #[error("--stages must be at least 1")]
    ZeroStages,
    /// More stages than layers.
    #[error("cannot make {stages} stages: the model has only {layers} layers")]
    TooManyStages {
        /// Stages asked for.
        stages: usize,
        /// The model's transformer blocks.
        layers: usize,
    },
    /// The best cut still overfills a machine.
    #[error(
        "stage {stage} (layers {}..{}) needs {} but its machine has {} free: give it more memory or use more stages", .layers.start, .layers.end, Size(*.needs), Size(*.free)
    )]
    StageDoesNotFit {
        /// The stage, 0-based.
        stage: usize,
        /// Its layers in the best cut.
        layers: std::ops::Range<usize>,
        /// The bytes it holds.
        needs: u64,
        /// Its machine's free memory.
        free: u64,
    },
    /// The stage plan file is not a readable stage plan.
    #[error("not a {STAGES_FORMAT} stage plan: {0}")]
    BadStages(String),
    /// The plan was made from other files.
    #[error("the plan does not match the model: {0}; make a new plan with `shardload plan`")]
    WrongModel(String),
}

impl Plan {
    /// Reads a plan file, checking that it is self-consistent: every tensor
    /// in exactly one shard and inside one of its extents, every extent inside
    /// its memory and file. (Whether it fits the model is [`Plan::check_model`].)
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let plan: Plan =
            serde_json::from_str(text).map_err(|e| PlanError::BadPlan(e.to_string()))?;
        if plan.format != PLAN_FORMAT {
            return Err(PlanError::BadPlan(format!("format is {:?}", plan.format)));
        }
        plan.validate().map_err(PlanError::BadPlan)?;
        Ok(plan)
    }

    /// The plan file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes")
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut owner = vec![None; self.tensors.len()];
        for (index, shard) in self.shards.iter().enumerate() {
            let at = format!("shards[{index}]");
            if shard.index as usize != index {
                return Err(format!("{at}.index is {}", shard.index));
            }
            if shard.pages.checked_mul(WASM_PAGE) != Some(shard.bytes) {
                return Err(format!("{at}.bytes is not pages * 64 KiB"));
            }
            let mut memory_end = 0;
            for extent in &shard.extents {
                let file = self
                    .model
                    .files
                    .get(extent.file)
                    .ok_or(format!("{at} names a missing file"))?;
                let file_end = extent.file_offset.checked_add(extent.bytes);
                let end = extent.memory_offset.checked_add(extent.bytes);
                if !extent.file_offset.is_multiple_of(HOST_PAGE)
                    || !extent.memory_offset.is_multiple_of(HOST_PAGE)
                    || extent.memory_offset < memory_end
                    || file_end.is_none_or(|e| e > file.size)
                    || end.is_none_or(|e| e > shard.bytes)
                {
                    return Err(format!(
                        "{at} has an extent outside its memory or file, or unaligned"
                    ));
                }
                memory_end = end.unwrap_or_default();
            }
            for &t in &shard.tensors {
                let tensor = self
                    .tensors
                    .get(t)
                    .ok_or(format!("{at} names a missing tensor"))?;
                if owner[t].replace(index).is_some() || tensor.shard as usize != index {
                    return Err(format!(
                        "tensor {} is not in exactly one shard",
                        tensor.span.name
                    ));
                }
                let inside = shard.extents.iter().any(|e| {
                    let t = &tensor.span;
                    e.file == t.file
                        && t.file_offset >= e.file_offset
                        && t.file_offset
                            .checked_add(t.bytes)
                            .is_some_and(|end| end <= e.file_offset + e.bytes)
                        && tensor.offset == e.memory_offset + (t.file_offset - e.file_offset)
                });
                if !inside {
                    return Err(format!(
                        "tensor {} is not where its shard's extents put it",
                        tensor.span.name
                    ));
                }
            }
        }
        match owner.iter().position(Option::is_none) {
            Some(t) => Err(format!(
                "tensor {} is in no shard",
                self.tensors[t].span.name
            )),
            None => Ok(()),
        }
    }
}
