//! The projection of the task's unit tests: a running total per key, so what is checked is the
//! task's decisions, not a domain's rules.

use serde::Deserialize;
use tally_topology::{
    codec, wire, Guard, Invalid, Projection, Reason, SourceRef, StateDecodeError,
};

/// Sums `n` per `key`.
pub struct Sum;

#[derive(Debug, Clone, PartialEq)]
pub struct Add {
    id: String,
    key: String,
    n: i64,
    time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
pub struct Total {
    pub key: String,
    pub total: i64,
    pub time_ms: i64,
    pub source: (i32, i64),
}

#[derive(Deserialize)]
struct Wire<'a> {
    id: &'a str,
    key: &'a str,
    n: i64,
    t: i64,
}

impl Projection for Sum {
    type Event = Add;
    type State = Total;
    const NAME: &'static str = "sum";
    const KEY_FIELD: &'static str = "key";
    // Never parsed here: the tests build their flow by hand.
    const CONTRACT: &'static str = "";
    const STATE_VERSION: u8 = 1;
    const SCHEMA_VERSIONS: &'static [u32] = &[1];
    const INVARIANTS: &'static [&'static str] = &[];

    fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Add, Invalid> {
        let w: Wire<'_> = wire::decode_json(value)?;
        wire::id("id", w.id)?;
        wire::key_matches(key, "key", w.key)?;
        Ok(Add {
            id: w.id.into(),
            key: w.key.into(),
            n: w.n,
            time_ms: w.t,
        })
    }
    fn event_id(e: &Add) -> &str {
        &e.id
    }
    fn aggregate_key(e: &Add) -> &str {
        &e.key
    }
    fn event_time_ms(e: &Add) -> i64 {
        e.time_ms
    }
    fn fingerprint(e: &Add) -> u64 {
        codec::Fingerprint::new("sum")
            .str(&e.id)
            .str(&e.key)
            .int(e.n)
            .int(e.time_ms)
            .finish()
    }
    fn schema_version(_: &Add) -> u32 {
        1
    }
    fn initial(e: &Add, source: SourceRef) -> Total {
        Total {
            key: e.key.clone(),
            total: 0,
            time_ms: e.time_ms,
            source: (source.partition, source.offset),
        }
    }
    fn apply_in_place(s: &mut Total, e: &Add, source: SourceRef, _: &Guard) -> Result<(), Invalid> {
        s.total = s
            .total
            .checked_add(e.n)
            .ok_or_else(|| Invalid::overflow("total"))?;
        s.time_ms = e.time_ms;
        s.source = (source.partition, source.offset);
        Ok(())
    }
    fn render(s: &Total, out: &mut Vec<u8>) -> Result<(), Invalid> {
        out.clear();
        let json = serde_json::json!({
            "key": s.key,
            "total": s.total,
            "source": {"partition": s.source.0, "offset": s.source.1},
        });
        serde_json::to_writer(&mut *out, &json)
            .map_err(|e| Invalid::new(Reason::Custom("unrenderable"), e.to_string()))
    }
    fn encode_state(s: &Total, out: &mut Vec<u8>) {
        codec::encode(Self::STATE_VERSION, s, out)
    }
    fn decode_state(bytes: &[u8]) -> Result<Total, StateDecodeError> {
        codec::decode("sum", Self::STATE_VERSION, bytes)
    }
    fn state_key(s: &Total) -> &str {
        &s.key
    }
    fn source(s: &Total) -> SourceRef {
        SourceRef {
            partition: s.source.0,
            offset: s.source.1,
        }
    }
    fn last_event_time_ms(s: &Total) -> i64 {
        s.time_ms
    }
    fn invariant(_: &str, _: &Total, _: &Guard) -> Result<(), String> {
        Ok(())
    }
}
