//! The shard-routing table: logical tensor-data offset -> (memory, offset).

use crate::Plan;

/// A run of the logical tensor-data space that lies contiguously in one shard.
///
/// Offset `x` in `[logical_start, logical_end)` lives in shard `shard` at
/// `shard_offset + (x - logical_start)`. The guest gets the same entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// First logical offset of the run.
    pub logical_start: u64,
    /// One past the last logical offset of the run.
    pub logical_end: u64,
    /// The shard memory that holds the run.
    pub shard: u32,
    /// Where `logical_start` lies in that memory.
    pub shard_offset: u64,
}

/// Routes logical offsets to shard memories in O(log routes).
///
/// Built from a plan's tensors: consecutive tensors that lie in one shard at a
/// constant distance from their logical offsets share a route, so a route
/// covers the alignment padding between them too. Bytes outside every tensor
/// run (a file's tail padding, the gap where shards meet) route nowhere.
#[derive(Clone, Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table for a plan.
    pub fn new(plan: &Plan) -> Router {
        let mut placed: Vec<_> = plan.tensors.iter().filter(|t| t.span.bytes > 0).collect();
        placed.sort_by_key(|t| t.logical_offset);
        let mut routes: Vec<Route> = Vec::new();
        for t in placed {
            let end = t.logical_offset + t.span.bytes;
            if let Some(last) = routes.last_mut()
                && last.shard == t.shard
                && t.offset >= last.shard_offset
                && t.offset - last.shard_offset == t.logical_offset - last.logical_start
            {
                last.logical_end = last.logical_end.max(end);
                continue;
            }
            routes.push(Route {
                logical_start: t.logical_offset,
                logical_end: end,
                shard: t.shard,
                shard_offset: t.offset,
            });
        }
        Router { routes }
    }

    /// The shard and memory offset of a logical offset, if any tensor run holds it.
    pub fn route(&self, logical: u64) -> Option<(u32, u64)> {
        let index = self
            .routes
            .partition_point(|r| r.logical_start <= logical)
            .checked_sub(1)?;
        let r = &self.routes[index];
        (logical < r.logical_end).then(|| (r.shard, r.shard_offset + (logical - r.logical_start)))
    }

    /// The table itself, sorted by logical offset: what the host hands the guest.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
