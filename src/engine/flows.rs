//! Each flow's names and limits, resolved once at start: its topics (created, or checked against
//! the input's partition count), its projection, its contract's invariants, its largest record.

use std::sync::Arc;

use tally_topology::Guard;

use super::projector::{Projector, Projectors};
use super::EngineError;
use crate::config::Config;
use crate::input::InputReader;
use crate::kafka::limits::{self, RecordLimit};
use crate::kafka::topics::{TopicRole, Topics};

/// A flow's names, resolved once at start.
#[derive(Debug)]
pub struct FlowInfo {
    pub idx: usize,
    pub name: String,
    /// The registered projection the flow runs.
    pub(crate) projection: Projector,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub changelog: String,
    pub partitions: i32,
    /// An applied id older than this behind the partition's watermark is forgotten.
    pub dedupe_retention_ms: i64,
    /// Where replays send repairs; co-partitioned with the input.
    pub control: String,
    /// Where applied and refused repairs leave their audit records (the contract's evidence
    /// topic).
    pub evidence: String,
    /// The largest record the flow may produce to any of its topics.
    pub record_limit: RecordLimit,
    /// The contract's invariants, which apply refuses to break.
    pub guard: Guard,
    /// How its input records become events.
    pub reader: InputReader,
    /// How producers spread its keys over the input's partitions (the contract's ordering).
    pub partitioner: tally_topology::Partitioner,
}

/// Resolves every flow's topics: the input must exist; changelog, output and dead-letter topics
/// are created with its partition count, or checked against it.
pub(super) fn prepare_topics(
    cfg: &Config,
    projections: &dyn Projectors,
) -> Result<Vec<Arc<FlowInfo>>, EngineError> {
    let topics = Topics::connect(&cfg.bootstrap_servers, &cfg.kafka)?;
    let producer_max = limits::producer_max(&cfg.kafka);
    let mut out = Vec::new();
    for (idx, f) in cfg.flows.iter().enumerate() {
        let partitions = topics
            .partitions(&f.input)?
            .ok_or_else(|| crate::kafka::topics::TopicError::MissingInput(f.input.clone()))?;
        let changelog = f.changelog_topic(&cfg.application_id);
        let rf = cfg.replication_factor;
        topics.ensure_copartitioned(&f.input, &changelog, partitions, rf, TopicRole::Compacted)?;
        topics.ensure_copartitioned(&f.input, &f.output, partitions, rf, TopicRole::Compacted)?;
        topics.ensure_copartitioned(&f.input, &f.dead_letter, partitions, rf, TopicRole::Log)?;
        let control = f.control_topic(&cfg.application_id);
        topics.ensure_copartitioned(&f.input, &control, partitions, rf, TopicRole::Log)?;
        // Validated when the config was loaded.
        let projection = projections
            .projector(f.projection_name())
            .map_err(EngineError::Fatal)?;
        let contract = f
            .contract(projections.contracts())
            .map_err(EngineError::Fatal)?;
        let evidence = contract.evidence_topic(&cfg.application_id);
        if topics.partitions(&evidence)?.is_none() {
            topics.create(&evidence, 1, rf, TopicRole::Log)?;
        }
        // The flow's records must fit the smallest of its topics' limits.
        let mut topic_max = usize::MAX;
        for t in [&changelog, &f.output, &f.dead_letter, &evidence] {
            if let Some(max) = topics.max_message_bytes(t)? {
                topic_max = topic_max.min(max);
            }
        }
        out.push(Arc::new(FlowInfo {
            idx,
            name: f.name.clone(),
            projection,
            input: f.input.clone(),
            output: f.output.clone(),
            dead_letter: f.dead_letter.clone(),
            changelog,
            partitions,
            dedupe_retention_ms: i64::try_from(cfg.dedupe_retention.as_millis())
                .unwrap_or(i64::MAX),
            control,
            evidence,
            record_limit: RecordLimit::new(producer_max, topic_max),
            guard: Guard::new(
                contract.reconciliation.checks.iter().cloned(),
                contract.reconciliation.allow_overdraft,
            ),
            reader: f.input_reader(&contract).map_err(EngineError::Fatal)?,
            partitioner: contract.ordering.partitioner,
        }));
    }
    Ok(out)
}
