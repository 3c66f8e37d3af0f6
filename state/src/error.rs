//! Errors of the state crate.
//! Each names what it could not read or write so an operator can act on it.

use std::path::PathBuf;

/// Why a store or a stored value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The sled database at `path` could not be opened (missing permissions, corruption).
    #[error("cannot open store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// sled panicked while opening the database at `path` (it does on some corrupt files).
    #[error("cannot open store at {path}: sled panicked: {message}")]
    OpenPanicked { path: PathBuf, message: String },
    /// A read or write of an open store failed.
    #[error("store io: {0}")]
    Io(#[from] sled::Error),
    /// A file-system operation around the store (wipe, create dir) failed.
    #[error("store dir {path}: {source}")]
    Fs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored value or changelog record is shorter or shaped otherwise than its format says.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A store's dedupe log outgrew what its index can address.
    #[error("the dedupe log of one store is full (1 TiB); spread the input over more partitions or shorten dedupe_retention")]
    IndexFull,
    /// A value was written by a format this build does not know (for example a newer tally).
    #[error("{what} has format version {found}; this tally reads versions up to {supported}")]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        supported: u8,
    },
}

impl StateError {
    /// Whether the store's files are locked by another open handle. sled reports that as an
    /// `Other` IO error whose message names the lock, so the message is what tells.
    pub fn is_locked(&self) -> bool {
        matches!(self, StateError::Open { source: sled::Error::Io(e), .. }
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.to_string().contains("could not acquire lock"))
    }
}
