//! Replay scopes: which keys a replay or reconcile rebuilds and which input partitions it reads.
//! `key=K`, `time=FROM..TO` and `partition=P[:FROM..TO]` combine; every one must hold.

use serde::Serialize;

/// Why a scope argument cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("scope `{0}`: expected key=K, time=FROM..TO or partition=P[:FROM..TO]")]
    Syntax(String),
    #[error("scope `{0}`: {1}")]
    Invalid(String, String),
    #[error("scope `{0}` given twice")]
    Twice(&'static str),
}

/// A half-open range `[from, to)`; an open end is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Range {
    /// Whether `v` lies inside.
    pub fn contains(&self, v: i64) -> bool {
        self.from.is_none_or(|f| v >= f) && self.to.is_none_or(|t| v < t)
    }
}

/// Everything a replay is limited to; the default is the whole flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scope {
    pub key: Option<String>,
    /// Event-time window in epoch milliseconds: keys with an event inside.
    pub time: Option<Range>,
    /// One input partition, optionally only keys with an event in an offset range.
    pub partition: Option<(i32, Option<Range>)>,
}

impl Scope {
    /// Parses and combines `--scope` arguments.
    pub fn parse(args: &[String]) -> Result<Self, ScopeError> {
        let mut s = Scope::default();
        for a in args {
            let (kind, value) = a
                .split_once('=')
                .ok_or_else(|| ScopeError::Syntax(a.clone()))?;
            let bad = |m: &str| ScopeError::Invalid(a.clone(), m.to_string());
            match kind {
                "key" => {
                    if value.is_empty() {
                        return Err(bad("the key is empty"));
                    }
                    if s.key.replace(value.to_string()).is_some() {
                        return Err(ScopeError::Twice("key"));
                    }
                }
                "time" => {
                    let r = range(value, |t| {
                        tally_topology::time::parse_event_time(t).map_err(|e| e.message)
                    })
                    .map_err(|m| bad(&m))?;
                    if s.time.replace(r).is_some() {
                        return Err(ScopeError::Twice("time"));
                    }
                }
                "partition" => {
                    let (p, offsets) = match value.split_once(':') {
                        Some((p, r)) => (p, Some(r)),
                        None => (value, None),
                    };
                    let p: i32 = p
                        .parse()
                        .ok()
                        .filter(|p| *p >= 0)
                        .ok_or_else(|| bad("the partition is not a number >= 0"))?;
                    let offsets = offsets
                        .map(|r| {
                            range(r, |o| {
                                o.parse::<i64>()
                                    .ok()
                                    .filter(|o| *o >= 0)
                                    .ok_or_else(|| format!("`{o}` is not an offset"))
                            })
                        })
                        .transpose()
                        .map_err(|m| bad(&m))?;
                    if s.partition.replace((p, offsets)).is_some() {
                        return Err(ScopeError::Twice("partition"));
                    }
                }
                _ => return Err(ScopeError::Syntax(a.clone())),
            }
        }
        Ok(s)
    }

    /// Whether a record of the scoped partitions can matter at all (its key is in scope).
    pub fn wants_key(&self, key: &[u8]) -> bool {
        self.key.as_ref().is_none_or(|k| k.as_bytes() == key)
    }

    /// Whether an applied event selects its key: inside the time window and offset range.
    pub fn selects(&self, partition: i32, offset: i64, event_time_ms: i64) -> bool {
        self.time.is_none_or(|r| r.contains(event_time_ms))
            && self
                .partition
                .is_none_or(|(p, r)| p == partition && r.is_none_or(|r| r.contains(offset)))
    }

    /// Whether keys are selected by their events (time or offset window) rather than all.
    pub fn by_events(&self) -> bool {
        self.time.is_some() || self.partition.is_some_and(|(_, r)| r.is_some())
    }

    /// Human-readable form, as the evidence record names it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = &self.key {
            parts.push(format!("key={k}"));
        }
        if let Some(r) = &self.time {
            let t = |v: Option<i64>| {
                v.map(tally_topology::time::render_event_time)
                    .unwrap_or_default()
            };
            parts.push(format!("time={}..{}", t(r.from), t(r.to)));
        }
        if let Some((p, r)) = &self.partition {
            match r {
                Some(r) => parts.push(format!(
                    "partition={p}:{}..{}",
                    r.from.map(|v| v.to_string()).unwrap_or_default(),
                    r.to.map(|v| v.to_string()).unwrap_or_default()
                )),
                None => parts.push(format!("partition={p}")),
            }
        }
        if parts.is_empty() {
            "all".to_string()
        } else {
            parts.join(" ")
        }
    }
}

fn range(value: &str, parse: impl Fn(&str) -> Result<i64, String>) -> Result<Range, String> {
    let (from, to) = value
        .split_once("..")
        .ok_or_else(|| format!("`{value}` is not FROM..TO"))?;
    let side = |s: &str| (!s.is_empty()).then(|| parse(s)).transpose();
    let r = Range {
        from: side(from)?,
        to: side(to)?,
    };
    if let (Some(f), Some(t)) = (r.from, r.to) {
        if f >= t {
            return Err(format!("`{value}` is empty: FROM must come before TO"));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn scope(args: &[&str]) -> Result<Scope, ScopeError> {
        Scope::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn scopes_combine() {
        let s = scope(&[
            "key=sku-1",
            "time=2026-01-01T00:00:00Z..2026-01-02T00:00:00Z",
            "partition=3:10..20",
        ])
        .unwrap();
        assert_eq!(s.key.as_deref(), Some("sku-1"));
        assert!(s.selects(3, 10, 1_767_225_600_000));
        assert!(!s.selects(3, 20, 1_767_225_600_000));
        assert!(!s.selects(2, 10, 1_767_225_600_000));
        assert!(!s.selects(3, 10, 1_767_312_000_000));
    }

    #[rstest]
    #[case("partition=2", Some((2, None)))]
    #[case("partition=2:5..", Some((2, Some(Range { from: Some(5), to: None }))))]
    #[case("partition=2:..9", Some((2, Some(Range { from: None, to: Some(9) }))))]
    fn partition_scopes_parse(#[case] arg: &str, #[case] want: Option<(i32, Option<Range>)>) {
        assert_eq!(scope(&[arg]).unwrap().partition, want);
    }

    #[rstest]
    #[case("key")]
    #[case("key=")]
    #[case("partition=-1")]
    #[case("partition=1:9..3")]
    #[case("time=yesterday..today")]
    #[case("offset=3")]
    fn bad_scopes_are_refused(#[case] arg: &str) {
        assert!(scope(&[arg]).is_err(), "{arg}");
    }

    #[test]
    fn a_scope_given_twice_is_refused() {
        assert_eq!(scope(&["key=a", "key=b"]), Err(ScopeError::Twice("key")));
    }
}
