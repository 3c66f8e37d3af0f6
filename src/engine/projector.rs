//! What the runtime needs of a projection, without its types: the tasks of its flows and its
//! stored states rendered as outputs. The registry makes one per registered projection.

use std::sync::Arc;

use tally_state::Store;
use tally_topology::Projection;

use super::commit::store::StoreWriter;
use super::{FlowInfo, Task, TaskOps};
use crate::config::Contracts;

/// Makes a task: its flow, partition, store, the store writer and its cache's bytes.
type NewTask = fn(Arc<FlowInfo>, i32, Store, StoreWriter, usize) -> Box<dyn TaskOps>;

/// One registered projection, as the runtime runs it.
#[derive(Clone, Copy)]
pub struct Projector {
    name: &'static str,
    task: NewTask,
    render_state: fn(&[u8]) -> Result<Vec<u8>, String>,
}

/// The projections a processor may run, by name, with their contracts: the registry, as the
/// runtime sees it.
pub trait Projectors {
    /// The projection registered as `name`; the error names the registered ones.
    fn projector(&self, name: &str) -> Result<Projector, String>;
    /// Their contracts, as config validation reads them.
    fn contracts(&self) -> &dyn Contracts;
}

impl Projector {
    /// The projector of projection `P`.
    pub(crate) fn of<P: Projection>() -> Self {
        Self {
            name: P::NAME,
            task: |flow, partition, store, writer, cache_bytes| {
                Box::new(Task::<P>::new(flow, partition, store, writer, cache_bytes))
            },
            render_state: render_state::<P>,
        }
    }

    /// The name flows use for it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A task of this projection over a store, restoring; it caches up to `cache_bytes` of
    /// committed states.
    pub(crate) fn task(
        &self,
        flow: Arc<FlowInfo>,
        partition: i32,
        store: Store,
        writer: StoreWriter,
        cache_bytes: usize,
    ) -> Box<dyn TaskOps> {
        (self.task)(flow, partition, store, writer, cache_bytes)
    }

    /// A stored state rendered as its output record (the HTTP queries).
    pub(crate) fn render_state(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        (self.render_state)(bytes)
    }
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "projection `{}`", self.name)
    }
}

fn render_state<P: Projection>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let state = P::decode_state(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    P::render(&state, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
