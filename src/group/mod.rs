//! The consumer group as every instance sees it: its members, the partitions each owns and the
//! address each answers HTTP at, read from the broker every second on a thread of its own.

pub mod placement;
pub mod protocol;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

pub use protocol::Advertised;
use tally_topology::Partitioner;

use crate::kafka::clients;

/// How often the group is described.
const REFRESH: Duration = Duration::from_secs(1);
/// A view older than this (the broker did not answer since) is no view.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// One tally member of the group.
#[derive(Debug, Clone)]
pub struct Member {
    pub instance: String,
    pub server: Option<String>,
    /// Input topic -> partitions the group's last assignment gave it.
    pub assigned: BTreeMap<String, Vec<i32>>,
}

/// The group at one moment.
#[derive(Debug)]
pub struct GroupView {
    /// The coordinator's word for it: `Stable` once every member has its assignment.
    pub state: String,
    pub members: Vec<Member>,
    pub read_at: Instant,
}

impl GroupView {
    /// Whether no rebalance is under way.
    pub fn stable(&self) -> bool {
        self.state == "Stable"
    }

    /// The member the assignment gives `topic`'s `partition`.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<&Member> {
        self.members.iter().find(|m| {
            m.assigned
                .get(topic)
                .is_some_and(|ps| ps.contains(&partition))
        })
    }

    /// The member named `instance`.
    pub fn member(&self, instance: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.instance == instance)
    }

    /// The members that keep a standby of the partition (see [`placement`]); none without an owner.
    pub fn standbys(&self, topic: &str, partition: i32, replicas: usize) -> Vec<&Member> {
        let Some(owner) = self.owner(topic, partition) else {
            return Vec::new();
        };
        let names: Vec<&str> = self.members.iter().map(|m| m.instance.as_str()).collect();
        placement::standbys(&names, &owner.instance, partition, replicas)
            .into_iter()
            .filter_map(|name| self.member(name))
            .collect()
    }

    fn read(group: &rdkafka::groups::GroupInfo) -> Self {
        let mut members: Vec<Member> = group
            .members()
            .iter()
            .filter_map(|m| {
                let who = Advertised::parse(m.client_id())?;
                let assigned = match m.assignment().map(protocol::parse_assignment) {
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        tracing::debug!(instance = %who.instance, error = %e, "member assignment");
                        BTreeMap::new()
                    }
                    None => BTreeMap::new(),
                };
                Some(Member {
                    instance: who.instance,
                    server: who.server,
                    assigned,
                })
            })
            .collect();
        members.sort_by(|a, b| a.instance.cmp(&b.instance));
        Self {
            state: group.state().to_string(),
            members,
            read_at: Instant::now(),
        }
    }
}

/// Where a flow's keys live: its input and how producers spread keys over it.
#[derive(Debug, Clone)]
pub struct Located {
    pub input: String,
    pub partitions: i32,
    pub partitioner: Partitioner,
}

/// This instance's identity and its latest view of the group, shared by the engine (standby
/// placement) and the HTTP queries (who owns a key).
pub struct Directory {
    me: Advertised,
    replicas: usize,
    view: RwLock<Option<Arc<GroupView>>>,
    flows: RwLock<HashMap<String, Located>>,
    stop: AtomicBool,
}

impl Directory {
    /// A directory for `me`, placing `replicas` standbys per partition; no view until started.
    pub fn new(me: Advertised, replicas: usize) -> Arc<Self> {
        Arc::new(Self {
            me,
            replicas,
            view: RwLock::new(None),
            flows: RwLock::new(HashMap::new()),
            stop: AtomicBool::new(false),
        })
    }

    /// Who this instance is in the group.
    pub fn me(&self) -> &Advertised {
        &self.me
    }

    /// Records each flow's input once the engine resolved it.
    pub fn set_flows(&self, flows: impl IntoIterator<Item = (String, Located)>) {
        let mut map = self.flows.write().unwrap_or_else(|p| p.into_inner());
        map.extend(flows);
    }

    /// The input topic and partition `key` of `flow` is in; none for an unknown flow (or
    /// before the engine resolved it).
    pub fn locate(&self, flow: &str, key: &str) -> Option<(String, i32)> {
        let map = self.flows.read().unwrap_or_else(|p| p.into_inner());
        let f = map.get(flow)?;
        if f.partitions <= 0 || key.is_empty() {
            return None;
        }
        Some((f.input.clone(), f.partitioner.partition(key.as_bytes(), f.partitions)))
    }

    /// Standby replicas per partition.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The latest view, unless the broker has not answered for a while.
    pub fn view(&self) -> Option<Arc<GroupView>> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        (view.read_at.elapsed() < STALE_AFTER).then_some(view)
    }

    /// Describes the group every second on a thread of its own until [`Directory::stop`].
    pub fn start(
        self: &Arc<Self>,
        bootstrap: String,
        passthrough: BTreeMap<String, String>,
        group: String,
    ) -> std::io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("tally-group".into())
            .spawn(move || me.watch(&bootstrap, &passthrough, &group))
            .map(|_| ())
    }

    /// Ends the thread at its next turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn watch(&self, bootstrap: &str, passthrough: &BTreeMap<String, String>, group: &str) {
        let client = match clients::quiet_reader(bootstrap, passthrough, group) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the group's describer; queries answer locally only");
                return;
            }
        };
        let mut seen: BTreeSet<String> = BTreeSet::new();
        while !self.stop.load(Ordering::Acquire) {
            match client.fetch_group_list(Some(group), Duration::from_secs(5)) {
                Ok(list) => {
                    if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
                        let view = GroupView::read(g);
                        let names: BTreeSet<String> =
                            view.members.iter().map(|m| m.instance.clone()).collect();
                        if names != seen {
                            tracing::info!(members = ?names, state = %view.state, "group membership");
                            seen = names;
                        }
                        ::metrics::gauge!("tally_group_members").set(view.members.len() as f64);
                        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(view));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "describing the group failed; retrying"),
            }
            std::thread::sleep(REFRESH);
        }
    }
}
