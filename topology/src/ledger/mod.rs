//! The ledger flow: postings per account folded into available and reserved balances per
//! currency, in i64 minor units. Postings are facts: balances may go negative; overflow may not.

mod event;
#[cfg(test)]
mod tests;

pub use event::{EntryType, LedgerEvent};

use crate::codec::{self, Fingerprint};
use crate::error::Invalid;
use crate::json::{int, provenance, raw, string};
use crate::projection::{Guard, Projection, SourceRef, StateDecodeError};
use crate::small_map::SmallMap;

/// Balances of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct Amounts {
    pub available: i64,
    pub reserved: i64,
}

/// Balances of one account: the materialized state of the ledger flow.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Balance {
    pub account_id: String,
    pub balances: SmallMap<Amounts>,
    pub events_applied: u64,
    pub last_event_id: String,
    pub last_event_time_ms: i64,
    pub source: SourceRef,
}

/// The ledger projection.
pub struct Ledger;

fn step(v: i64, delta: i64, what: &str) -> Result<i64, Invalid> {
    v.checked_add(delta).ok_or_else(|| Invalid::overflow(what))
}

impl Projection for Ledger {
    type Event = LedgerEvent;
    type State = Balance;
    const NAME: &'static str = "ledger";
    const KEY_FIELD: &'static str = "account_id";
    const CONTRACT: &'static str = include_str!("../../contracts/ledger.toml");
    const STATE_VERSION: u8 = 1;

    fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<LedgerEvent, Invalid> {
        event::decode(key, value)
    }

    fn event_id(ev: &LedgerEvent) -> &str {
        &ev.event_id
    }

    fn aggregate_key(ev: &LedgerEvent) -> &str {
        &ev.account_id
    }

    fn event_time_ms(ev: &LedgerEvent) -> i64 {
        ev.event_time_ms
    }

    fn fingerprint(ev: &LedgerEvent) -> u64 {
        Fingerprint::new("ledger")
            .str(&ev.event_id)
            // Versions upcast to one content: a v1 and a v2 record of the same event agree.
            .int(1)
            .str(&ev.account_id)
            .str(ev.kind.as_str())
            .int(ev.amount_minor)
            .str(&ev.currency)
            .int(ev.event_time_ms)
            .opt(ev.correlation_id.as_deref())
            .opt(ev.causation_id.as_deref())
            .finish()
    }

    fn initial(ev: &LedgerEvent, source: SourceRef) -> Balance {
        Balance {
            account_id: ev.account_id.clone(),
            balances: SmallMap::new(),
            events_applied: 0,
            last_event_id: String::new(),
            last_event_time_ms: 0,
            source,
        }
    }

    fn apply_in_place(
        s: &mut Balance,
        ev: &LedgerEvent,
        source: SourceRef,
        guard: &Guard,
    ) -> Result<(), Invalid> {
        let events_applied = s
            .events_applied
            .checked_add(1)
            .ok_or_else(|| Invalid::overflow("events_applied"))?;
        let a = ev.amount_minor;
        let neg = a
            .checked_neg()
            .ok_or_else(|| Invalid::overflow("amount_minor"))?;
        let mut m = s
            .balances
            .get(ev.currency.as_str())
            .copied()
            .unwrap_or_default();
        let (da, dr) = match ev.kind {
            EntryType::Deposited => (a, 0),
            EntryType::Withdrawn => (neg, 0),
            EntryType::Reserved => (neg, a),
            EntryType::Released => (a, neg),
            EntryType::Captured => (0, neg),
        };
        let was = m;
        m.available = step(m.available, da, "available")?;
        m.reserved = step(m.reserved, dr, "reserved")?;
        step(m.available, m.reserved, "total")?;
        let cur = &ev.currency;
        guard.refuse_if(
            "reserved_non_negative",
            was.reserved >= 0,
            m.reserved >= 0,
            || format!("reserved {} {cur}", m.reserved),
        )?;
        if !guard.allow_overdraft() {
            guard.refuse_if(
                "available_non_negative",
                was.available >= 0,
                m.available >= 0,
                || format!("available {} {cur}", m.available),
            )?;
        }
        match s.balances.get_mut(ev.currency.as_str()) {
            Some(slot) => *slot = m,
            None => {
                s.balances.insert(ev.currency.clone(), m);
            }
        }
        s.events_applied = events_applied;
        s.last_event_id.clone_from(&ev.event_id);
        s.last_event_time_ms = ev.event_time_ms;
        s.source = source;
        Ok(())
    }

    fn render(s: &Balance, out: &mut Vec<u8>) -> Result<(), Invalid> {
        out.clear();
        raw(out, "{\"account_id\":");
        string(out, &s.account_id);
        raw(out, ",\"balances\":{");
        for (i, (cur, m)) in s.balances.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let total = step(m.available, m.reserved, "total")?;
            string(out, cur);
            raw(out, ":{\"available\":");
            int(out, m.available);
            raw(out, ",\"reserved\":");
            int(out, m.reserved);
            raw(out, ",\"total\":");
            int(out, total);
            out.push(b'}');
        }
        out.push(b'}');
        provenance(
            out,
            s.events_applied,
            &s.last_event_id,
            s.last_event_time_ms,
            s.source,
        );
        Ok(())
    }

    fn encode_state(state: &Balance, out: &mut Vec<u8>) {
        codec::encode(Self::STATE_VERSION, state, out);
    }

    fn decode_state(bytes: &[u8]) -> Result<Balance, StateDecodeError> {
        codec::decode("ledger", Self::STATE_VERSION, bytes)
    }

    fn state_key(state: &Balance) -> &str {
        &state.account_id
    }

    fn state_bytes(state: &Balance) -> usize {
        std::mem::size_of::<Balance>()
            + state.account_id.capacity()
            + state.last_event_id.capacity()
            + state.balances.heap_bytes()
    }

    fn source(state: &Balance) -> SourceRef {
        state.source
    }

    fn last_event_time_ms(state: &Balance) -> i64 {
        state.last_event_time_ms
    }

    fn schema_version(ev: &LedgerEvent) -> u32 {
        ev.schema_version
    }

    const SCHEMA_VERSIONS: &'static [u32] = &[1, 2];

    const INVARIANTS: &'static [&'static str] =
        &["reserved_non_negative", "available_non_negative"];

    fn invariant(name: &str, state: &Balance, guard: &Guard) -> Result<(), String> {
        let negative = |f: fn(&Amounts) -> i64, what: &str| match state
            .balances
            .iter()
            .find(|(_, a)| f(a) < 0)
        {
            Some((cur, a)) => Err(format!("{what} is {} {cur}", f(a))),
            None => Ok(()),
        };
        match name {
            "reserved_non_negative" => negative(|a| a.reserved, "reserved"),
            "available_non_negative" if guard.allow_overdraft() => Ok(()),
            "available_non_negative" => negative(|a| a.available, "available"),
            other => Err(format!("`{other}` is not a ledger check")),
        }
    }
}
