//! The inventory flow: movement events per SKU folded into stock availability per location.
//! Buckets are sellable, damaged and return_to_vendor; stock_on_hand is all of them everywhere.

mod event;
mod render;
#[cfg(test)]
mod tests;

pub use event::{Bucket, InventoryEvent, Operation};

use crate::codec::{self, Fingerprint};
use crate::error::Invalid;
use crate::projection::{Guard, Projection, SourceRef, StateDecodeError};
use crate::small_map::SmallMap;

/// Quantities of the three buckets at one location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub struct Buckets {
    pub sellable: i64,
    pub damaged: i64,
    pub return_to_vendor: i64,
}

impl Buckets {
    fn slot(&mut self, b: Bucket) -> &mut i64 {
        match b {
            Bucket::Sellable => &mut self.sellable,
            Bucket::Damaged => &mut self.damaged,
            Bucket::ReturnToVendor => &mut self.return_to_vendor,
        }
    }

    /// Sum of the buckets, checked.
    pub fn total(&self) -> Option<i64> {
        self.sellable
            .checked_add(self.damaged)?
            .checked_add(self.return_to_vendor)
    }
}

/// Availability of one SKU: the materialized state of the inventory flow.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Availability {
    pub sku: String,
    pub locations: SmallMap<Buckets>,
    pub events_applied: u64,
    pub last_event_id: String,
    pub last_event_time_ms: i64,
    pub source: SourceRef,
}

impl Availability {
    /// Bucket totals over all locations, and stock on hand; `None` when a sum overflows.
    pub fn totals(&self) -> Option<(Buckets, i64)> {
        let mut t = Buckets::default();
        for b in self.locations.values() {
            t.sellable = t.sellable.checked_add(b.sellable)?;
            t.damaged = t.damaged.checked_add(b.damaged)?;
            t.return_to_vendor = t.return_to_vendor.checked_add(b.return_to_vendor)?;
        }
        let on_hand = t.total()?;
        Some((t, on_hand))
    }
}

/// The inventory projection.
pub struct Inventory;

impl Projection for Inventory {
    type Event = InventoryEvent;
    type State = Availability;
    const NAME: &'static str = "inventory";
    const KEY_FIELD: &'static str = "sku";
    const CONTRACT: &'static str = include_str!("../../contracts/inventory.toml");
    const STATE_VERSION: u8 = 1;

    fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<InventoryEvent, Invalid> {
        event::decode(key, value)
    }

    fn event_id(ev: &InventoryEvent) -> &str {
        &ev.event_id
    }

    fn aggregate_key(ev: &InventoryEvent) -> &str {
        &ev.sku
    }

    fn event_time_ms(ev: &InventoryEvent) -> i64 {
        ev.event_time_ms
    }

    fn fingerprint(ev: &InventoryEvent) -> u64 {
        Fingerprint::new("inventory")
            .str(&ev.event_id)
            // Versions upcast to one content: a v1 and a v2 record of the same event agree.
            .int(1)
            .str(&ev.sku)
            .str(&ev.seller_id)
            .str(&ev.location_id)
            .str(ev.bucket.as_str())
            .str(ev.operation.as_str())
            .opt(ev.to_bucket.map(|b| b.as_str()))
            .int(ev.quantity)
            .int(ev.event_time_ms)
            .finish()
    }

    fn initial(ev: &InventoryEvent, source: SourceRef) -> Availability {
        Availability {
            sku: ev.sku.clone(),
            locations: SmallMap::new(),
            events_applied: 0,
            last_event_id: String::new(),
            last_event_time_ms: 0,
            source,
        }
    }

    fn apply_in_place(
        s: &mut Availability,
        ev: &InventoryEvent,
        source: SourceRef,
        guard: &Guard,
    ) -> Result<(), Invalid> {
        let events_applied = s
            .events_applied
            .checked_add(1)
            .ok_or_else(|| Invalid::overflow("events_applied"))?;
        let before = s.locations.get(ev.location_id.as_str()).copied();
        let mut at = before.unwrap_or_default();
        let q = ev.quantity;
        match ev.operation {
            Operation::Adjust => {
                let slot = at.slot(ev.bucket);
                *slot = slot
                    .checked_add(q)
                    .ok_or_else(|| Invalid::overflow("adjust"))?;
            }
            Operation::Set => *at.slot(ev.bucket) = q,
            Operation::Move => {
                let to = ev.to_bucket.unwrap_or(ev.bucket);
                let from = at.slot(ev.bucket);
                *from = from
                    .checked_sub(q)
                    .ok_or_else(|| Invalid::overflow("move"))?;
                let dest = at.slot(to);
                *dest = dest
                    .checked_add(q)
                    .ok_or_else(|| Invalid::overflow("move"))?;
            }
        }
        let was = before.unwrap_or_default().sellable;
        guard.refuse_if("sellable_non_negative", was >= 0, at.sellable >= 0, || {
            format!("sellable {} at {}", at.sellable, ev.location_id)
        })?;
        match s.locations.get_mut(ev.location_id.as_str()) {
            Some(slot) => *slot = at,
            None => {
                s.locations.insert(ev.location_id.clone(), at);
            }
        }
        if s.totals().is_none() {
            // Undone, so the caller's state is what it was.
            match before {
                Some(b) => {
                    s.locations.insert(ev.location_id.clone(), b);
                }
                None => {
                    s.locations.remove(ev.location_id.as_str());
                }
            }
            return Err(Invalid::overflow("stock_on_hand"));
        }
        s.events_applied = events_applied;
        s.last_event_id.clone_from(&ev.event_id);
        s.last_event_time_ms = ev.event_time_ms;
        s.source = source;
        Ok(())
    }

    fn render(state: &Availability, out: &mut Vec<u8>) -> Result<(), Invalid> {
        render::availability(state, out)
    }

    fn encode_state(state: &Availability, out: &mut Vec<u8>) {
        codec::encode(Self::STATE_VERSION, state, out);
    }

    fn decode_state(bytes: &[u8]) -> Result<Availability, StateDecodeError> {
        codec::decode("inventory", Self::STATE_VERSION, bytes)
    }

    fn state_key(state: &Availability) -> &str {
        &state.sku
    }

    fn state_bytes(state: &Availability) -> usize {
        std::mem::size_of::<Availability>()
            + state.sku.capacity()
            + state.last_event_id.capacity()
            + state.locations.heap_bytes()
    }

    fn source(state: &Availability) -> SourceRef {
        state.source
    }

    fn last_event_time_ms(state: &Availability) -> i64 {
        state.last_event_time_ms
    }

    fn schema_version(ev: &InventoryEvent) -> u32 {
        ev.schema_version
    }

    const SCHEMA_VERSIONS: &'static [u32] = &[1, 2];

    const INVARIANTS: &'static [&'static str] = &[
        "stock_on_hand_equals_sum_of_buckets",
        "sellable_non_negative",
    ];

    fn invariant(name: &str, state: &Availability, _guard: &Guard) -> Result<(), String> {
        match name {
            "stock_on_hand_equals_sum_of_buckets" => state
                .totals()
                .map(|_| ())
                .ok_or_else(|| "stock on hand overflows i64".to_string()),
            "sellable_non_negative" => match state.locations.iter().find(|(_, b)| b.sellable < 0) {
                Some((loc, b)) => Err(format!("sellable is {} at {loc}", b.sellable)),
                None => Ok(()),
            },
            other => Err(format!("`{other}` is not an inventory check")),
        }
    }
}
