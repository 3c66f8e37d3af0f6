//! A partition's previous owner that left the group for good (kill -9, a lost node) may have
//! left a transaction open: it holds back every read_committed reader of the changelog and the
//! outputs (the last stable offset) until the broker times it out. The new owner aborts it at
//! once by initialising the departed instance's transactional id, which also fences it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};

use crate::group::Directory;
use crate::kafka::clients;

/// A fence of one transactional id stands for this long: a takeover right after skips its own.
const FENCED_FOR: Duration = Duration::from_secs(30);

/// Transactional ids fenced (or being fenced) lately, and since when.
static FENCED: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// The previous owner of partitions just taken over.
#[derive(Clone, Debug)]
pub struct Departed {
    /// The instance a stable view last showed owning them.
    pub instance: String,
    pub transactional_id: String,
}

impl Departed {
    /// On a thread of its own, so the restores run meanwhile: fences the previous owner's
    /// transactional id unless it is still a member of `group` (it restarted, or gave the
    /// partitions up in a rebalance and committed first) or was fenced lately.
    pub fn fence_if_gone(
        self,
        directory: Arc<Directory>,
        bootstrap: String,
        passthrough: BTreeMap<String, String>,
    ) {
        if !claim(&self.transactional_id) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("tally-fence".into())
            .spawn(move || {
                if !self.fence(&directory, &bootstrap, &passthrough) {
                    release(&self.transactional_id);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the fence of a departed owner");
        }
    }

    /// `true` when the id was fenced.
    fn fence(
        &self,
        directory: &Directory,
        bootstrap: &str,
        passthrough: &BTreeMap<String, String>,
    ) -> bool {
        let started = Instant::now();
        match directory.describe() {
            Some(view) if view.member(&self.instance).is_none() => {}
            Some(_) => return false,
            None => {
                tracing::debug!("the group could not be described before a fence; no fence");
                return false;
            }
        }
        let described = started.elapsed();
        let mut config =
            clients::producer(bootstrap, passthrough, Some(&self.transactional_id), 60_000);
        // The coordinator answers "concurrent transactions" until the open one is aborted; the
        // default backoff (doubling from 100 ms to 1 s) waited over a second past that.
        config
            .set("retry.backoff.ms", "10")
            .set("retry.backoff.max.ms", "50");
        let fenced = clients::create::<BaseProducer, _>(&config, DefaultProducerContext)
            .and_then(|p| p.init_transactions(Duration::from_secs(10)));
        match fenced {
            Ok(()) => {
                ::metrics::counter!("tally_departed_owners_fenced_total").increment(1);
                tracing::warn!(instance = %self.instance,
                    described_ms = described.as_millis() as u64,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "the previous owner left the group: its open transaction is aborted and its \
                     transactional id fenced");
                true
            }
            Err(e) => {
                tracing::warn!(instance = %self.instance, error = %e,
                    "cannot fence the departed owner's transactional id; its open transaction \
                     times out on the broker");
                false
            }
        }
    }
}

/// Takes the fence of `id` for this instance, unless another took it lately.
fn claim(id: &str) -> bool {
    let mut fenced = FENCED.lock().unwrap_or_else(|p| p.into_inner());
    let fenced = fenced.get_or_insert_with(HashMap::new);
    fenced.retain(|_, at| at.elapsed() < FENCED_FOR);
    if fenced.contains_key(id) {
        return false;
    }
    fenced.insert(id.to_string(), Instant::now());
    true
}

/// Gives a claim back: the id was not fenced.
fn release(id: &str) {
    if let Some(f) = FENCED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        f.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fence_per_departed_owner_at_a_time() {
        assert!(claim("app-gone-1"));
        assert!(!claim("app-gone-1"), "its other partitions skip theirs");
        assert!(claim("app-gone-2"));
        release("app-gone-1");
        assert!(
            claim("app-gone-1"),
            "a fence that did not happen can be tried again"
        );
    }
}
