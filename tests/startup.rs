//! Against a real broker: the processor refuses to start on topics that would break
//! co-partitioning or restore, and says which topic is wrong.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{bootstrap, Processor, Setup};
use tally::kafka::topics::{TopicRole, Topics};
use tally::workload::Flow;

fn exits_with(setup: &Setup, needle: &str) {
    let mut p = Processor::start(setup, "a", &[]);
    let started = Instant::now();
    while !p.exited() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tally kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(
        log.contains(needle),
        "the error should name `{needle}`:\n{log}"
    );
}

#[test]
fn an_output_topic_with_another_partition_count_fails_the_start() {
    let setup = Setup::new("bad-output", Flow::Inventory, 3);
    let topics = Topics::connect(bootstrap(), &BTreeMap::new()).unwrap();
    topics
        .create(&setup.output, 2, 1, TopicRole::Compacted)
        .unwrap();
    exits_with(
        &setup,
        &format!("topic `{}` has 2 partitions", setup.output),
    );
}

#[test]
fn a_changelog_that_is_not_compacted_fails_the_start() {
    let setup = Setup::new("bad-changelog", Flow::Ledger, 2);
    let changelog = format!("{}-ledger-changelog", setup.app);
    let topics = Topics::connect(bootstrap(), &BTreeMap::new()).unwrap();
    topics.create(&changelog, 2, 1, TopicRole::Log).unwrap();
    exits_with(
        &setup,
        &format!("changelog topic `{changelog}` is not compacted"),
    );
}

#[test]
fn a_missing_input_topic_fails_the_start() {
    let setup = Setup::new("no-input", Flow::Inventory, 1);
    let mut other = setup.clone();
    other.input = format!("{}.missing", setup.app);
    exits_with(&other, "does not exist");
}
