//! Writes committed batches to the local stores on a thread of its own, in commit order, so
//! sled's write cost overlaps the processing of the next batch instead of adding to it.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};

use tally_state::{CommitBatch, StateError, Store};

struct Job {
    store: Store,
    batch: CommitBatch,
    done: SyncSender<Result<(), StateError>>,
}

/// Handle to the writer thread; cloned into every task.
#[derive(Clone)]
pub struct StoreWriter {
    jobs: Sender<Job>,
}

/// A batch handed to the writer; `wait` returns once it is in the store.
pub struct Pending(Receiver<Result<(), StateError>>);

impl StoreWriter {
    /// Starts the writer thread; it ends when every handle is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("tally-store-writer".into())
            .spawn(move || {
                for job in rx {
                    let _ = job.done.send(job.store.commit(job.batch));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Queues a committed batch for `store`.
    pub fn submit(&self, store: Store, batch: CommitBatch) -> Pending {
        let (done, rx) = sync_channel(1);
        if let Err(e) = self.jobs.send(Job { store, batch, done }) {
            // The thread is gone: write here rather than lose a committed batch.
            let job = e.0;
            let _ = job.done.send(job.store.commit(job.batch));
        }
        Pending(rx)
    }
}

impl Pending {
    /// Blocks until the batch is written (or failed).
    pub fn wait(&self) -> Result<(), StateError> {
        self.0.recv().unwrap_or_else(|_| Err(Self::writer_gone()))
    }

    /// The outcome if the batch is written (or failed) already.
    pub fn try_wait(&self) -> Option<Result<(), StateError>> {
        match self.0.try_recv() {
            Ok(done) => Some(done),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(Self::writer_gone())),
        }
    }

    fn writer_gone() -> StateError {
        StateError::Corrupt {
            what: "store writer",
            detail: "the writer thread stopped before confirming a batch".into(),
        }
    }
}
