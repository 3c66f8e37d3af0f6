//! A task's way out: staged records go to the producer as they are processed (inside the open
//! transaction), and once Kafka committed them, to the store writer as one batch.

use std::sync::Arc;

use tally_state::{ChangelogKey, Checkpoint, RecordKind};
use tally_topology::Projection;

use super::batches::{Inflight, Sealed, MAX_INFLIGHT};
use super::outbox::Outbox;
use super::{ProduceError, Task, TaskError};
use crate::metrics;

/// Most dedupe entries examined for expiry per commit and task.
const EXPIRY_SCAN_MAX: usize = 4_096;
/// Fewest examined, so an idle index is still swept.
const EXPIRY_SCAN_MIN: usize = 64;

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// Sends new dedupe entries, changed states (changelog and output) and dead letters staged
    /// since the last call, and stages the same changes for the store.
    ///
    /// Entries go first: under at_least_once a crash can land a prefix of the changelog, and an
    /// entry whose state is missing is detectable (the state's source offset is older than the
    /// entry's), while a state whose entry is missing is not.
    pub(super) fn ship_staged(&mut self, out: &mut dyn Outbox) -> Result<(), ProduceError> {
        let flow = Arc::clone(&self.flow);
        let p = self.partition;
        let fresh = self.staging.dedupe_shipped..self.staging.dedupe.len();
        self.scratch.bundle.clear();
        let mut reship = std::mem::take(&mut self.staging.dedupe_reship);
        for i in reship.drain(..).chain(fresh) {
            let Some((id, entry)) = self.staging.dedupe.get_index(i) else {
                continue;
            };
            self.scratch
                .bundle
                .push(id.as_bytes(), entry)
                .map_err(|e| self.store_err(e))?;
            self.staging.batch.put_dedupe(id.as_bytes(), *entry);
            if self.scratch.bundle.is_full() {
                self.send_bundle(out)?;
            }
        }
        self.staging.dedupe_reship = reship;
        self.staging.dedupe_shipped = self.staging.dedupe.len();
        if !self.scratch.bundle.is_empty() {
            self.send_bundle(out)?;
        }
        if !self.staging.dirty.is_empty() {
            crate::engine::faults::hit_after("between_dedupe_and_states", || {
                let _ = out.flush();
            });
            // Outputs and states are separate partitions: a crash can land an output, not its
            // state. This lands the round's outputs alone before dying.
            crate::engine::faults::hit_after("outputs_before_states", || {
                for &i in &self.staging.dirty {
                    if let Some((key, slot)) = self.staging.states.get_index(i) {
                        if P::render(&slot.state, &mut self.scratch.buf).is_ok() {
                            let _ = out.put(
                                &flow.output,
                                p,
                                Some(key.as_bytes()),
                                Some(&self.scratch.buf),
                            );
                        }
                    }
                }
                let _ = out.flush();
            });
        }
        for i in self.staging.dirty.drain(..) {
            let Some((key, slot)) = self.staging.states.get_index_mut(i) else {
                continue;
            };
            slot.dirty = false;
            P::encode_state(&slot.state, &mut self.scratch.buf);
            ChangelogKey::encode_into(RecordKind::State, key.as_bytes(), &mut self.scratch.key);
            out.put(
                &flow.changelog,
                p,
                Some(&self.scratch.key),
                Some(&self.scratch.buf),
            )?;
            self.staging
                .batch
                .put_state(key.as_bytes(), &self.scratch.buf);
            self.staging.wrote_changelog = true;
            // A key held after a crash sends its output once the redelivery is over.
            if self.reemits.holds(key) {
                continue;
            }
            P::render(&slot.state, &mut self.scratch.buf).map_err(|e| TaskError::State {
                flow: flow.name.clone(),
                partition: p,
                key: key.clone(),
                message: e.to_string(),
            })?;
            out.put(
                &flow.output,
                p,
                Some(key.as_bytes()),
                Some(&self.scratch.buf),
            )?;
        }
        for d in &self.staging.dead[self.staging.dead_shipped..] {
            d.ship(&flow.dead_letter, &flow.input, p, out)?;
        }
        self.staging.dead_shipped = self.staging.dead.len();
        for a in &self.staging.audits[self.staging.audits_shipped..] {
            // An audit record is small plain data; it always serializes.
            let body = serde_json::to_vec(a).unwrap_or_default();
            out.put(&flow.evidence, 0, Some(flow.name.as_bytes()), Some(&body))?;
        }
        self.staging.audits_shipped = self.staging.audits.len();
        Ok(())
    }

    /// Sends the bundle filled so far and stages its row for the store.
    fn send_bundle(&mut self, out: &mut dyn Outbox) -> Result<(), ProduceError> {
        self.scratch.bundle.key_into(&mut self.scratch.key);
        out.put(
            &self.flow.changelog,
            self.partition,
            Some(&self.scratch.key),
            Some(self.scratch.bundle.value()),
        )?;
        self.staging
            .batch
            .put_bundle(&self.scratch.key, self.scratch.bundle.max_event_time_ms());
        self.staging.wrote_changelog = true;
        self.scratch.bundle.clear();
        Ok(())
    }

    /// Removes the dedupe entries that left the retention window as of the last committed
    /// position, and sends the tombstones of bundles whose every entry left it. Under
    /// at_least_once they can land while the commit fails; the redelivered records then start
    /// from that position's watermark, and to them an entry below its bound is expired anyway.
    pub(super) fn ship_expiry(
        &mut self,
        out: &mut dyn Outbox,
        retention_ms: i64,
    ) -> Result<(), ProduceError> {
        if self.pos.committed_watermark == i64::MIN {
            return Ok(());
        }
        let bound = self.pos.committed_watermark.saturating_sub(retention_ms);
        // Sweeping twice as many entries as the batch adds keeps pace with the index's growth
        // while a small commit stays cheap (the scan runs inside the transaction).
        let scan = (2 * self.staging.dedupe.len()).clamp(EXPIRY_SCAN_MIN, EXPIRY_SCAN_MAX);
        let expired = self
            .store
            .expired_dedupe(bound, scan)
            .map_err(|e| self.store_err(e))?;
        // Entries of an older tally's per-id records get their own tombstones until none is left.
        let legacy = self.store.legacy_dedupe().map_err(|e| self.store_err(e))?;
        for (id, event_time_ms) in &expired {
            if legacy.is_some_and(|newest| *event_time_ms <= newest) {
                ChangelogKey::encode_into(RecordKind::Dedupe, id, &mut self.scratch.key);
                out.put(
                    &self.flow.changelog,
                    self.partition,
                    Some(&self.scratch.key),
                    None,
                )?;
                self.staging.wrote_changelog = true;
            }
            self.staging.batch.remove_dedupe(id);
        }
        if let Some(newest) = legacy {
            let after = newest.saturating_add(1);
            if bound >= after && !self.store.dedupe_may_hold_older_than(after) {
                self.staging.batch.end_legacy();
            }
        }
        let bundles = self
            .store
            .expired_bundles(bound, scan)
            .map_err(|e| self.store_err(e))?;
        tracing::trace!(
            partition = self.partition,
            watermark = self.pos.committed_watermark,
            bound,
            entries = expired.len(),
            bundles = bundles.len(),
            "dedupe expiry scan"
        );
        for key in &bundles {
            out.put(&self.flow.changelog, self.partition, Some(key), None)?;
            self.staging.batch.remove_bundle(key);
            self.staging.wrote_changelog = true;
        }
        Ok(())
    }

    /// Moves everything staged, all of it shipped, into the sealed batch of the commit that
    /// starts.
    pub(super) fn seal_staged(&mut self) {
        debug_assert!(self.sealed.is_none(), "one commit runs at a time");
        self.sealed = Some(Sealed {
            states: std::mem::take(&mut self.staging.states),
            dedupe: std::mem::take(&mut self.staging.dedupe),
            batch: std::mem::take(&mut self.staging.batch),
            next: self.pos.next,
            resume: self.reemits.resume(self.pos.next, self.pos.watermark),
            control_next: self.pos.control_next,
            counts: std::mem::take(&mut self.staging.counts),
            wrote_changelog: self.staging.wrote_changelog,
        });
        self.staging.clear();
    }

    /// Queues the sealed batch, now committed, at the store writer; lookups see it until it is
    /// written. `delivered`: the changelog partition's end after every acknowledged record.
    pub(super) fn hand_to_writer(&mut self, delivered: i64) -> Result<(), TaskError> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(());
        };
        // Finished batches leave the lookup path; the oldest is waited for when too many queue.
        while let Some(front) = self.inflight.front() {
            let done = match front.pending.try_wait() {
                Some(done) => done,
                None if self.inflight.len() >= MAX_INFLIGHT => front.pending.wait(),
                None => break,
            };
            let written = self.inflight.pop_front();
            done.map_err(|e| self.store_err(e))?;
            if let Some(batch) = written {
                self.retire(batch.states);
            }
        }
        self.pos.changelog_from = self.pos.changelog_from.max(delivered);
        if sealed.wrote_changelog {
            self.pos.changelog_end = delivered;
        }
        let mut batch = sealed.batch;
        let (resume, resume_watermark) = sealed.resume;
        batch.set_checkpoint(Checkpoint {
            input_offset: resume,
            changelog_offset: self.pos.changelog_from,
            watermark_ms: resume_watermark,
        });
        let pending = self.writer.submit(self.store.clone(), batch);
        self.inflight.push_back(Inflight {
            states: sealed.states,
            dedupe: sealed.dedupe,
            pending,
        });
        self.pos.committed = sealed.next;
        self.pos.committed_watermark = resume_watermark;
        self.pos.control_committed = sealed.control_next;
        let c = sealed.counts;
        metrics::record_commit(
            &self.flow.name,
            c.applied,
            c.duplicates,
            &c.dead,
            &c.timestamps,
        );
        metrics::record_source(&self.flow.name, &c.skipped, &c.source_timestamps);
        metrics::record_repairs(&self.flow.name, c.repairs_applied, &c.repairs_refused);
        let (hits, misses) = self.cache.take_counts();
        metrics::record_state_cache(&self.flow.name, hits, misses);
        Ok(())
    }
}
