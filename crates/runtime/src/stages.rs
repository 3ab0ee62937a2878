//! Pipeline stages: a model's layers cut among machines. Which tensors a
//! range of layers reads is the architecture's to say (a tied embedding is
//! both the first stage's input and the last one's output head), so this is
//! where a stage's part of the tensor table, its shard plan and the balance
//! of layers among stages are made; the planner does the cutting.

use std::ops::Range;

use anyhow::{Context, Result, bail};
use shard_planner::{
    Boundary, LayerWeights, ModelLayout, Plan, PlanError, PlanOptions, Stage, StagePlan,
    balance_layers,
};
use shardload_store::OpenModel;

use crate::arch::Hyperparameters;
use crate::program::Program;

/// The part of `model`'s tensor table that layers `layers` read: the blocks,
/// the embedding for a first stage, the output head for a last one.
pub fn stage_layout(model: &OpenModel, layers: Range<usize>) -> Result<ModelLayout> {
    layout_of(model, &name_table(model)?, layers)
}

/// A one-shard plan of the whole model: all the program builder needs to
/// resolve tensor names and check their shapes. Nothing is mapped.
fn name_table(model: &OpenModel) -> Result<Plan> {
    model.plan(&PlanOptions {
        shards: Some(1),
        max_shard_size: u64::MAX >> 2,
        boundary: Boundary::Tensor,
    })
}

/// [`stage_layout`] with the name table already made.
fn layout_of(model: &OpenModel, names: &Plan, layers: Range<usize>) -> Result<ModelLayout> {
    let read = Program::tensors_read(names, model.gguf.metadata(), layers)?;
    let read: std::collections::HashSet<String> = read.into_iter().collect();
    Ok(model.layout.only(|name| read.contains(name)))
}

/// The shard plan of one stage: only the tensors layers `layers` read.
pub fn plan_stage(model: &OpenModel, layers: Range<usize>, options: &PlanOptions) -> Result<Plan> {
    stage_plan_of(model, &name_table(model)?, layers, options)
}

fn stage_plan_of(
    model: &OpenModel,
    names: &Plan,
    layers: Range<usize>,
    options: &PlanOptions,
) -> Result<Plan> {
    let layout = layout_of(model, names, layers.clone())?;
    Plan::new(&layout, options).with_context(|| {
        format!(
            "cannot plan layers {}..{} of {}",
            layers.start,
            layers.end,
            model.name()
        )
    })
}

/// Cuts `model` into one stage per entry of `memory` (each machine's free
/// memory, or `None` to balance bytes alone) and plans each stage's shards
/// with `options`.
pub fn plan_stages(
    model: &OpenModel,
    memory: &[Option<u64>],
    options: &PlanOptions,
) -> Result<StagePlan> {
    let layers = Hyperparameters::read(model.gguf.metadata())?.layers;
    let names = name_table(model)?;
    let weights = layer_weights(model, &names, layers)?;
    let cuts = balance_layers(&weights, memory)
        .with_context(|| format!("cannot stage {}", model.name()))?;
    let stages = cuts
        .into_iter()
        .zip(memory)
        .map(|(layers, &memory)| {
            Ok(Stage {
                plan: stage_plan_of(model, &names, layers.clone(), options)?,
                layers,
                memory,
            })
        })
        .collect::<Result<_>>()?;
    Ok(StagePlan::new(layers, stages)?)
}

/// Stage `index` of `stages`, its plan checked against `model` (the same
/// files, and exactly the tensors its layers read).
pub fn load_stage(model: &OpenModel, stages: &StagePlan, index: usize) -> Result<Stage> {
    let Some(stage) = stages.stages.get(index) else {
        bail!(
            "there is no stage {index}: the stage plan has {} (0 to {})",
            stages.stages.len(),
            stages.stages.len().saturating_sub(1)
        );
    };
    let layers = Hyperparameters::read(model.gguf.metadata())?.layers;
    if stages.layers != layers {
        return Err(PlanError::WrongModel(format!(
            "the stage plan is for a model of {} layers, {} has {layers}",
            stages.layers,
            model.name()
        ))
        .into());
    }
    let layout = stage_layout(model, stage.layers.clone())?;
    let plan = model
        .checked(stage.plan.clone(), &layout)
        .with_context(|| {
            format!(
                "stage {index} (layers {}..{}) was not planned from {}",
                stage.layers.start,
                stage.layers.end,
                model.name()
            )
        })?;
    Ok(Stage {
        plan,
        ..stage.clone()
    })
}

/// What each block weighs, and what the first and last stages hold besides.
fn layer_weights(model: &OpenModel, names: &Plan, layers: usize) -> Result<LayerWeights> {
    let mut blocks = vec![0u64; layers];
    for t in &model.layout.tensors {
        if let Some(block) = ModelLayout::block_of(&t.name).and_then(|b| usize::try_from(b).ok())
            && block < layers
        {
            blocks[block] += t.bytes;
        }
    }
    let outside_blocks = |range: Range<usize>| -> Result<u64> {
        let layout = layout_of(model, names, range)?;
        Ok(layout
            .tensors
            .iter()
            .filter(|t| ModelLayout::block_of(&t.name).is_none())
            .map(|t| t.bytes)
            .sum())
    };
    if layers == 0 {
        bail!("{} has no layers to stage", model.name());
    }
    Ok(LayerWeights {
        first: outside_blocks(0..1)?,
        last: outside_blocks(layers - 1..layers)?,
        layers: blocks,
    })
}
