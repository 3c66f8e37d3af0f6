//! The availability output record: JSON with a fixed field order, written without a DOM.
//! Strings go through serde_json's escaper; numbers are written directly.

use std::io::Write;

use super::Availability;
use crate::error::Invalid;
use crate::time::render_event_time;

fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Renders `{"sku":..,"stock_on_hand":..,...}` into `out` (cleared first).
pub(crate) fn availability(s: &Availability, out: &mut Vec<u8>) -> Result<(), Invalid> {
    out.clear();
    let (t, on_hand) = s
        .totals()
        .ok_or_else(|| Invalid::overflow("stock_on_hand"))?;
    out.extend_from_slice(b"{\"sku\":");
    string(out, &s.sku);
    let _ = write!(
        out,
        ",\"stock_on_hand\":{on_hand},\"sellable\":{},\"damaged\":{},\"return_to_vendor\":{},\"locations\":{{",
        t.sellable, t.damaged, t.return_to_vendor
    );
    for (i, (loc, b)) in s.locations.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, loc);
        let _ = write!(
            out,
            ":{{\"sellable\":{},\"damaged\":{},\"return_to_vendor\":{}}}",
            b.sellable, b.damaged, b.return_to_vendor
        );
    }
    let _ = write!(
        out,
        "}},\"events_applied\":{},\"last_event_id\":",
        s.events_applied
    );
    string(out, &s.last_event_id);
    out.extend_from_slice(b",\"last_event_time\":");
    string(out, &render_event_time(s.last_event_time_ms));
    let _ = write!(
        out,
        ",\"source\":{{\"partition\":{},\"offset\":{}}}}}",
        s.source.partition, s.source.offset
    );
    Ok(())
}
