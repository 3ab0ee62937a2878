//! Pipeline stages: a model's layers cut into contiguous ranges, one per
//! machine, so that a model larger than any one machine's memory runs with
//! each machine holding its part. Which tensors a range of layers reads is
//! the runtime's knowledge (an architecture's); here the layers' sizes go in
//! and the cut comes out, balanced by bytes, or by bytes against each
//! machine's free memory.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::{Plan, PlanError};

/// The stage plan file's format; a reader refuses other versions.
pub const STAGES_FORMAT: &str = "shardload-stages/1";

/// What each part of a model weighs, in bytes, for cutting it into stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerWeights {
    /// Each transformer block's tensors, in layer order.
    pub layers: Vec<u64>,
    /// What only the first stage holds (the token embedding).
    pub first: u64,
    /// What only the last stage holds (the output norm and head, or a tied embedding again).
    pub last: u64,
}

impl LayerWeights {
    /// The bytes a stage of layers `range` holds.
    pub fn stage_bytes(&self, range: Range<usize>) -> u64 {
        let first = if range.start == 0 { self.first } else { 0 };
        let last = if range.end == self.layers.len() {
            self.last
        } else {
            0
        };
        self.layers[range].iter().sum::<u64>() + first + last
    }
}

/// Cuts the layers into `memory.len()` contiguous, non-empty stages so that
/// the fullest machine is as empty as can be: the largest stage's bytes over
/// its machine's free memory is the smallest possible (with every memory
/// `None`, the largest stage is the smallest possible). Refused when there
/// are fewer layers than stages, or when even the best cut overfills a
/// machine whose memory is given.
pub fn balance_layers(
    weights: &LayerWeights,
    memory: &[Option<u64>],
) -> Result<Vec<Range<usize>>, PlanError> {
    let (layers, stages) = (weights.layers.len(), memory.len());
    if stages == 0 {
        return Err(PlanError::ZeroStages);
    }
    if stages > layers {
        return Err(PlanError::TooManyStages { stages, layers });
    }
    // Each stage's fill: its bytes over its memory (or just its bytes).
    let fill = |stage: usize, range: Range<usize>| {
        let bytes = weights.stage_bytes(range) as f64;
        memory[stage].map_or(bytes, |m| bytes / m.max(1) as f64)
    };
    // best[k][j]: the least worst fill of stages 0..k holding layers 0..j,
    // and where stage k - 1 starts in that cut.
    let mut best = vec![vec![(f64::INFINITY, 0usize); layers + 1]; stages + 1];
    best[0][0] = (0.0, 0);
    for k in 1..=stages {
        for j in k..=layers - (stages - k) {
            for i in k - 1..j {
                let worst = best[k - 1][i].0.max(fill(k - 1, i..j));
                if worst < best[k][j].0 {
                    best[k][j] = (worst, i);
                }
            }
        }
    }
    let mut cuts = Vec::with_capacity(stages);
    let mut end = layers;
    for k in (1..=stages).rev() {
        let start = best[k][end].1;
        cuts.push(start..end);
        end = start;
    }
    cuts.reverse();
    for (stage, range) in cuts.iter().enumerate() {
        let needs = weights.stage_bytes(range.clone());
        if let Some(free) = memory[stage].filter(|&free| needs > free) {
            return Err(PlanError::StageDoesNotFit {
                stage,
                layers: range.clone(),
                needs,
                free,
            });
        }
    }
    Ok(cuts)
}

/// One stage: its layers and the shard plan of exactly the tensors they read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The layers this stage runs: from token ids if it starts at 0, to
    /// logits if it ends at the model's last layer, residuals between.
    pub layers: Range<usize>,
    /// The free memory its machine was given as having, if any.
    pub memory: Option<u64>,
    /// Its shards, over a tensor table of only its tensors.
    pub plan: Plan,
}

/// A model cut into pipeline stages: what `shardload plan --stages` writes
/// and a driver reads to place each stage on its machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePlan {
    /// Always [`STAGES_FORMAT`].
    pub format: String,
    /// The model's transformer blocks.
    pub layers: usize,
    /// The stages in pipeline order.
    pub stages: Vec<Stage>,
}

impl StagePlan {
    /// A stage plan over `layers` blocks, checked like a file read back.
    pub fn new(layers: usize, stages: Vec<Stage>) -> Result<StagePlan, PlanError> {
        let plan = StagePlan {
            format: STAGES_FORMAT.to_string(),
            layers,
            stages,
        };
        plan.validate().map_err(PlanError::BadStages)?;
        Ok(plan)
    }

    /// Reads a stage plan file: the stages must cover the layers in order,
    /// each non-empty, and each stage's shard plan must be self-consistent.
    pub fn from_json(text: &str) -> Result<StagePlan, PlanError> {
        let plan: StagePlan =
            serde_json::from_str(text).map_err(|e| PlanError::BadStages(e.to_string()))?;
        if plan.format != STAGES_FORMAT {
            return Err(PlanError::BadStages(format!("format is {:?}", plan.format)));
        }
        plan.validate().map_err(PlanError::BadStages)?;
        Ok(plan)
    }

    /// The stage plan file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a stage plan always serializes")
    }

    fn validate(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("there are no stages".into());
        }
        let mut next = 0;
        for (index, stage) in self.stages.iter().enumerate() {
            let range = &stage.layers;
            if range.start != next || range.end <= range.start {
                return Err(format!(
                    "stages[{index}] runs layers {}..{}, but the stage after layers 0..{next} must start at {next} and hold at least one",
                    range.start, range.end
                ));
            }
            stage
                .plan
                .validate()
                .map_err(|e| format!("stages[{index}].plan: {e}"))?;
            next = range.end;
        }
        if next != self.layers {
            return Err(format!(
                "the stages end at layer {next}, but the model has {} layers",
                self.layers
            ));
        }
        Ok(())
    }
}
