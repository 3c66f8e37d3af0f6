//! What one replay, reconcile or repair works on: the plan resolved from a flow's config and
//! recovery contract, the operator who signs a repair, and the rows a repair writes.

use std::collections::BTreeMap;
use std::time::Duration;

use tally_topology::Partitioner;

use super::scope::Scope;

/// Everything one replay or reconcile needs, resolved from the config and the flow's contract.
#[derive(Debug, Clone)]
pub struct Plan {
    /// replay or reconcile.
    pub kind: &'static str,
    pub flow: String,
    pub bootstrap: String,
    pub kafka: BTreeMap<String, String>,
    pub application_id: String,
    pub input: String,
    pub output: String,
    pub changelog: String,
    pub control: String,
    pub contract_version: u32,
    pub contract_digest: String,
    pub projection_version: u32,
    pub checks: Vec<String>,
    pub allow_overdraft: bool,
    pub retention_ms: i64,
    pub late_tolerance_ms: i64,
    pub partitioner: Partitioner,
    pub scope: Scope,
    pub apply: bool,
    /// How long an apply waits for the owners to confirm the repairs.
    pub confirm_timeout: Duration,
    /// Who signs the repairs of an apply (and is named in its evidence).
    pub signer: Option<Signer>,
    /// How the flow reads its input records.
    pub reader: crate::input::InputReader,
}

/// The operator an apply acts for, and the control key that vouches for them.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: crate::config::ControlKey,
    pub operator: super::evidence::Operator,
}

impl Plan {
    /// A whole-flow dry run of `kind` over a configured flow, under its recovery contract.
    pub fn for_flow(
        cfg: &crate::config::Config,
        f: &crate::config::FlowConfig,
        kind: &'static str,
        contracts: &dyn crate::config::Contracts,
    ) -> Result<(Plan, tally_topology::Contract), String> {
        let contract = f.contract(contracts)?;
        let plan = Plan {
            kind,
            flow: f.name.clone(),
            bootstrap: cfg.bootstrap_servers.clone(),
            kafka: (*cfg.kafka).clone(),
            application_id: cfg.application_id.clone(),
            input: f.input.clone(),
            output: f.output.clone(),
            changelog: f.changelog_topic(&cfg.application_id),
            control: f.control_topic(&cfg.application_id),
            contract_version: contract.contract_version,
            contract_digest: contract.digest(),
            projection_version: contract.projection.version,
            checks: contract.reconciliation.checks.clone(),
            allow_overdraft: contract.reconciliation.allow_overdraft,
            retention_ms: i64::try_from(cfg.dedupe_retention.as_millis()).unwrap_or(i64::MAX),
            late_tolerance_ms: contract.late_tolerance_ms(),
            partitioner: contract.ordering.partitioner,
            scope: Scope::default(),
            apply: false,
            confirm_timeout: Duration::from_secs(60),
            signer: None,
            reader: f.input_reader(&contract)?,
        };
        Ok((plan, contract))
    }

    /// The contract's invariants, as the live flow guards them.
    pub fn guard(&self) -> tally_topology::Guard {
        tally_topology::Guard::new(self.checks.iter().cloned(), self.allow_overdraft)
    }
}

/// A corrected row for the owning task: the rebuilt state's encoding, or `None` to delete.
#[derive(Debug, Clone)]
pub struct Repair {
    pub key: String,
    pub partition: i32,
    pub state: Option<Vec<u8>>,
}
