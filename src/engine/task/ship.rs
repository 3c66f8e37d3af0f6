//! A task's way out: staged records go to the producer as they are processed (inside the open
//! transaction), and once Kafka committed them, to the store writer as one batch.

use std::sync::Arc;

use tally_state::{ChangelogKey, Checkpoint, CommitBatch, RecordKind};
use tally_topology::Projection;

use super::{Inflight, ProduceError, Sealed, Task, TaskError, MAX_INFLIGHT};
use crate::engine::sink::{DeliveredOffsets, Sink};
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
    pub(super) fn ship_staged(&mut self, sink: &Sink) -> Result<(), ProduceError> {
        let flow = Arc::clone(&self.flow);
        let p = self.partition;
        let fresh = self.dedupe_shipped..self.dedupe.len();
        self.bundle.clear();
        let mut reship = std::mem::take(&mut self.dedupe_reship);
        for i in reship.drain(..).chain(fresh) {
            let Some((id, entry)) = self.dedupe.get_index(i) else {
                continue;
            };
            self.bundle
                .push(id.as_bytes(), entry)
                .map_err(|e| self.store_err(e))?;
            self.batch.put_dedupe(id.as_bytes(), *entry);
            if self.bundle.is_full() {
                self.send_bundle(sink)?;
            }
        }
        self.dedupe_reship = reship;
        self.dedupe_shipped = self.dedupe.len();
        if !self.bundle.is_empty() {
            self.send_bundle(sink)?;
        }
        if !self.dirty.is_empty() {
            crate::engine::faults::hit_after("between_dedupe_and_states", || {
                let _ = sink.flush();
            });
            // Outputs and states are separate partitions: a crash can land an output, not its
            // state. This lands the round's outputs alone before dying.
            crate::engine::faults::hit_after("outputs_before_states", || {
                for &i in &self.dirty {
                    if let Some((key, slot)) = self.states.get_index(i) {
                        if P::render(&slot.state, &mut self.buf).is_ok() {
                            let _ = sink.send(
                                &flow.output,
                                p,
                                Some(key.as_bytes()),
                                Some(&self.buf),
                                None,
                            );
                        }
                    }
                }
                let _ = sink.flush();
            });
        }
        for i in self.dirty.drain(..) {
            let Some((key, slot)) = self.states.get_index_mut(i) else {
                continue;
            };
            slot.dirty = false;
            P::encode_state(&slot.state, &mut self.buf);
            ChangelogKey::encode_into(RecordKind::State, key.as_bytes(), &mut self.key);
            sink.send(&flow.changelog, p, Some(&self.key), Some(&self.buf), None)?;
            self.batch.put_state(key.as_bytes(), &self.buf);
            self.wrote_changelog = true;
            // A key held after a crash sends its output once the redelivery is over.
            if self.reemits.holds(key) {
                continue;
            }
            P::render(&slot.state, &mut self.buf).map_err(|e| TaskError::State {
                flow: flow.name.clone(),
                partition: p,
                key: key.clone(),
                message: e.to_string(),
            })?;
            sink.send(&flow.output, p, Some(key.as_bytes()), Some(&self.buf), None)?;
        }
        for d in &self.dead[self.dead_shipped..] {
            let headers = d.headers(&flow.input, p);
            sink.send(&flow.dead_letter, p, d.key(), d.value(), Some(headers))?;
        }
        self.dead_shipped = self.dead.len();
        for a in &self.audits[self.audits_shipped..] {
            // An audit record is small plain data; it always serializes.
            let body = serde_json::to_vec(a).unwrap_or_default();
            sink.send(
                &flow.evidence,
                0,
                Some(flow.name.as_bytes()),
                Some(&body),
                None,
            )?;
        }
        self.audits_shipped = self.audits.len();
        Ok(())
    }

    /// Sends the bundle filled so far and stages its row for the store.
    fn send_bundle(&mut self, sink: &Sink) -> Result<(), ProduceError> {
        self.bundle.key_into(&mut self.key);
        let flow = &self.flow;
        sink.send(
            &flow.changelog,
            self.partition,
            Some(&self.key),
            Some(self.bundle.value()),
            None,
        )?;
        self.batch
            .put_bundle(&self.key, self.bundle.max_event_time_ms());
        self.wrote_changelog = true;
        self.bundle.clear();
        Ok(())
    }

    /// Removes the dedupe entries that left the retention window as of the last committed
    /// position, and sends the tombstones of bundles whose every entry left it. Under
    /// at_least_once they can land while the commit fails; the redelivered records then start
    /// from that position's watermark, and to them an entry below its bound is expired anyway.
    pub(super) fn ship_expiry(
        &mut self,
        sink: &Sink,
        retention_ms: i64,
    ) -> Result<(), ProduceError> {
        if self.committed_watermark == i64::MIN {
            return Ok(());
        }
        let bound = self.committed_watermark.saturating_sub(retention_ms);
        // Sweeping twice as many entries as the batch adds keeps pace with the index's growth
        // while a small commit stays cheap (the scan runs inside the transaction).
        let scan = (2 * self.dedupe.len()).clamp(EXPIRY_SCAN_MIN, EXPIRY_SCAN_MAX);
        let expired = self
            .store
            .expired_dedupe(bound, scan)
            .map_err(|e| self.store_err(e))?;
        // Entries of an older tally's per-id records get their own tombstones until none is left.
        let legacy = self.store.legacy_dedupe().map_err(|e| self.store_err(e))?;
        for (id, event_time_ms) in &expired {
            if legacy.is_some_and(|newest| *event_time_ms <= newest) {
                ChangelogKey::encode_into(RecordKind::Dedupe, id, &mut self.key);
                sink.send(
                    &self.flow.changelog,
                    self.partition,
                    Some(&self.key),
                    None,
                    None,
                )?;
                self.wrote_changelog = true;
            }
            self.batch.remove_dedupe(id);
        }
        if let Some(newest) = legacy {
            let after = newest.saturating_add(1);
            if bound >= after && !self.store.dedupe_may_hold_older_than(after) {
                self.batch.end_legacy();
            }
        }
        let bundles = self
            .store
            .expired_bundles(bound, scan)
            .map_err(|e| self.store_err(e))?;
        tracing::trace!(
            partition = self.partition,
            watermark = self.committed_watermark,
            bound,
            entries = expired.len(),
            bundles = bundles.len(),
            "dedupe expiry scan"
        );
        for key in &bundles {
            sink.send(&self.flow.changelog, self.partition, Some(key), None, None)?;
            self.batch.remove_bundle(key);
            self.wrote_changelog = true;
        }
        Ok(())
    }

    /// Moves everything staged, all of it shipped, into the sealed batch of the commit that
    /// starts.
    pub(super) fn seal_staged(&mut self) {
        debug_assert!(self.sealed.is_none(), "one commit runs at a time");
        self.sealed = Some(Sealed {
            states: std::mem::take(&mut self.states),
            dedupe: std::mem::take(&mut self.dedupe),
            batch: std::mem::take(&mut self.batch),
            next: self.next,
            resume: self.reemits.resume(self.next, self.watermark),
            control_next: self.control_next,
            counts: std::mem::take(&mut self.counts),
            wrote_changelog: self.wrote_changelog,
        });
        self.drop_staged();
    }

    /// Queues the sealed batch, now committed, at the store writer; lookups see it until it is
    /// written.
    pub(super) fn hand_to_writer(&mut self, offsets: &DeliveredOffsets) -> Result<(), TaskError> {
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
        // Nothing is shipped while a commit runs, so every delivered record belongs to it.
        let delivered = offsets.next_offset(&self.flow.changelog, self.partition);
        self.changelog_from = self.changelog_from.max(delivered);
        if sealed.wrote_changelog {
            self.changelog_end = delivered;
        }
        let mut batch = sealed.batch;
        let (resume, resume_watermark) = sealed.resume;
        batch.set_checkpoint(Checkpoint {
            input_offset: resume,
            changelog_offset: self.changelog_from,
            watermark_ms: resume_watermark,
        });
        let pending = self.writer.submit(self.store.clone(), batch);
        self.inflight.push_back(Inflight {
            states: sealed.states,
            dedupe: sealed.dedupe,
            pending,
        });
        self.committed = sealed.next;
        self.committed_watermark = resume_watermark;
        self.control_committed = sealed.control_next;
        let c = sealed.counts;
        metrics::record_commit(
            &self.flow.name,
            c.applied,
            c.duplicates,
            &c.dead,
            &c.timestamps,
        );
        metrics::record_repairs(&self.flow.name, c.repairs_applied, &c.repairs_refused);
        let (hits, misses) = self.cache.take_counts();
        metrics::record_state_cache(&self.flow.name, hits, misses);
        Ok(())
    }

    /// Forgets everything staged since the last commit (after it committed, or was dropped).
    pub(super) fn drop_staged(&mut self) {
        self.states.clear();
        self.dirty.clear();
        self.dedupe.clear();
        self.dedupe_shipped = 0;
        self.dedupe_reship.clear();
        self.dead.clear();
        self.dead_shipped = 0;
        self.audits.clear();
        self.audits_shipped = 0;
        self.wrote_changelog = false;
        self.batch = CommitBatch::default();
    }
}
