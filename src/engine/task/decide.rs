//! The dedupe decision of one decoded event, from what the index remembers of its id: fold it,
//! skip it as a redelivery, dead-letter it as a conflict, or fold again the very record whose
//! state a crash lost. Pure, so every case is tested without a broker.

use tally_state::DedupeEntry;

/// What the index says of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// An id not applied (or no longer remembered): fold it.
    New,
    /// The same id and content from another record: skip it.
    Redelivery,
    /// The same id with other content: dead-letter it (`duplicate_conflict`).
    Conflict,
    /// The very record the entry names (same offset), seen again after a crash: whether it was
    /// applied depends on its key's state ([`lost_in_crash`]).
    SameRecord,
}

/// The verdict on an event of `fingerprint` at `offset`, given the entry of its id, if any.
pub(super) fn classify(seen: Option<&DedupeEntry>, fingerprint: u64, offset: i64) -> Verdict {
    match seen {
        None => Verdict::New,
        Some(e) if e.fingerprint != fingerprint => Verdict::Conflict,
        Some(e) if e.offset == offset => Verdict::SameRecord,
        Some(_) => Verdict::Redelivery,
    }
}

/// Whether the very record at `offset`, whose dedupe entry landed, is missing from its key's
/// state (whose last event came from `state_source`, if the key has a state): entries are sent
/// before states, so a crash can land the entry alone, and then the event is folded again.
pub(super) fn lost_in_crash(state_source: Option<i64>, offset: i64) -> bool {
    state_source.is_none_or(|s| s < offset)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    fn entry(fingerprint: u64, offset: i64) -> DedupeEntry {
        DedupeEntry {
            fingerprint,
            event_time_ms: 0,
            offset,
        }
    }

    #[rstest]
    #[case::unseen(None, 7, 10, Verdict::New)]
    #[case::redelivered_elsewhere(Some(entry(7, 3)), 7, 10, Verdict::Redelivery)]
    #[case::other_content(Some(entry(8, 3)), 7, 10, Verdict::Conflict)]
    #[case::other_content_same_offset(Some(entry(8, 10)), 7, 10, Verdict::Conflict)]
    #[case::the_same_record_again(Some(entry(7, 10)), 7, 10, Verdict::SameRecord)]
    fn an_event_is_classified_by_its_entry(
        #[case] seen: Option<DedupeEntry>,
        #[case] fingerprint: u64,
        #[case] offset: i64,
        #[case] verdict: Verdict,
    ) {
        assert_eq!(classify(seen.as_ref(), fingerprint, offset), verdict);
    }

    #[rstest]
    #[case::no_state_yet(None, 10, true)]
    #[case::state_before_the_record(Some(9), 10, true)]
    #[case::state_holds_the_record(Some(10), 10, false)]
    #[case::state_past_the_record(Some(12), 10, false)]
    fn the_same_record_is_folded_again_only_if_its_state_lacks_it(
        #[case] state_source: Option<i64>,
        #[case] offset: i64,
        #[case] lost: bool,
    ) {
        assert_eq!(lost_in_crash(state_source, offset), lost);
    }

    proptest! {
        /// A partition's stream of (id, content) records, with redeliveries and reused ids in any
        /// order: each id is applied once, with its first content; every later record of it is a
        /// redelivery (same content) or a conflict (other content), never applied.
        #[test]
        fn each_id_applies_once_with_its_first_content(
            stream in prop::collection::vec((0u8..20, 0u8..3), 1..300)
        ) {
            let mut index: HashMap<u8, DedupeEntry> = HashMap::new();
            let mut first: HashMap<u8, u8> = HashMap::new();
            let mut applied: Vec<u8> = Vec::new();
            for (offset, (id, content)) in stream.iter().enumerate() {
                let offset = offset as i64;
                let fp = u64::from(*content);
                match classify(index.get(id), fp, offset) {
                    Verdict::New => {
                        index.insert(*id, entry(fp, offset));
                        first.insert(*id, *content);
                        applied.push(*id);
                    }
                    Verdict::Redelivery => prop_assert_eq!(first[id], *content),
                    Verdict::Conflict => prop_assert_ne!(first[id], *content),
                    Verdict::SameRecord => prop_assert!(false, "offsets never repeat here"),
                }
            }
            let mut distinct = applied.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), applied.len(), "an id applied twice");
            prop_assert_eq!(applied.len(), first.len());
        }
    }
}
