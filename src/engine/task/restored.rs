//! What a finished restore hands its task: the committed offset to resume at, where the
//! changelog ends, and the outputs a crashed at_least_once owner left ahead of its states.

use std::collections::HashMap;

use crate::engine::FastHash;

/// Outputs a crashed at_least_once owner left past its last commit: the next owner holds the
/// outputs of those keys until their states caught up with them.
#[derive(Debug, Default)]
pub struct Ahead {
    /// Past this input offset nothing waits any more (the input's end when outputs were found
    /// past the last commit, else the committed offset).
    pub horizon: i64,
    /// The output partition's end when the restore began.
    pub output_end: i64,
    /// Key -> the input offset of the newest landed output's last event; `None` when the last
    /// commit's output end is unknown (no commit yet, an older tally): every output before the
    /// horizon waits then.
    pub keys: Option<HashMap<String, i64, FastHash>>,
}

/// A finished restore.
#[derive(Debug)]
pub struct Restored {
    /// The group's committed input offset: processing resumes there.
    pub committed: i64,
    /// Changelog records read.
    pub records: u64,
    /// Whether the store was wiped and rebuilt from the beginning.
    pub full: bool,
    /// The changelog's end after every committed record the store now holds (a lower bound:
    /// 0 when unknown), committed beside the input offset until the task writes more.
    pub changelog_end: i64,
    pub ahead: Ahead,
}
