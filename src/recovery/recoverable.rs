//! What the recovery tools need of a projection, without its types: a replay or reconcile with
//! its evidence, and a key's state at a point in its history. The registry makes one per
//! registered projection.

use tally_topology::Projection;

use super::evidence::Evidence;
use super::plan::Plan;
use super::source::{self, Source};
use super::travel::{self, Answer, Point};
use super::{replay, RecoveryError};

/// One registered projection, as the recovery tools run it.
#[derive(Clone, Copy)]
pub struct Recoverable {
    /// A replay or reconcile, with its evidence.
    pub replay: fn(&Plan) -> Result<Evidence, RecoveryError>,
    /// A key's state at a point in its history (`explain`: with the events that made it).
    pub state_at: fn(&Plan, &str, Point, bool) -> Result<Answer, RecoveryError>,
    /// A reconcile of the live state and outputs against the source database's fold.
    pub against_source: fn(&Plan, &Source) -> Result<Evidence, RecoveryError>,
}

impl Recoverable {
    /// The recovery tools of projection `P`.
    pub fn of<P: Projection>() -> Self {
        Self {
            replay: replay::run::<P>,
            state_at: travel::state_at::<P>,
            against_source: source::reconcile::<P>,
        }
    }
}
