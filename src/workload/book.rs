//! The generator's running book of what its valid events did to each key, so that it only draws
//! movements and postings a real system could emit: no stock or balance below zero.

use std::collections::HashMap;

use super::events::Event;

/// Per-key counts the generated valid events have built up, in log order.
#[derive(Default)]
pub(super) struct Book {
    /// (sku, location) -> units per bucket.
    stock: HashMap<(u64, u8), [i64; 3]>,
    /// (account, currency) -> (available, reserved).
    money: HashMap<(u64, usize), (i64, i64)>,
}

impl Book {
    /// Turns a drawn event that would take a count below zero into a receipt or deposit of the
    /// same size, then books it.
    pub(super) fn settle(&mut self, ev: &mut Event) {
        match ev {
            Event::Inventory {
                key,
                location,
                bucket,
                op,
                to,
                q,
                ..
            } => {
                let counts = self.stock.entry((*key, *location)).or_default();
                let have = counts[*bucket];
                match *op {
                    "adjust" if have + *q < 0 => *q = -*q,
                    "move" if have < *q => {
                        *op = "adjust";
                        *to = None;
                    }
                    _ => {}
                }
                match (*op, *to) {
                    ("set", _) => counts[*bucket] = *q,
                    ("move", Some(dest)) => {
                        counts[*bucket] -= *q;
                        counts[dest] += *q;
                    }
                    _ => counts[*bucket] += *q,
                }
            }
            Event::Ledger {
                key,
                kind,
                amount,
                currency,
                ..
            } => {
                let (available, reserved) = self.money.entry((*key, *currency)).or_default();
                let short = match *kind {
                    1 | 2 => *available < *amount,
                    3 | 4 => *reserved < *amount,
                    _ => false,
                };
                if short {
                    *kind = 0;
                }
                let a = *amount;
                match *kind {
                    0 => *available += a,
                    1 => *available -= a,
                    2 => {
                        *available -= a;
                        *reserved += a;
                    }
                    3 => {
                        *reserved -= a;
                        *available += a;
                    }
                    _ => *reserved -= a,
                }
            }
        }
    }
}
