//! Recovery measures of the end-to-end benchmark: a key-scoped and a whole-flow replay among the
//! loaded events, and failover time after kill -9 of one of two processors.

use std::path::Path;
use std::time::{Duration, Instant};

use tally::config::Config;
use tally::recovery::replay::{self, Plan};
use tally::recovery::scope::Scope;
use tally_topology::Inventory;

use super::support::{assigned, start};

/// (seconds, events processed, trusted) of a dry-run replay of `scope` over the config's flow.
pub fn replay_time(config: &Path, scope: &[&str]) -> (f64, u64, bool) {
    let registry = tally::Registry::builtin();
    let cfg = Config::load(config, &registry).expect("bench config");
    let (mut plan, _) = Plan::for_flow(&cfg, &cfg.flows[0], "replay", &registry).expect("contract");
    plan.scope =
        Scope::parse(&scope.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("scope");
    let started = Instant::now();
    let ev = replay::run::<Inventory>(&plan).expect("replay");
    let secs = started.elapsed().as_secs_f64();
    if !ev.trusted() {
        eprintln!("replay {scope:?} untrusted: {:?}", ev.reasons);
    }
    (secs, ev.events_processed, ev.trusted())
}

/// Starts two processors of one application (their own instance ids and state dirs), waits until
/// they share the partitions, kills one with SIGKILL and returns the seconds until the survivor
/// serves every partition (assigned, restored, ready).
pub fn failover_seconds(
    configs: [&Path; 2],
    ports: [u16; 2],
    partitions: usize,
    work: &Path,
) -> f64 {
    let mut a = start(configs[0], &work.join("failover-a.log"));
    let mut b = start(configs[1], &work.join("failover-b.log"));
    let started = Instant::now();
    loop {
        let (x, y) = (assigned(ports[0]), assigned(ports[1]));
        if let (Some((xa, 0)), Some((ya, 0))) = (x, y) {
            if xa > 0 && ya > 0 && xa + ya == partitions {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "two processors did not share the partitions within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = a.kill();
    let _ = a.wait();
    let killed = Instant::now();
    loop {
        if assigned(ports[1]) == Some((partitions, 0)) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(600),
            "the survivor did not take over within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = killed.elapsed().as_secs_f64();
    super::support::stop_child(&mut b);
    secs
}
