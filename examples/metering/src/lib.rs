//! Usage-based billing as a tally projection: usage events per customer fold into totals per
//! meter, over the customer's lifetime and per billing period (calendar month, UTC, by event
//! time). A redelivered usage event never bills twice; the same id with other content is
//! dead-lettered.

use std::collections::BTreeMap;

use serde::Deserialize;
use tally::{codec, wire, Guard, Invalid, Projection, Reason, SourceRef, StateDecodeError};

/// The metering projection.
pub struct Metering;

/// One usage event, valid.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    pub event_id: String,
    pub customer_id: String,
    pub meter: String,
    /// Units used, > 0.
    pub quantity: i64,
    pub event_time_ms: i64,
}

/// A meter's usage: its lifetime total and the total of each billing period.
#[derive(Debug, Clone, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct MeterUsage {
    pub total: i64,
    /// `YYYY-MM` (UTC) -> units.
    pub periods: BTreeMap<String, i64>,
}

/// A customer's usage: the materialized state of the metering flow.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct CustomerUsage {
    pub customer_id: String,
    pub meters: BTreeMap<String, MeterUsage>,
    pub events_applied: u64,
    pub last_event_id: String,
    pub last_event_time_ms: i64,
    pub source: SourceRef,
}

/// A usage record as it arrives; every rule is in [`Metering::decode`].
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    schema_version: u32,
    #[serde(borrow)]
    customer_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    meter: std::borrow::Cow<'a, str>,
    quantity: i64,
    #[serde(borrow)]
    event_time: std::borrow::Cow<'a, str>,
}

/// The billing period of an event time: its calendar month in UTC.
pub fn period(event_time_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(event_time_ms)
        .map(|t| t.format("%Y-%m").to_string())
        .unwrap_or_default()
}

impl Projection for Metering {
    type Event = UsageEvent;
    type State = CustomerUsage;
    const NAME: &'static str = "metering";
    const KEY_FIELD: &'static str = "customer_id";
    const CONTRACT: &'static str = include_str!("../contract.toml");
    const STATE_VERSION: u8 = 1;
    const SCHEMA_VERSIONS: &'static [u32] = &[1];
    const INVARIANTS: &'static [&'static str] = &["period_totals_add_up", "usage_non_negative"];

    fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<UsageEvent, Invalid> {
        let w: Wire<'_> = wire::decode_json(value)?;
        if w.schema_version != 1 {
            return Err(Invalid::new(
                Reason::UnknownSchemaVersion,
                format!("schema_version {} is not 1", w.schema_version),
            ));
        }
        wire::id("event_id", &w.event_id)?;
        wire::id("customer_id", &w.customer_id)?;
        wire::id("meter", &w.meter)?;
        if w.quantity <= 0 {
            return Err(Invalid::new(
                Reason::OutOfRange,
                format!("quantity {} must be > 0", w.quantity),
            ));
        }
        let event_time_ms = tally::time::parse_event_time(&w.event_time)?;
        wire::key_matches(key, "customer_id", &w.customer_id)?;
        Ok(UsageEvent {
            event_id: w.event_id.into_owned(),
            customer_id: w.customer_id.into_owned(),
            meter: w.meter.into_owned(),
            quantity: w.quantity,
            event_time_ms,
        })
    }

    fn event_id(ev: &UsageEvent) -> &str {
        &ev.event_id
    }

    fn aggregate_key(ev: &UsageEvent) -> &str {
        &ev.customer_id
    }

    fn event_time_ms(ev: &UsageEvent) -> i64 {
        ev.event_time_ms
    }

    fn fingerprint(ev: &UsageEvent) -> u64 {
        codec::Fingerprint::new("metering")
            .str(&ev.event_id)
            .str(&ev.customer_id)
            .str(&ev.meter)
            .int(ev.quantity)
            .int(ev.event_time_ms)
            .finish()
    }

    fn schema_version(_: &UsageEvent) -> u32 {
        1
    }

    fn initial(ev: &UsageEvent, source: SourceRef) -> CustomerUsage {
        CustomerUsage {
            customer_id: ev.customer_id.clone(),
            meters: BTreeMap::new(),
            events_applied: 0,
            last_event_id: String::new(),
            last_event_time_ms: 0,
            source,
        }
    }

    fn apply_in_place(
        s: &mut CustomerUsage,
        ev: &UsageEvent,
        source: SourceRef,
        _guard: &Guard,
    ) -> Result<(), Invalid> {
        // Everything is computed before anything changes: a refused event leaves the state.
        let events_applied = s
            .events_applied
            .checked_add(1)
            .ok_or_else(|| Invalid::overflow("events_applied"))?;
        let period = period(ev.event_time_ms);
        let meter = s.meters.get(&ev.meter);
        let total = meter
            .map_or(0, |m| m.total)
            .checked_add(ev.quantity)
            .ok_or_else(|| Invalid::overflow("total"))?;
        let in_period = meter
            .and_then(|m| m.periods.get(&period))
            .copied()
            .unwrap_or(0)
            .checked_add(ev.quantity)
            .ok_or_else(|| Invalid::overflow("period total"))?;
        let m = s.meters.entry(ev.meter.clone()).or_default();
        m.total = total;
        m.periods.insert(period, in_period);
        s.events_applied = events_applied;
        s.last_event_id.clone_from(&ev.event_id);
        s.last_event_time_ms = ev.event_time_ms;
        s.source = source;
        Ok(())
    }

    fn render(s: &CustomerUsage, out: &mut Vec<u8>) -> Result<(), Invalid> {
        let meters: serde_json::Map<String, serde_json::Value> = s
            .meters
            .iter()
            .map(|(name, m)| {
                let v = serde_json::json!({"total": m.total, "periods": m.periods});
                (name.clone(), v)
            })
            .collect();
        let doc = serde_json::json!({
            "customer_id": s.customer_id,
            "meters": meters,
            "events_applied": s.events_applied,
            "last_event_id": s.last_event_id,
            "last_event_time": tally::time::render_event_time(s.last_event_time_ms),
            "source": {"partition": s.source.partition, "offset": s.source.offset},
        });
        out.clear();
        serde_json::to_writer(&mut *out, &doc)
            .map_err(|e| Invalid::new(Reason::Custom("unrenderable"), e.to_string()))
    }

    fn encode_state(s: &CustomerUsage, out: &mut Vec<u8>) {
        codec::encode(Self::STATE_VERSION, s, out);
    }

    fn decode_state(bytes: &[u8]) -> Result<CustomerUsage, StateDecodeError> {
        codec::decode("metering", Self::STATE_VERSION, bytes)
    }

    fn state_key(s: &CustomerUsage) -> &str {
        &s.customer_id
    }

    fn state_bytes(s: &CustomerUsage) -> usize {
        let periods: usize = s.meters.values().map(|m| m.periods.len() * 48).sum();
        std::mem::size_of::<CustomerUsage>() + s.customer_id.len() + s.meters.len() * 64 + periods
    }

    fn source(s: &CustomerUsage) -> SourceRef {
        s.source
    }

    fn last_event_time_ms(s: &CustomerUsage) -> i64 {
        s.last_event_time_ms
    }

    fn invariant(name: &str, s: &CustomerUsage, _guard: &Guard) -> Result<(), String> {
        match name {
            "period_totals_add_up" => s
                .meters
                .iter()
                .find_map(|(meter, m)| {
                    let sum = m.periods.values().try_fold(0i64, |a, v| a.checked_add(*v));
                    (sum != Some(m.total)).then(|| {
                        format!("{meter}: periods add up to {sum:?}, total is {}", m.total)
                    })
                })
                .map_or(Ok(()), Err),
            "usage_non_negative" => s
                .meters
                .iter()
                .find(|(_, m)| m.total < 0 || m.periods.values().any(|v| *v < 0))
                .map_or(Ok(()), |(meter, _)| {
                    Err(format!("{meter} has negative usage"))
                }),
            other => Err(format!("`{other}` is not a metering check")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, meter: &str, quantity: i64, time: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","schema_version":1,"customer_id":"c-1","meter":"{meter}","quantity":{quantity},"event_time":"{time}"}}"#
        )
    }

    fn apply(prev: Option<&CustomerUsage>, json: &str) -> Result<CustomerUsage, Invalid> {
        let ev = Metering::decode(Some(b"c-1"), json.as_bytes())?;
        let guard = Guard::new(Metering::INVARIANTS.iter().copied(), false);
        Metering::apply(prev, &ev, SourceRef::default(), &guard)
    }

    #[test]
    fn usage_adds_up_per_meter_and_per_calendar_month() {
        let s = apply(None, &event("a", "api_calls", 5, "2026-06-30T23:59:59Z")).unwrap();
        let s = apply(
            Some(&s),
            &event("b", "api_calls", 7, "2026-07-01T00:00:00Z"),
        )
        .unwrap();
        let s = apply(
            Some(&s),
            &event("c", "storage_gb", 2, "2026-07-15T12:00:00+02:00"),
        )
        .unwrap();
        let calls = &s.meters["api_calls"];
        assert_eq!(calls.total, 12);
        assert_eq!(calls.periods["2026-06"], 5);
        assert_eq!(calls.periods["2026-07"], 7);
        assert_eq!(s.meters["storage_gb"].periods["2026-07"], 2);
        for check in Metering::INVARIANTS {
            assert_eq!(Metering::invariant(check, &s, &Guard::none()), Ok(()));
        }
    }

    #[test]
    fn zero_or_negative_usage_is_refused() {
        let err = apply(None, &event("a", "api_calls", 0, "2026-06-01T00:00:00Z")).unwrap_err();
        assert_eq!(err.reason, Reason::OutOfRange);
    }

    #[test]
    fn a_wrong_field_type_is_named() {
        let err = apply(
            None,
            &event("a", "api_calls", 1, "2026-06-01T00:00:00Z").replace(":1,", ":\"1\","),
        )
        .unwrap_err();
        assert_eq!(err.reason, Reason::InvalidField, "{}", err.message);
    }

    #[test]
    fn an_overflow_changes_nothing() {
        let s = apply(
            None,
            &event("a", "api_calls", i64::MAX, "2026-06-01T00:00:00Z"),
        )
        .unwrap();
        let before = s.clone();
        assert!(apply(
            Some(&s),
            &event("b", "api_calls", 1, "2026-06-01T00:00:00Z")
        )
        .is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn the_contract_fits_the_projection() {
        tally::Contract::parse(Metering::CONTRACT, &tally::ContractSpec::of::<Metering>()).unwrap();
    }
}
