//! The availability output record: JSON with a fixed field order, written without a DOM.
//! Pieces are appended by [`crate::json`]; nothing is formatted through `fmt`.

use super::{Availability, Buckets};
use crate::error::Invalid;
use crate::json::{int, provenance, raw, string};

/// Renders `{"sku":..,"stock_on_hand":..,...}` into `out` (cleared first).
pub(crate) fn availability(s: &Availability, out: &mut Vec<u8>) -> Result<(), Invalid> {
    out.clear();
    let (t, on_hand) = s
        .totals()
        .ok_or_else(|| Invalid::overflow("stock_on_hand"))?;
    raw(out, "{\"sku\":");
    string(out, &s.sku);
    raw(out, ",\"stock_on_hand\":");
    int(out, on_hand);
    out.push(b',');
    buckets(out, &t);
    raw(out, ",\"locations\":{");
    for (i, (loc, b)) in s.locations.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, loc);
        raw(out, ":{");
        buckets(out, b);
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

/// `"sellable":..,"damaged":..,"return_to_vendor":..`
fn buckets(out: &mut Vec<u8>, b: &Buckets) {
    raw(out, "\"sellable\":");
    int(out, b.sellable);
    raw(out, ",\"damaged\":");
    int(out, b.damaged);
    raw(out, ",\"return_to_vendor\":");
    int(out, b.return_to_vendor);
}
