//! The hot path's fold: an event updates its key's state in place, the state taken from the
//! newest batch holding it, the cache or the store, never copied; written batches feed the cache.

use tally_topology::{Invalid, Projection, Reason, SourceRef};

use super::batches::{Staged, StagedStates};
use super::{Task, TaskError};
use crate::engine::FlowInfo;
use crate::kafka::limits::RecordLimit;

impl<P: Projection> Task<P>
where
    P::State: Send,
{
    /// Applies `event` (of `event_bytes` on the wire) to `key`'s state and stages it; an invalid
    /// event, or one that would make the key's changelog or output record larger than the flow's
    /// topics take (the inner error), leaves every state as it was.
    pub(super) fn fold(
        &mut self,
        key: &str,
        event: &P::Event,
        event_bytes: usize,
        source: SourceRef,
    ) -> Result<Result<(), Invalid>, TaskError> {
        let flow = &self.flow;
        if let Some((i, _, slot)) = self.staging.states.get_full_mut(key) {
            let applied = apply_within::<P>(
                flow,
                &mut slot.state,
                key,
                event,
                event_bytes,
                source,
                &mut self.scratch.buf,
            );
            if let Err(invalid) = applied {
                return Ok(Err(invalid));
            }
            if !slot.dirty {
                slot.dirty = true;
                self.staging.dirty.push(i);
            }
            self.hold_output(key, source.offset);
            return Ok(Ok(()));
        }
        let (mut state, taken) = match self.take_state(key)? {
            Some(taken) => taken,
            None => (P::initial(event, source), false),
        };
        match apply_within::<P>(
            &self.flow,
            &mut state,
            key,
            event,
            event_bytes,
            source,
            &mut self.scratch.buf,
        ) {
            Ok(()) => {
                self.stage_at(None, key, state);
                self.hold_output(key, source.offset);
                Ok(Ok(()))
            }
            Err(invalid) => {
                // Taken out of a batch or the cache for lookups: it serves them from here now,
                // unchanged and not sent again.
                if taken {
                    let unchanged = Staged {
                        state,
                        dirty: false,
                    };
                    self.staging.states.insert(key.to_owned(), unchanged);
                }
                Ok(Err(invalid))
            }
        }
    }

    /// Removes `key`'s newest state from the sealed or a queued batch, else from the cache
    /// (lookups find it staged from now on, ahead of those), else reads it from the store;
    /// `true` when it was removed from somewhere.
    fn take_state(&mut self, key: &str) -> Result<Option<(P::State, bool)>, TaskError> {
        let sealed = self.sealed.iter_mut().map(|s| &mut s.states);
        let queued = self.inflight.iter_mut().rev().map(|i| &mut i.states);
        for states in sealed.chain(queued) {
            if let Some(taken) = states.swap_remove(key) {
                return Ok(Some((taken.state, true)));
            }
        }
        if let Some(cached) = self.cache.take(key) {
            return Ok(Some((cached, true)));
        }
        Ok(self.read_state(key)?.map(|s| (s, false)))
    }

    /// The state of `key` in the store.
    pub(super) fn read_state(&self, key: &str) -> Result<Option<P::State>, TaskError> {
        let Some(bytes) = self
            .store
            .state(key.as_bytes())
            .map_err(|e| self.store_err(e))?
        else {
            return Ok(None);
        };
        P::decode_state(&bytes)
            .map(Some)
            .map_err(|e| TaskError::State {
                flow: self.flow.name.clone(),
                partition: self.partition,
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    /// The states of a batch now in the store join the cache, newest version of each key last.
    pub(super) fn retire(&mut self, states: StagedStates<P::State>) {
        for (key, staged) in states {
            let bytes = P::state_bytes(&staged.state);
            self.cache.put(key, staged.state, bytes);
        }
    }
}

/// Applies `event` in place, unless it is invalid, breaks an invariant of the flow's contract, or
/// would make the state's records too large for the flow's topics; an error leaves the state as
/// it was.
fn apply_within<P: Projection>(
    flow: &FlowInfo,
    state: &mut P::State,
    key: &str,
    event: &P::Event,
    event_bytes: usize,
    source: SourceRef,
    buf: &mut Vec<u8>,
) -> Result<(), Invalid> {
    let limit = flow.record_limit;
    // Only a state that might outgrow the limit pays for a copy to go back to.
    let before = limit
        .near(P::state_bytes(state), event_bytes)
        .then(|| state.clone());
    P::apply_in_place(state, event, source, &flow.guard)?;
    if let Some(before) = before {
        if let Err(invalid) = too_large::<P>(key, state, limit, buf) {
            *state = before;
            return Err(invalid);
        }
    }
    Ok(())
}

/// Refuses a state whose changelog record or output would not fit the flow's topics.
fn too_large<P: Projection>(
    key: &str,
    state: &P::State,
    limit: RecordLimit,
    buf: &mut Vec<u8>,
) -> Result<(), Invalid> {
    // The changelog key adds a kind byte to the key.
    let overhead = key.len() + 1;
    P::encode_state(state, buf);
    let encoded = buf.len();
    let rendered = match P::render(state, buf) {
        Ok(()) => buf.len(),
        Err(_) => 0,
    };
    let largest = encoded.max(rendered) + overhead;
    if limit.fits(largest) {
        return Ok(());
    }
    Err(Invalid::new(
        Reason::TooLarge,
        format!(
            "the state of `{key}` would take {largest} bytes, over the {} bytes its topics accept",
            limit.bytes()
        ),
    ))
}
