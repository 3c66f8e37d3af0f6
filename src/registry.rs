//! The projections a process can run, by name: a flow's config names one, and the runtime, the
//! HTTP queries and the recovery tools reach it here, whatever its event and state types.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use tally_state::Store;
use tally_topology::{Contract, ContractError, ContractSpec, Inventory, Ledger, Projection};

use crate::engine::{FlowInfo, StoreWriter, Task, TaskOps};
use crate::recovery::evidence::Evidence;
use crate::recovery::replay::{self, Plan};
use crate::recovery::travel::{self, Answer, Point};
use crate::recovery::RecoveryError;

/// The projections flows may name. Start from [`Registry::builtin`] (inventory and ledger) or
/// [`Registry::new`], add yours with [`Registry::register`], and hand it to [`crate::cli::main`].
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<&'static str, Arc<dyn Registered>>,
}

impl Registry {
    /// A registry without any projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in projections: `inventory` (stock availability) and `ledger` (balances).
    pub fn builtin() -> Self {
        Self::new().register::<Inventory>().register::<Ledger>()
    }

    /// Adds projection `P` under [`Projection::NAME`].
    ///
    /// # Panics
    ///
    /// When another projection of that name is registered already: two projections of one
    /// name would make a flow's config ambiguous, and this is found at start-up, in `main`.
    pub fn register<P: Projection>(mut self) -> Self {
        let entry: Arc<dyn Registered> = Arc::new(Entry::<P>(PhantomData));
        if self.entries.insert(P::NAME, entry).is_some() {
            panic!("two projections are registered as `{}`", P::NAME);
        }
        self
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.keys().copied().collect()
    }

    /// The projection registered as `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<dyn Registered>, String> {
        self.entries.get(name).cloned().ok_or_else(|| {
            format!(
                "unknown projection `{name}` (registered: {})",
                self.names().join(", ")
            )
        })
    }
}

/// What the runtime and the tools need of a projection, without its types.
pub(crate) trait Registered: Send + Sync {
    fn name(&self) -> &'static str;
    /// The contract a flow runs under unless its config names a file.
    fn contract_text(&self) -> &'static str;
    /// Parses and checks a contract against this projection.
    fn parse_contract(&self, text: &str) -> Result<Contract, ContractError>;
    /// A task of this projection over a store, restoring.
    fn task(
        &self,
        flow: Arc<FlowInfo>,
        partition: i32,
        store: Store,
        writer: StoreWriter,
        cache_bytes: usize,
    ) -> Box<dyn TaskOps>;
    /// A replay or reconcile, with its evidence.
    fn replay(&self, plan: &Plan) -> Result<Evidence, RecoveryError>;
    /// A key's state at a point in its history.
    fn state_at(
        &self,
        plan: &Plan,
        key: &str,
        point: Point,
        explain: bool,
    ) -> Result<Answer, RecoveryError>;
    /// A stored state rendered as its output record.
    fn render_state(&self, bytes: &[u8]) -> Result<Vec<u8>, String>;
}

impl std::fmt::Debug for dyn Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "projection `{}`", self.name())
    }
}

/// [`Registered`] for projection `P`.
struct Entry<P>(PhantomData<fn() -> P>);

impl<P: Projection> Registered for Entry<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn contract_text(&self) -> &'static str {
        P::CONTRACT
    }

    fn parse_contract(&self, text: &str) -> Result<Contract, ContractError> {
        Contract::parse(text, &ContractSpec::of::<P>())
    }

    fn task(
        &self,
        flow: Arc<FlowInfo>,
        partition: i32,
        store: Store,
        writer: StoreWriter,
        cache_bytes: usize,
    ) -> Box<dyn TaskOps> {
        Box::new(Task::<P>::new(flow, partition, store, writer, cache_bytes))
    }

    fn replay(&self, plan: &Plan) -> Result<Evidence, RecoveryError> {
        replay::run::<P>(plan)
    }

    fn state_at(
        &self,
        plan: &Plan,
        key: &str,
        point: Point,
        explain: bool,
    ) -> Result<Answer, RecoveryError> {
        travel::state_at::<P>(plan, key, point, explain)
    }

    fn render_state(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let state = P::decode_state(bytes).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        P::render(&state, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_ins_are_registered_by_name() {
        assert_eq!(Registry::builtin().names(), ["inventory", "ledger"]);
    }

    #[test]
    fn an_unknown_projection_is_named_with_the_registered_ones() {
        let err = Registry::builtin().get("payroll").err().unwrap();
        assert!(
            err.contains("payroll") && err.contains("inventory, ledger"),
            "{err}"
        );
    }

    #[test]
    #[should_panic(expected = "two projections are registered as `ledger`")]
    fn a_name_registered_twice_is_refused() {
        let _ = Registry::builtin().register::<Ledger>();
    }
}
