//! Fault loops of the proof suite: a paced background load, a fleet of processors restarted in
//! place, and the kill schedule that mixes kill -9 with in-commit fault hooks.

use std::time::{Duration, Instant};

use tally::workload::LoadReport;

use super::proof::{size, verdict_with};
use super::{Processor, Setup};

/// How long a scenario waits for the group to catch up.
const LIMIT: Duration = Duration::from_secs(300);

/// A background load paced at `rate` records/s.
pub fn paced(
    setup: &Setup,
    events: u64,
    keys: u64,
    mix: (f64, f64, f64),
    seed: u64,
    rate: u64,
) -> std::thread::JoinHandle<LoadReport> {
    let setup = setup.clone();
    std::thread::spawn(move || setup.load_at(events, keys, mix.0, mix.1, mix.2, seed, rate))
}

/// Processors by instance name, restarted in place; each remembers whether it runs a fault hook.
pub struct Fleet<'a> {
    setup: &'a Setup,
    procs: Vec<(String, Option<Processor>, bool)>,
    /// Settings every processor of the fleet starts with (`TALLY_*`).
    env: Vec<(&'a str, &'a str)>,
}

impl<'a> Fleet<'a> {
    pub fn start(setup: &'a Setup, names: &[&str]) -> Self {
        Self::start_with(setup, names, &[])
    }

    /// [`Fleet::start`] with settings every start of every processor gets.
    pub fn start_with(setup: &'a Setup, names: &[&str], env: &[(&'a str, &'a str)]) -> Self {
        let procs = names
            .iter()
            .map(|n| (n.to_string(), Some(Processor::start(setup, n, env)), false))
            .collect();
        Self {
            setup,
            procs,
            env: env.to_vec(),
        }
    }

    /// kill -9 of processor `i`, then a restart with the same instance id (and `hook`).
    pub fn kill_and_restart(&mut self, i: usize, hook: &[(&str, &str)]) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .copied()
            .chain(hook.iter().copied())
            .collect();
        let (name, p, hooked) = &mut self.procs[i];
        if let Some(p) = p.take() {
            p.kill9();
        }
        *p = Some(Processor::start(self.setup, name, &env));
        *hooked = !hook.is_empty();
    }

    /// The running processors.
    pub fn running(&self) -> impl Iterator<Item = &Processor> {
        self.procs.iter().filter_map(|(_, p, _)| p.as_ref())
    }

    /// Waits until hooked processor `i` died by its hook (1) or `limit` passed (0), then restarts
    /// it without the hook.
    pub fn wait_for_hook(&mut self, i: usize, limit: Duration) -> u64 {
        let started = Instant::now();
        let fired = loop {
            if self.procs[i].1.as_mut().is_some_and(Processor::exited) {
                break 1;
            }
            if started.elapsed() > limit {
                break 0;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.kill_and_restart(i, &[]);
        fired
    }

    /// Ends every fault: a processor that exited or still runs a hook restarts plainly.
    pub fn heal(&mut self) {
        for (name, p, hooked) in &mut self.procs {
            let exited = p.as_mut().is_some_and(Processor::exited);
            if exited || *hooked {
                if let Some(p) = p.take() {
                    p.kill9();
                }
                *p = Some(Processor::start(self.setup, name, &self.env));
                *hooked = false;
            }
        }
    }

    pub fn terminate(self) {
        for (_, p, _) in self.procs {
            if let Some(p) = p {
                p.terminate();
            }
        }
    }
}

/// Kills processors round-robin every `every` while the load runs; every third fault is instead
/// a fault hook that kills the processor inside a commit (e.g. between sending the offsets and
/// committing), waited for until it fired; successive hooks take turns through `hooks`.
/// Returns the faults as reported.
pub fn kill_loop(
    setup: &Setup,
    names: &[&str],
    kills: u64,
    every: Duration,
    hooks: &[&str],
    load: std::thread::JoinHandle<LoadReport>,
) -> (String, u64, LoadReport) {
    let mut fleet = Fleet::start(setup, names);
    let (mut plain, mut hooked, mut fired) = (0, 0, 0);
    for k in 0..kills {
        std::thread::sleep(every);
        let i = (k as usize) % names.len();
        if k % 3 == 2 {
            let hook = hooks[hooked as usize % hooks.len()];
            fleet.kill_and_restart(i, &[("TALLY_FAULT", hook)]);
            hooked += 1;
            fired += fleet.wait_for_hook(i, Duration::from_secs(60));
        } else {
            fleet.kill_and_restart(i, &[]);
        }
        plain += 1;
    }
    let sent = load.join().unwrap();
    fleet.heal();
    setup.wait_caught_up(LIMIT);
    fleet.terminate();
    let faults = format!("{}({fired} in-commit)", plain + fired);
    (faults, hooked - fired, sent)
}

/// Kills processors under a paced ledger load of `keys` accounts, every third kill at one of
/// `hooks`, and judges the result.
pub fn kill_scenario(scenario: &str, setup: &Setup, keys: u64, seed: u64, hooks: &[&str]) {
    let load = paced(
        setup,
        size(30_000, 1_000_000),
        keys,
        (0.05, 0.01, 0.001),
        seed,
        // The load must outlast the kill schedule (20 kills 2.4 s apart, plus the wait for each
        // in-commit hook to fire): a hooked processor with no input never commits. The reduced
        // size's 5 kills 1.8 s apart once outlasted a 10 s load (3,000 events/s), and once, on a
        // loaded host, a 15 s load (2,000 events/s): its hooked processor got its partitions
        // after the last event, and the hook never fired. 20 s now.
        size(1_500, 10_000),
    );
    let (faults, missed, _) = kill_loop(
        setup,
        &["a", "b", "c"],
        size(5, 20),
        Duration::from_millis(size(1_800, 2_400)),
        hooks,
        load,
    );
    verdict_with(
        scenario,
        faults,
        &setup.oracle(),
        &[("every in-commit hook fired", missed == 0)],
    );
}
