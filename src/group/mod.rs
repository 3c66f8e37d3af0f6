//! The consumer group as every instance sees it: its members, the partitions each owns and the
//! address each answers HTTP at, read from the broker every second on a thread of its own.

pub mod placement;
pub mod protocol;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

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
    /// (topic, partition) -> the members stable views showed owning it: (now, before).
    owners: RwLock<HashMap<(String, i32), (String, Option<String>)>>,
    /// The client that describes the group, and the group, once started.
    describer: Mutex<Option<Describer>>,
    stop: AtomicBool,
}

/// A kept client (its connection to the coordinator stays warm) and what it has seen.
struct Describer {
    client: BaseConsumer<clients::Quiet>,
    group: String,
    seen: BTreeSet<String>,
}

impl Directory {
    /// A directory for `me`, placing `replicas` standbys per partition; no view until started.
    pub fn new(me: Advertised, replicas: usize) -> Arc<Self> {
        Arc::new(Self {
            me,
            replicas,
            view: RwLock::new(None),
            flows: RwLock::new(HashMap::new()),
            owners: RwLock::new(HashMap::new()),
            describer: Mutex::new(None),
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
        Some((
            f.input.clone(),
            f.partitioner.partition(key.as_bytes(), f.partitions),
        ))
    }

    /// The other instance that owned `topic`'s `partition` before this one, as stable views
    /// showed it (the owner now, when that is not this instance).
    pub fn previous_owner(&self, topic: &str, partition: i32) -> Option<String> {
        let owners = self.owners.read().unwrap_or_else(|p| p.into_inner());
        let (now, before) = owners.get(&(topic.to_string(), partition))?;
        if *now == self.me.instance {
            before.clone()
        } else {
            Some(now.clone())
        }
    }

    /// Standby replicas per partition.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The latest view, unless the broker has not answered for a while.
    pub fn view(&self) -> Option<Arc<GroupView>> {
        let view = self
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        (view.read_at.elapsed() < STALE_AFTER).then_some(view)
    }

    /// Describes the group every second on a thread of its own until [`Directory::stop`].
    pub fn start(
        self: &Arc<Self>,
        bootstrap: String,
        passthrough: BTreeMap<String, String>,
        group: String,
    ) -> std::io::Result<()> {
        match clients::quiet_reader(&bootstrap, &passthrough, &group) {
            Ok(client) => {
                *self.describer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Describer {
                    client,
                    group,
                    seen: BTreeSet::new(),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create the group's describer; queries answer locally only");
                return Ok(());
            }
        }
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("tally-group".into())
            .spawn(move || {
                while !me.stop.load(Ordering::Acquire) {
                    me.describe();
                    std::thread::sleep(REFRESH);
                }
            })
            .map(|_| ())
    }

    /// Ends the thread at its next turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Describes the group now (DescribeGroups), keeps the answer as the latest view and returns
    /// it; none when the broker does not answer or nothing was started.
    pub fn describe(&self) -> Option<Arc<GroupView>> {
        let mut guard = self.describer.lock().unwrap_or_else(|p| p.into_inner());
        let d = guard.as_mut()?;
        let list = match d
            .client
            .fetch_group_list(Some(&d.group), Duration::from_secs(5))
        {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "describing the group failed; retrying");
                return None;
            }
        };
        let group = list.groups().iter().find(|g| g.name() == d.group)?;
        let view = Arc::new(GroupView::read(group));
        let names: BTreeSet<String> = view.members.iter().map(|m| m.instance.clone()).collect();
        if names != d.seen {
            tracing::info!(members = ?names, state = %view.state, "group membership");
            d.seen = names;
        }
        ::metrics::gauge!("tally_group_members").set(view.members.len() as f64);
        if view.stable() {
            self.remember_owners(&view);
        }
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&view));
        Some(view)
    }

    fn remember_owners(&self, view: &GroupView) {
        let mut owners = self.owners.write().unwrap_or_else(|p| p.into_inner());
        for m in &view.members {
            for (topic, partitions) in &m.assigned {
                for p in partitions {
                    let entry = owners
                        .entry((topic.clone(), *p))
                        .or_insert_with(|| (m.instance.clone(), None));
                    if entry.0 != m.instance {
                        let before = std::mem::replace(&mut entry.0, m.instance.clone());
                        entry.1 = Some(before);
                    }
                }
            }
        }
    }
}
