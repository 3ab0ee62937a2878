//! This process's memory use, as Linux reports it.
//!
//! RSS counts a resident file page once per mapping, so K instances mapping
//! the same model report about K times its size though the page cache holds
//! it once. What really grows per instance is private memory, reported next
//! to RSS.

use anyhow::{Context, Result};

/// A snapshot of the process's memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Resident set size (`VmRSS`).
    pub rss: u64,
    /// Resident anonymous memory (`RssAnon`): heap, copies, private dirty pages.
    pub rss_anon: u64,
    /// Resident file-backed memory (`RssFile`), shared with the page cache.
    pub rss_file: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub pss: u64,
    /// Pages only this process holds that cannot be dropped or shared
    /// (`Private_Dirty`: anonymous memory, copies, copy-on-write pages).
    pub private_dirty: u64,
    /// Clean pages only this process maps (`Private_Clean`): file pages the
    /// kernel can drop and reread, and that a second mapper would share.
    pub private_clean: u64,
}

impl MemoryUsage {
    /// Reads `/proc/self/status` and `/proc/self/smaps_rollup`.
    pub fn now() -> Result<MemoryUsage> {
        let status = std::fs::read_to_string("/proc/self/status")
            .context("cannot read /proc/self/status")?;
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")
            .context("cannot read /proc/self/smaps_rollup")?;
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        Ok(MemoryUsage {
            rss: field(&status, "VmRSS"),
            rss_anon: field(&status, "RssAnon"),
            rss_file: field(&status, "RssFile"),
            pss: field(&rollup, "Pss"),
            private_dirty: field(&rollup, "Private_Dirty"),
            private_clean: field(&rollup, "Private_Clean"),
        })
    }
}

/// Memory the kernel says new allocations can get without swapping
/// (`MemAvailable` in /proc/meminfo), if it says.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    line.split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}
