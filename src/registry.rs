//! The projections a process can run, by name: a flow's config names one, and the runtime, the
//! HTTP queries and the recovery tools reach it here, each through its own trait, whatever its
//! event and state types.

use std::collections::BTreeMap;

use tally_topology::{Contract, ContractError, ContractSpec, Inventory, Ledger, Projection};

use crate::config::Contracts;
use crate::engine::{Projector, Projectors};
#[cfg(feature = "tools")]
use crate::recovery::recoverable::Recoverable;

/// The projections flows may name. Start from [`Registry::builtin`] (inventory and ledger) or
/// [`Registry::new`], add yours with [`Registry::register`], and hand it to `tally::cli::main`.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<&'static str, Entry>,
}

/// One registered projection, as each part of tally reaches it.
#[derive(Clone, Copy)]
struct Entry {
    contract: &'static str,
    parse: fn(&str) -> Result<Contract, ContractError>,
    runtime: Projector,
    #[cfg(feature = "tools")]
    tools: Recoverable,
}

/// Parses a contract and checks it against projection `P`.
fn parse<P: Projection>(text: &str) -> Result<Contract, ContractError> {
    Contract::parse(text, &ContractSpec::of::<P>())
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
        let entry = Entry {
            contract: P::CONTRACT,
            parse: parse::<P>,
            runtime: Projector::of::<P>(),
            #[cfg(feature = "tools")]
            tools: Recoverable::of::<P>(),
        };
        if self.entries.insert(P::NAME, entry).is_some() {
            panic!("two projections are registered as `{}`", P::NAME);
        }
        self
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.keys().copied().collect()
    }

    fn get(&self, name: &str) -> Result<&Entry, String> {
        self.entries.get(name).ok_or_else(|| {
            format!(
                "unknown projection `{name}` (registered: {})",
                self.names().join(", ")
            )
        })
    }

    /// The recovery tools of the projection registered as `name`.
    #[cfg(feature = "tools")]
    pub(crate) fn recoverable(&self, name: &str) -> Result<Recoverable, String> {
        Ok(self.get(name)?.tools)
    }
}

impl Contracts for Registry {
    fn contract_text(&self, name: &str) -> Result<&'static str, String> {
        Ok(self.get(name)?.contract)
    }

    fn parse_contract(&self, name: &str, text: &str) -> Result<Contract, String> {
        (self.get(name)?.parse)(text).map_err(|e| e.to_string())
    }
}

impl Projectors for Registry {
    fn projector(&self, name: &str) -> Result<Projector, String> {
        Ok(self.get(name)?.runtime)
    }

    fn contracts(&self) -> &dyn Contracts {
        self
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
        let err = Registry::builtin().contract_text("payroll").unwrap_err();
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
