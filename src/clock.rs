//! The runtime's wall clock: audit times, signature ages, latency metrics. Projections never
//! read it; nothing stored as state depends on it.

/// Now in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now as RFC 3339.
pub fn now_rfc3339() -> String {
    tally_topology::time::render_event_time(now_ms())
}
