//! The projection contract: how a flow decodes, deduplicates, applies and renders its events.
//! The runtime is generic over it, so every flow gets the same exactly-once machinery.

use crate::error::{Invalid, Reason};

/// Where the last applied event of a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct SourceRef {
    pub partition: i32,
    pub offset: i64,
}

/// The invariants a flow's recovery contract checks. Apply refuses an event that would break one
/// the state held before, so the live state never becomes what reconcile calls wrong; a state
/// that broke one already (written by an older tally) still takes events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    checks: Vec<String>,
    allow_overdraft: bool,
}

impl Guard {
    /// Guards the named checks (names a projection does not know are ignored).
    pub fn new<S: Into<String>>(
        checks: impl IntoIterator<Item = S>,
        allow_overdraft: bool,
    ) -> Self {
        Self {
            checks: checks.into_iter().map(Into::into).collect(),
            allow_overdraft,
        }
    }

    /// Guards nothing: apply refuses only what cannot be computed (overflow).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether the contract checks `name`.
    pub fn checks(&self, name: &str) -> bool {
        self.checks.iter().any(|c| c == name)
    }

    /// Whether balances may go below zero (credit lines), per the contract.
    pub fn allow_overdraft(&self) -> bool {
        self.allow_overdraft
    }

    /// Refuses a value that would newly break `check`: it held before and fails after;
    /// `what` names the value, and is only called then.
    pub fn refuse_if(
        &self,
        check: &str,
        before_held: bool,
        after_holds: bool,
        what: impl FnOnce() -> String,
    ) -> Result<(), Invalid> {
        if before_held && !after_holds && self.checks(check) {
            return Err(Invalid::new(
                Reason::InvariantViolated,
                format!("{} would break {check}", what()),
            ));
        }
        Ok(())
    }
}

/// A stored state value this build cannot read (garbage, or a newer format version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StateDecodeError(pub String);

/// A deterministic fold of one event contract into per-key state: everything tally needs to
/// run a flow of it exactly once, restore it, replay it and prove it right.
pub trait Projection: 'static {
    type Event: std::fmt::Debug + Clone + PartialEq + Send;
    type State: std::fmt::Debug + Clone + PartialEq + Send;
    /// The name a flow's config (`projection`) and its recovery contract use.
    const NAME: &'static str;
    /// The event field that is the aggregate and record key, as the contract names it.
    const KEY_FIELD: &'static str;
    /// The recovery contract a flow of this projection runs under unless its config names
    /// another (TOML, see `topology/contracts/`).
    const CONTRACT: &'static str;
    /// Format version written in front of every encoded state value.
    const STATE_VERSION: u8;
    /// Parses and validates one Kafka record (the key must match the event's aggregate key).
    fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Self::Event, Invalid>;
    /// The idempotency key.
    fn event_id(ev: &Self::Event) -> &str;
    /// The aggregate (and partitioning) key.
    fn aggregate_key(ev: &Self::Event) -> &str;
    /// Event time in epoch milliseconds.
    fn event_time_ms(ev: &Self::Event) -> i64;
    /// Content fingerprint over every parsed field, so a redelivery and a conflict differ.
    fn fingerprint(ev: &Self::Event) -> u64;
    /// Folds one event into the previous state of its key; overflow, and an invariant the
    /// `guard` holds newly broken, are errors.
    fn apply(
        prev: Option<&Self::State>,
        ev: &Self::Event,
        source: SourceRef,
        guard: &Guard,
    ) -> Result<Self::State, Invalid> {
        let mut s = match prev {
            Some(p) => p.clone(),
            None => Self::initial(ev, source),
        };
        Self::apply_in_place(&mut s, ev, source, guard)?;
        Ok(s)
    }
    /// The state of a key before its first event, which [`Projection::apply_in_place`] folds.
    fn initial(ev: &Self::Event, source: SourceRef) -> Self::State;
    /// [`Projection::apply`] into a state the caller holds, so it is updated, not copied (a copy
    /// is most of the cost of a fold). On error the state is left exactly as it was.
    fn apply_in_place(
        state: &mut Self::State,
        ev: &Self::Event,
        source: SourceRef,
        guard: &Guard,
    ) -> Result<(), Invalid>;
    /// Renders the materialized output JSON into `out` (cleared first).
    fn render(state: &Self::State, out: &mut Vec<u8>) -> Result<(), Invalid>;
    /// Versioned binary encoding for stores and changelogs, into `out` (cleared first).
    fn encode_state(state: &Self::State, out: &mut Vec<u8>);
    /// Reads any state version this build knows.
    fn decode_state(bytes: &[u8]) -> Result<Self::State, StateDecodeError>;
    /// The key a state belongs to.
    fn state_key(state: &Self::State) -> &str;
    /// About how many bytes of memory a decoded state holds, itself and its heap, so a cache
    /// of states keeps to a budget (the default counts only the value itself).
    fn state_bytes(state: &Self::State) -> usize {
        std::mem::size_of_val(state)
    }
    /// Where the state's last applied event came from.
    fn source(state: &Self::State) -> SourceRef;
    /// Event time of the state's last applied event, for late-event and freshness checks.
    fn last_event_time_ms(state: &Self::State) -> i64;
    /// The schema version the event arrived in (before upcasting), for replay evidence.
    fn schema_version(ev: &Self::Event) -> u32;
    /// The event schema versions this build decodes (and upcasts).
    const SCHEMA_VERSIONS: &'static [u32];
    /// The reconciliation checks on a single state this projection can evaluate.
    const INVARIANTS: &'static [&'static str];
    /// Evaluates one of [`Projection::INVARIANTS`] under the contract's `guard` (which says,
    /// for example, whether overdrafts are allowed); `Err` says why the state breaks it.
    fn invariant(name: &str, state: &Self::State, guard: &Guard) -> Result<(), String>;
}
