//! Where standby replicas live: decided by every instance alike from the group's membership,
//! so no one has to hand out standbys (librdkafka's cooperative-sticky assignor carries none).

/// The instances, other than `owner`, that keep a standby of `partition`: `replicas` of the
/// members (sorted by name) after the owner's place, the start shifted by the partition so one
/// owner's partitions spread their standbys over every other member.
pub fn standbys<'a>(
    members: &[&'a str],
    owner: &str,
    partition: i32,
    replicas: usize,
) -> Vec<&'a str> {
    let mut others: Vec<&str> = members.iter().copied().filter(|m| *m != owner).collect();
    others.sort_unstable();
    others.dedup();
    if others.is_empty() || replicas == 0 {
        return Vec::new();
    }
    let start = partition.unsigned_abs() as usize % others.len();
    (0..replicas.min(others.len()))
        .map(|i| others[(start + i) % others.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::two_instances(&["a", "b"], "a", 1, &["b"])]
    #[case::the_owner_is_never_its_own_standby(&["a", "b"], "b", 1, &["a"])]
    #[case::alone(&["a"], "a", 1, &[])]
    #[case::none_asked(&["a", "b", "c"], "a", 0, &[])]
    #[case::more_asked_than_members(&["a", "b", "c"], "a", 5, &["c", "b"])]
    fn standbys_are_other_members(
        #[case] members: &[&str],
        #[case] owner: &str,
        #[case] replicas: usize,
        #[case] expected: &[&str],
    ) {
        assert_eq!(standbys(members, owner, 3, replicas), expected);
    }

    #[test]
    fn one_owners_partitions_spread_their_standbys_over_the_others() {
        let members = ["a", "b", "c", "d"];
        let holders: BTreeSet<_> = (0..12)
            .flat_map(|p| standbys(&members, "a", p, 1))
            .collect();
        assert_eq!(holders, BTreeSet::from(["b", "c", "d"]));
    }

    proptest! {
        /// Every instance computes the same placement whatever order it lists the members in.
        #[test]
        fn placement_does_not_depend_on_the_members_order(
            names in proptest::collection::btree_set("[a-e]{1,2}", 1..6),
            partition in 0i32..64,
            replicas in 0usize..4,
            seed in any::<u64>(),
        ) {
            let sorted: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut shuffled = sorted.clone();
            let n = shuffled.len();
            shuffled.rotate_left((seed as usize) % n);
            let owner = sorted[(seed as usize / 7) % n];
            prop_assert_eq!(
                standbys(&sorted, owner, partition, replicas),
                standbys(&shuffled, owner, partition, replicas)
            );
            let placed = standbys(&sorted, owner, partition, replicas);
            prop_assert_eq!(placed.len(), replicas.min(n - 1));
            prop_assert!(!placed.contains(&owner));
            let distinct: BTreeMap<_, _> = placed.iter().map(|m| (*m, ())).collect();
            prop_assert_eq!(distinct.len(), placed.len());
        }
    }
}
