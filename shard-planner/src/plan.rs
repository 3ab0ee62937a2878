//! The plan: which tensors go in which shard memory, and where.
//!
//! A shard is a contiguous run of tensors in storage order, so that its bytes
//! are one file range per file it touches and can be mapped without copying.
//! Each such range (an *extent*) starts on a host page boundary (and on the
//! model's alignment, whichever is larger) and is placed in the shard's memory
//! at an offset with the same remainder, so every tensor keeps its alignment.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::{Boundary, ModelFile, ModelLayout, PlanError, PlanOptions, TensorSpan};

/// Size of a wasm page: shard memories are a whole number of them.
pub const WASM_PAGE: u64 = 64 * 1024;
/// Host page size: mmap needs file offsets that are multiples of it.
pub const HOST_PAGE: u64 = 4096;
/// The `format` value of plans this crate writes and reads.
pub const PLAN_FORMAT: &str = "shardload-plan/1";

/// The smallest run of a file's bytes between two of a shard's tensors that
/// the shard does not map (it starts a new extent instead). A whole model's
/// tensors lie back to back, so this only splits the plan of a subset of
/// them (one pipeline stage's layers); smaller gaps are cheaper mapped than
/// routed around.
pub const SKIPPED_GAP: u64 = 1 << 20;

/// A complete shard plan, serialized as the plan file (`shardload-plan/1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Always [`PLAN_FORMAT`]; a reader refuses other versions.
    pub format: String,
    /// The model the plan was made from, to refuse using it with another one.
    pub model: ModelIdentity,
    /// The options the plan was made with, so that it can be made again.
    pub options: PlanOptions,
    /// The shard memories, in memory-index order.
    pub shards: Vec<Shard>,
    /// Every tensor of the model, in the model's order, with its placement.
    pub tensors: Vec<PlacedTensor>,
}

/// Identifies the model files a plan belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The files in split order.
    pub files: Vec<ModelFile>,
    /// Total size of the files in bytes.
    pub bytes: u64,
    /// `general.alignment` of the model.
    pub alignment: u64,
}

/// One shard: a wasm memory built from file extents placed back to back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// The shard's index (its position in the guest's shard imports).
    pub index: u32,
    /// Size of the memory in bytes: `pages * 64 KiB`.
    pub bytes: u64,
    /// Size of the memory in 64 KiB wasm pages.
    pub pages: u64,
    /// Bytes of tensor data the shard holds (the rest is alignment and page slack).
    pub tensor_bytes: u64,
    /// The file ranges that make up the memory, in memory order.
    pub extents: Vec<Extent>,
    /// Indices (into [`Plan::tensors`]) of the tensors the shard holds, in storage order.
    pub tensors: Vec<usize>,
}

/// A file range placed in a shard memory: what the store maps (or copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Index of the model file.
    pub file: usize,
    /// Start of the range in the file: a multiple of the host page size.
    pub file_offset: u64,
    /// Length of the range in bytes (it ends at the end of its last tensor).
    pub bytes: u64,
    /// Where the range starts in the shard memory: a multiple of the host page size.
    pub memory_offset: u64,
}

/// A tensor with its place in the logical tensor-data space and in a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedTensor {
    /// The tensor as the model describes it.
    #[serde(flatten)]
    pub span: TensorSpan,
    /// Offset in the model's tensor data, concatenated across split files.
    pub logical_offset: u64,
    /// The shard memory that holds it.
    pub shard: u32,
    /// Offset of its first byte in that memory.
    pub offset: u64,
}

/// A tensor's absolute byte range in its file, the unit the partition works on.
#[derive(Clone, Copy, Debug)]
struct Bytes {
    file: usize,
    start: u64,
    end: u64,
}

/// The extent being grown while tensors are added to a shard, with the memory
/// already taken by the extents before it. Cheap to copy, so the partition
/// search can try a push and throw it away.
#[derive(Clone, Copy, Debug)]
struct OpenExtent {
    file: usize,
    file_offset: u64,
    memory_offset: u64,
    file_end: u64,
}

impl OpenExtent {
    fn first(t: Bytes, granule: u64) -> OpenExtent {
        OpenExtent {
            file: t.file,
            file_offset: t.start / granule * granule,
            memory_offset: 0,
            file_end: t.end,
        }
    }

    /// Adds a tensor; a tensor in another file, or one past a gap of
    /// [`SKIPPED_GAP`] or more (a layer range's shards leave out the other
    /// layers), closes this extent (returned) and opens the next one at the
    /// following granule in memory.
    fn push(self, t: Bytes, granule: u64) -> Result<(OpenExtent, Option<Extent>), PlanError> {
        if t.file == self.file && t.start < self.file_end.saturating_add(SKIPPED_GAP) {
            let file_end = self.file_end.max(t.end);
            return Ok((OpenExtent { file_end, ..self }, None));
        }
        let closed = self.close();
        let next = OpenExtent {
            memory_offset: round_up(self.memory_end()?, granule)?,
            ..OpenExtent::first(t, granule)
        };
        Ok((next, Some(closed)))
    }

    fn close(self) -> Extent {
        Extent {
            file: self.file,
            file_offset: self.file_offset,
            bytes: self.file_end - self.file_offset,
            memory_offset: self.memory_offset,
        }
    }

    fn memory_end(self) -> Result<u64, PlanError> {
        self.memory_offset
            .checked_add(self.file_end - self.file_offset)
            .ok_or(PlanError::TooLarge)
    }

    /// The memory size a shard ending with this extent needs, in whole pages.
    fn shard_bytes(self) -> Result<u64, PlanError> {
        round_up(self.memory_end()?, WASM_PAGE)
    }
}

pub(crate) fn round_up(value: u64, to: u64) -> Result<u64, PlanError> {
    value
        .checked_next_multiple_of(to)
        .ok_or(PlanError::TooLarge)
}

/// The checked, storage-ordered view of a layout that the partition works on.
struct Prepared {
    /// Tensor indices in storage order (file, then offset).
    order: Vec<usize>,
    /// Byte ranges, indexed like `order`.
    bytes: Vec<Bytes>,
    /// Ranges of `order` that may not be split between shards.
    units: Vec<Range<usize>>,
    granule: u64,
}

impl Prepared {
    fn new(layout: &ModelLayout, boundary: Boundary) -> Result<Prepared, PlanError> {
        if !layout.alignment.is_power_of_two() {
            return Err(PlanError::BadAlignment(layout.alignment));
        }
        let granule = layout.alignment.max(HOST_PAGE);
        let mut order: Vec<usize> = (0..layout.tensors.len()).collect();
        order.sort_by_key(|&i| (layout.tensors[i].file, layout.tensors[i].file_offset, i));
        let mut bytes = Vec::with_capacity(order.len());
        for &i in &order {
            let t = &layout.tensors[i];
            let file = layout.files.get(t.file).ok_or_else(|| {
                PlanError::BadTensor(t.name.clone(), "names a file the model does not have")
            })?;
            let end = t.file_offset.checked_add(t.bytes);
            if t.file_offset < file.data_offset || end.is_none_or(|end| end > file.size) {
                return Err(PlanError::BadTensor(
                    t.name.clone(),
                    "lies outside its file's data section",
                ));
            }
            if !(t.file_offset - file.data_offset).is_multiple_of(layout.alignment) {
                return Err(PlanError::BadTensor(
                    t.name.clone(),
                    "is not aligned to general.alignment",
                ));
            }
            let next = Bytes {
                file: t.file,
                start: t.file_offset,
                end: t.file_offset + t.bytes,
            };
            if let Some(prev) = bytes
                .last()
                .copied()
                .filter(|p: &Bytes| p.file == next.file)
                && prev.end > next.start
            {
                return Err(PlanError::BadTensor(
                    t.name.clone(),
                    "overlaps the tensor before it",
                ));
            }
            bytes.push(next);
        }
        let units = units(layout, &order, boundary);
        Ok(Prepared {
            order,
            bytes,
            units,
            granule,
        })
    }

    /// The extent state after adding a unit's tensors to `open` (or to a new shard).
    fn push_unit(&self, open: Option<OpenExtent>, unit: usize) -> Result<OpenExtent, PlanError> {
        let mut tensors = self.bytes[self.units[unit].clone()].iter().copied();
        let mut open = match open {
            Some(open) => open,
            // Units are never empty.
            None => OpenExtent::first(tensors.next().expect("unit has a tensor"), self.granule),
        };
        for t in tensors {
            open = open.push(t, self.granule)?.0;
        }
        Ok(open)
    }

    /// Memory bytes of a shard holding units `range`.
    fn shard_bytes(&self, range: Range<usize>) -> Result<u64, PlanError> {
        let mut open = None;
        for unit in range {
            open = Some(self.push_unit(open, unit)?);
        }
        open.map_or(Ok(0), OpenExtent::shard_bytes)
    }

    /// Cuts units `from..` into shards of at most `cap` bytes, each as long as
    /// it can be while leaving one unit for each of the `max_shards` still to
    /// come (`None`: as many shards as needed). Returns the shards' unit
    /// ranges, or `None` when `max_shards` shards cannot hold the units under `cap`.
    ///
    /// Shard sizes only grow as a shard takes more units, so taking the most
    /// that fit gives the fewest shards; holding back one unit per remaining
    /// shard turns that into exactly `max_shards` when enough units exist.
    fn cut(
        &self,
        from: usize,
        cap: u64,
        max_shards: Option<usize>,
    ) -> Result<Option<Vec<Range<usize>>>, PlanError> {
        let n = self.units.len();
        let mut shards = Vec::new();
        let mut start = from;
        while start < n {
            let still_to_come = max_shards.map_or(0, |m| m.saturating_sub(shards.len() + 1));
            let last_allowed = n.saturating_sub(still_to_come).max(start + 1);
            let mut open = self.push_unit(None, start)?;
            if open.shard_bytes()? > cap {
                return Ok(None);
            }
            let mut end = start + 1;
            while end < last_allowed {
                let grown = self.push_unit(Some(open), end)?;
                if grown.shard_bytes()? > cap {
                    break;
                }
                open = grown;
                end += 1;
            }
            shards.push(start..end);
            if max_shards.is_some_and(|m| shards.len() > m) {
                return Ok(None);
            }
            start = end;
        }
        Ok(Some(shards))
    }

    /// The smallest largest-shard size with which `shards` shards hold units `from..`.
    fn best_cap(&self, from: usize, shards: usize) -> Result<u64, PlanError> {
        let mut low = 0;
        for unit in from..self.units.len() {
            low = low.max(self.shard_bytes(unit..unit + 1)?);
        }
        let mut high = self.shard_bytes(from..self.units.len())?;
        // Invariant: `high` fits, every cap below `low` does not; sizes are whole pages.
        while low < high {
            let mid = (low / WASM_PAGE + (high - low) / WASM_PAGE / 2) * WASM_PAGE;
            if self.cut(from, mid, Some(shards))?.is_some() {
                high = mid;
            } else {
                low = mid + WASM_PAGE;
            }
        }
        Ok(high)
    }

    /// Exactly `shards` shards with the smallest possible largest shard, and
    /// among such plans a balanced one: each shard is cut greedily under the
    /// best cap for what remains, so the shards after a forced large one share
    /// the rest evenly instead of leaving crumbs at the end. Returns the
    /// largest shard's size and the cuts.
    fn balanced(&self, shards: usize) -> Result<(u64, Vec<Range<usize>>), PlanError> {
        let mut cuts = Vec::with_capacity(shards);
        let mut largest = 0;
        let mut from = 0;
        for remaining in (1..=shards).rev() {
            let cap = self.best_cap(from, remaining)?;
            largest = largest.max(cap);
            let first = self
                .cut(from, cap, Some(remaining))?
                .and_then(|c| c.into_iter().next());
            let first = first.ok_or(PlanError::TooLarge)?;
            from = first.end;
            cuts.push(first);
        }
        Ok((largest, cuts))
    }

    fn describe_unit(&self, layout: &ModelLayout, unit: usize) -> String {
        let range = self.units[unit].clone();
        let first = &layout.tensors[self.order[range.start]].name;
        if range.len() == 1 {
            format!("tensor {first}")
        } else {
            let last = &layout.tensors[self.order[range.end - 1]].name;
            format!("tensors {first} .. {last}")
        }
    }
}

/// Groups storage-ordered tensors into the units a shard boundary may not split:
/// single tensors, or with [`Boundary::Layer`], whole transformer blocks.
fn units(layout: &ModelLayout, order: &[usize], boundary: Boundary) -> Vec<Range<usize>> {
    let n = order.len();
    // cut_allowed[p]: a shard may start at storage position p.
    let mut cut_allowed = vec![true; n];
    if boundary == Boundary::Layer {
        let mut spans: std::collections::HashMap<u64, (usize, usize)> = Default::default();
        for (position, &i) in order.iter().enumerate() {
            if let Some(block) = ModelLayout::block_of(&layout.tensors[i].name) {
                let span = spans.entry(block).or_insert((position, position));
                span.1 = position;
            }
        }
        for (first, last) in spans.into_values() {
            cut_allowed[first + 1..=last].fill(false);
        }
    }
    let mut starts: Vec<usize> = (0..n).filter(|&p| cut_allowed[p]).collect();
    starts.push(n);
    starts.windows(2).map(|w| w[0]..w[1]).collect()
}

impl Plan {
    /// Makes the plan for a model: exactly `options.shards` shards with the
    /// smallest possible largest shard, or else the fewest shards under
    /// `options.max_shard_size` (balanced the same way).
    pub fn new(layout: &ModelLayout, options: &PlanOptions) -> Result<Plan, PlanError> {
        if layout.tensors.is_empty() {
            return Err(PlanError::NoTensors);
        }
        let prepared = Prepared::new(layout, options.boundary)?;
        let cap = options.max_shard_size;
        for unit in 0..prepared.units.len() {
            let bytes = prepared.shard_bytes(unit..unit + 1)?;
            if bytes > cap {
                let what = prepared.describe_unit(layout, unit);
                return Err(PlanError::UnitTooLarge { what, bytes, cap });
            }
        }
        let count = match options.shards {
            Some(0) => return Err(PlanError::ZeroShards),
            Some(n) => {
                let n = n as usize;
                if n > prepared.units.len() {
                    return Err(PlanError::TooManyShards {
                        shards: n,
                        units: prepared.units.len(),
                        boundary: options.boundary,
                    });
                }
                n
            }
            None => prepared.cut(0, cap, None)?.map_or(0, |shards| shards.len()),
        };
        let (largest, cuts) = prepared.balanced(count)?;
        if largest > cap {
            return Err(PlanError::ShardsDoNotFit {
                shards: count,
                needed: largest,
                cap,
            });
        }
        Self::place(layout, &prepared, &cuts, options)
    }

    fn place(
        layout: &ModelLayout,
        prepared: &Prepared,
        cuts: &[Range<usize>],
        options: &PlanOptions,
    ) -> Result<Plan, PlanError> {
        let bases = layout.logical_bases().ok_or(PlanError::TooLarge)?;
        let mut tensors: Vec<PlacedTensor> = layout
            .tensors
            .iter()
            .map(|span| PlacedTensor {
                logical_offset: bases[span.file]
                    + (span.file_offset - layout.files[span.file].data_offset),
                span: span.clone(),
                shard: 0,
                offset: 0,
            })
            .collect();
        let mut shards = Vec::with_capacity(cuts.len());
        for (index, units) in cuts.iter().enumerate() {
            let positions = prepared.units[units.start].start..prepared.units[units.end - 1].end;
            let mut extents = Vec::new();
            let mut open = OpenExtent::first(prepared.bytes[positions.start], prepared.granule);
            let mut members = Vec::with_capacity(positions.len());
            for position in positions {
                let t = prepared.bytes[position];
                let (next, closed) = open.push(t, prepared.granule)?;
                extents.extend(closed);
                open = next;
                let i = prepared.order[position];
                tensors[i].shard = index as u32;
                tensors[i].offset = open.memory_offset + (t.start - open.file_offset);
                members.push(i);
            }
            let bytes = open.shard_bytes()?;
            extents.push(open.close());
            shards.push(Shard {
                index: index as u32,
                bytes,
                pages: bytes / WASM_PAGE,
                tensor_bytes: members.iter().map(|&i| layout.tensors[i].bytes).sum(),
                extents,
                tensors: members,
            });
        }
        let model = ModelIdentity {
            files: layout.files.clone(),
            bytes: layout.files.iter().map(|f| f.size).sum(),
            alignment: layout.alignment,
        };
        Ok(Plan {
            format: PLAN_FORMAT.to_string(),
            model,
            options: options.clone(),
            shards,
            tensors,
        })
    }

    /// The largest shard over the mean shard size: 1.0 is perfectly balanced.
    pub fn balance(&self) -> f64 {
        let largest = self.shards.iter().map(|s| s.bytes).max().unwrap_or(0);
        let total: u64 = self.shards.iter().map(|s| s.bytes).sum();
        if total == 0 {
            return 1.0;
        }
        largest as f64 * self.shards.len() as f64 / total as f64
    }

    /// Refuses a plan used with a model it was not made from: the files must
    /// have the same sizes and fingerprints, and the tensor table must match.
    pub fn check_model(&self, layout: &ModelLayout) -> Result<(), PlanError> {
        if self.model.files.len() != layout.files.len() {
            return Err(PlanError::WrongModel(format!(
                "the plan is for {} file(s), the model has {}",
                self.model.files.len(),
                layout.files.len()
            )));
        }
        for (planned, actual) in self.model.files.iter().zip(&layout.files) {
            if planned.size != actual.size || planned.fingerprint != actual.fingerprint {
                return Err(PlanError::WrongModel(format!(
                    "{} has size {} and fingerprint {}, but the plan was made from {} with size {} and fingerprint {}",
                    actual.path,
                    actual.size,
                    actual.fingerprint,
                    planned.path,
                    planned.size,
                    planned.fingerprint
                )));
            }
        }
        let same_tensors = self.tensors.len() == layout.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&layout.tensors)
                .all(|(p, t)| p.span == *t);
        if self.model.alignment != layout.alignment || !same_tensors {
            return Err(PlanError::WrongModel(
                "the tensor table differs from the plan's".into(),
            ));
        }
        Ok(())
    }
}
