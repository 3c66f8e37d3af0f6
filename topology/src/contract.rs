//! Recovery contracts: per flow, the authoritative history, ordering and idempotency keys, the
//! projection, replay scopes, reconciliation checks and evidence, parsed and validated at start.

use serde::{Deserialize, Serialize};

use crate::partitioner::Partitioner;
use crate::projection::Projection;

/// The contract file format versions this build reads.
pub const CONTRACT_VERSIONS: [u32; 1] = [1];

/// Why a contract cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recovery contract: {0}")]
pub struct ContractError(pub String);

fn err(field: &str, msg: impl std::fmt::Display) -> ContractError {
    ContractError(format!("{field}: {msg}"))
}

/// A flow's recovery contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub contract_version: u32,
    pub flow: String,
    pub history: History,
    pub ordering: Ordering,
    pub idempotency: Idempotency,
    pub projection: ProjectionPart,
    pub replay: Replay,
    pub reconciliation: Reconciliation,
    pub evidence: EvidencePart,
}

/// Where the authoritative history lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// `kafka` (the input topic is the history) or `postgres` (a table is, relayed to the input
    /// topic by change data capture).
    pub kind: String,
    /// Topics; `{input}` is the flow's configured input topic.
    pub topics: Vec<String>,
    /// `postgres`: the table, `schema.table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// What an update of the history's rows does to the projection.
    #[serde(default, skip_serializing_if = "ChangePolicy::is_default")]
    pub on_update: ChangePolicy,
    /// What a delete of the history's rows does to the projection.
    #[serde(default, skip_serializing_if = "ChangePolicy::is_default")]
    pub on_delete: ChangePolicy,
}

impl History {
    /// The input topic as the whole history: the built-in contracts' history.
    pub fn kafka() -> Self {
        Self {
            kind: "kafka".into(),
            topics: vec!["{input}".into()],
            table: None,
            on_update: ChangePolicy::default(),
            on_delete: ChangePolicy::default(),
        }
    }
}

/// What a change other than an insert does to an append-only history's projection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangePolicy {
    /// History is append-only: the change goes to the dead-letter topic with its reason.
    #[default]
    DeadLetter,
    /// The change is counted and not applied.
    Skip,
}

impl ChangePolicy {
    fn is_default(&self) -> bool {
        *self == ChangePolicy::default()
    }
}

/// What keeps events in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ordering {
    /// The event field that is the aggregate and record key.
    pub key: String,
    /// Only `partition`: order holds per input partition.
    pub scope: String,
    #[serde(default)]
    pub partitioner: Partitioner,
}

/// How duplicates are recognized and treated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotency {
    pub key: String,
    pub duplicate_policy: String,
}

/// Which projection, at which version, over which event schema versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionPart {
    pub name: String,
    pub version: u32,
    pub schema_versions: Vec<u32>,
}

/// What a replay may be limited to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    pub scopes: Vec<String>,
    pub late_tolerance: String,
}

/// The checks a reconcile runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconciliation {
    pub checks: Vec<String>,
    #[serde(default)]
    pub allow_overdraft: bool,
    /// `postgres` history: SQL returning, per key, what its output must hold, as rows of
    /// (`key` text, `path` text, a JSON pointer into the output record, `value` bigint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_query: Option<String>,
}

/// Where evidence records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidencePart {
    /// `{application_id}` is replaced.
    pub topic: String,
    pub format: String,
}

/// Checks every flow can run, besides its projection's invariants.
const COMMON_CHECKS: [&str; 3] = [
    "state_matches_history",
    "output_matches_state",
    "last_event_time_not_newer_than_source",
];
const SCOPES: [&str; 3] = ["key", "time", "partition"];

/// What a contract is checked against: the projection it names, as that projection describes
/// itself.
#[derive(Debug, Clone, Copy)]
pub struct ContractSpec {
    /// The projection's name, which the contract's `flow` and `projection.name` must give.
    pub name: &'static str,
    /// The event field that orders and keys it (`ordering.key`).
    pub key_field: &'static str,
    /// The checks on one state it can evaluate.
    pub invariants: &'static [&'static str],
    /// The event schema versions it reads.
    pub schema_versions: &'static [u32],
}

impl ContractSpec {
    /// The spec of projection `P`.
    pub fn of<P: Projection>() -> Self {
        Self {
            name: P::NAME,
            key_field: P::KEY_FIELD,
            invariants: P::INVARIANTS,
            schema_versions: P::SCHEMA_VERSIONS,
        }
    }
}

impl Contract {
    /// Parses and validates a contract for a flow of the projection `spec` describes.
    pub fn parse(text: &str, spec: &ContractSpec) -> Result<Self, ContractError> {
        let c: Contract = toml::from_str(text).map_err(|e| ContractError(e.to_string()))?;
        c.validate(spec)?;
        Ok(c)
    }

    fn validate(&self, spec: &ContractSpec) -> Result<(), ContractError> {
        let name = spec.name;
        if !CONTRACT_VERSIONS.contains(&self.contract_version) {
            return Err(err(
                "contract_version",
                format!(
                    "{} is not readable by this build (reads {:?})",
                    self.contract_version, CONTRACT_VERSIONS
                ),
            ));
        }
        if self.flow != name {
            return Err(err(
                "flow",
                format!("`{}` but the flow runs {name}", self.flow),
            ));
        }
        match (self.history.kind.as_str(), &self.history.table) {
            ("kafka", None) | ("postgres", Some(_)) => {}
            ("kafka", Some(_)) => {
                return Err(err("history.table", "only a postgres history has a table"))
            }
            ("postgres", None) => {
                return Err(err("history.table", "a postgres history names its table"))
            }
            (other, _) => {
                return Err(err(
                    "history.kind",
                    format!("`{other}` is not kafka or postgres"),
                ))
            }
        }
        if self.reconciliation.source_query.is_some() && self.history.kind != "postgres" {
            return Err(err(
                "reconciliation.source_query",
                "only a postgres history has a source query",
            ));
        }
        if self.history.topics.is_empty() {
            return Err(err("history.topics", "names no topic"));
        }
        let key = spec.key_field;
        if self.ordering.key != key {
            return Err(err(
                "ordering.key",
                format!("`{}` is not {key}", self.ordering.key),
            ));
        }
        if self.ordering.scope != "partition" {
            return Err(err(
                "ordering.scope",
                format!("`{}` is not partition", self.ordering.scope),
            ));
        }
        if self.idempotency.key != "event_id" {
            return Err(err(
                "idempotency.key",
                format!("`{}` is not event_id", self.idempotency.key),
            ));
        }
        if self.idempotency.duplicate_policy != "first_wins_conflict_dead_lettered" {
            return Err(err(
                "idempotency.duplicate_policy",
                format!(
                    "`{}` is not first_wins_conflict_dead_lettered",
                    self.idempotency.duplicate_policy
                ),
            ));
        }
        if self.projection.name != name {
            return Err(err(
                "projection.name",
                format!("`{}` is not {name}", self.projection.name),
            ));
        }
        if self.projection.version == 0 {
            return Err(err("projection.version", "must be >= 1"));
        }
        let sv = &self.projection.schema_versions;
        if sv.is_empty() || sv.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err(
                "projection.schema_versions",
                "must be non-empty, ascending and unique",
            ));
        }
        let versions = spec.schema_versions;
        if let Some(v) = sv.iter().find(|v| !versions.contains(v)) {
            return Err(err(
                "projection.schema_versions",
                format!("version {v} cannot be read by this build (reads {versions:?})"),
            ));
        }
        if self.replay.scopes.is_empty() {
            return Err(err("replay.scopes", "names no scope"));
        }
        if let Some(s) = self
            .replay
            .scopes
            .iter()
            .find(|s| !SCOPES.contains(&s.as_str()))
        {
            return Err(err(
                "replay.scopes",
                format!("`{s}` is not key, time or partition"),
            ));
        }
        parse_duration_ms(&self.replay.late_tolerance)
            .map_err(|m| err("replay.late_tolerance", m))?;
        for c in &self.reconciliation.checks {
            if !COMMON_CHECKS.contains(&c.as_str()) && !spec.invariants.contains(&c.as_str()) {
                return Err(err(
                    "reconciliation.checks",
                    format!("`{c}` is not a check of the {name} flow"),
                ));
            }
        }
        if self.evidence.format != "json" {
            return Err(err(
                "evidence.format",
                format!("`{}` is not json", self.evidence.format),
            ));
        }
        if self.evidence.topic.is_empty() {
            return Err(err("evidence.topic", "is empty"));
        }
        Ok(())
    }

    /// The late tolerance in milliseconds (validated at parse).
    pub fn late_tolerance_ms(&self) -> i64 {
        parse_duration_ms(&self.replay.late_tolerance).unwrap_or(0)
    }

    /// Whether replays may be limited by `scope` (key, time or partition).
    pub fn supports_scope(&self, scope: &str) -> bool {
        self.replay.scopes.iter().any(|s| s == scope)
    }

    /// The evidence topic of an application.
    pub fn evidence_topic(&self, application_id: &str) -> String {
        self.evidence
            .topic
            .replace("{application_id}", application_id)
    }

    /// The history topics of a flow reading `input`.
    pub fn history_topics(&self, input: &str) -> Vec<String> {
        self.history
            .topics
            .iter()
            .map(|t| t.replace("{input}", input))
            .collect()
    }

    /// A stable digest of the contract's content, so evidence names exactly what it ran under.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
    }

    /// The seven parts for people, as `tally contract show` prints them.
    pub fn render_text(&self) -> String {
        let c = self;
        format!(
            "recovery contract of flow `{flow}` (contract_version {cv}, digest {digest})\n\
             1. authoritative history   {hk}{table}: {topics}\n\
             2. ordering key            {ok} (order per {os}; producers' partitioner {part:?})\n\
             3. idempotency key         {ik}; duplicates: {dp}\n\
             4. projection              {pn} v{pv}, event schema versions {sv:?}\n\
             5. replay scopes           {scopes}; late tolerance {late}\n\
             6. reconciliation checks   {checks}{overdraft}\n\
             7. evidence                {ef} records to {et}\n",
            flow = c.flow,
            cv = c.contract_version,
            digest = c.digest(),
            hk = c.history.kind,
            table = c
                .history
                .table
                .as_deref()
                .map(|t| format!(" table {t}, relayed to"))
                .unwrap_or_default(),
            topics = c.history.topics.join(", "),
            ok = c.ordering.key,
            os = c.ordering.scope,
            part = c.ordering.partitioner,
            ik = c.idempotency.key,
            dp = c.idempotency.duplicate_policy,
            pn = c.projection.name,
            pv = c.projection.version,
            sv = c.projection.schema_versions,
            scopes = c.replay.scopes.join(", "),
            late = c.replay.late_tolerance,
            checks = c.reconciliation.checks.join(", "),
            overdraft = if c.reconciliation.allow_overdraft {
                " (overdraft allowed)"
            } else {
                ""
            },
            ef = c.evidence.format,
            et = c.evidence.topic,
        )
    }
}

/// `500ms`, `30s`, `5m`, `2h`, `7d` in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 5m"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{s}` is not a duration like 5m (units ms, s, m, h, d)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Inventory, Ledger, Projection};
    use rstest::rstest;

    fn inventory(text: &str) -> Result<Contract, ContractError> {
        Contract::parse(text, &ContractSpec::of::<Inventory>())
    }

    #[test]
    fn the_built_in_contracts_are_valid() {
        inventory(Inventory::CONTRACT).unwrap();
        Contract::parse(Ledger::CONTRACT, &ContractSpec::of::<Ledger>()).unwrap();
    }

    #[rstest]
    #[case("contract_version = 1", "contract_version = 9", "contract_version")]
    #[case("flow = \"inventory\"", "flow = \"ledger\"", "flow")]
    #[case(
        "late_tolerance = \"5m\"",
        "late_tolerance = \"5x\"",
        "replay.late_tolerance"
    )]
    #[case(
        "scopes = [\"key\", \"time\", \"partition\"]",
        "scopes = []",
        "replay.scopes"
    )]
    #[case(
        "\"sellable_non_negative\",",
        "\"available_non_negative\",",
        "reconciliation.checks"
    )]
    #[case(
        "schema_versions = [1, 2]",
        "schema_versions = [2, 1]",
        "projection.schema_versions"
    )]
    #[case(
        "schema_versions = [1, 2]",
        "schema_versions = [1, 3]",
        "projection.schema_versions"
    )]
    #[case(
        "format = \"json\"",
        "format = \"json\"\ncolour = \"red\"",
        "unknown field"
    )]
    fn a_broken_contract_is_refused_naming_its_field(
        #[case] from: &str,
        #[case] to: &str,
        #[case] field: &str,
    ) {
        let text = Inventory::CONTRACT.replace(from, to);
        assert_ne!(text, Inventory::CONTRACT, "case did not apply");
        let e = inventory(&text).unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }

    const POSTGRES: &str = "kind = \"postgres\"\ntable = \"public.inventory_transaction\"";

    #[test]
    fn a_postgres_history_names_its_table_and_may_have_a_source_query() {
        let text = Inventory::CONTRACT
            .replace(
                "kind = \"kafka\"",
                &format!("{POSTGRES}\non_update = \"skip\""),
            )
            .replace(
                "[reconciliation]",
                "[reconciliation]\nsource_query = \"select 1\"",
            );
        let c = inventory(&text).unwrap();
        assert_eq!(
            c.history.table.as_deref(),
            Some("public.inventory_transaction")
        );
        assert_eq!(
            (c.history.on_update, c.history.on_delete),
            (ChangePolicy::Skip, ChangePolicy::DeadLetter)
        );
        assert_eq!(c.reconciliation.source_query.as_deref(), Some("select 1"));
        assert!(c
            .render_text()
            .contains("postgres table public.inventory_transaction"));
    }

    #[rstest]
    #[case::postgres_without_table("kind = \"postgres\"", "history.table")]
    #[case::kafka_with_table("kind = \"kafka\"\ntable = \"t\"", "history.table")]
    #[case::unknown_kind("kind = \"mysql\"", "history.kind")]
    #[case::unknown_policy("kind = \"kafka\"\non_delete = \"fold\"", "on_delete")]
    fn a_bad_history_is_refused_naming_its_field(#[case] history: &str, #[case] field: &str) {
        let text = Inventory::CONTRACT.replace("kind = \"kafka\"", history);
        let e = inventory(&text).unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }

    #[test]
    fn a_source_query_needs_a_postgres_history() {
        let text = Inventory::CONTRACT.replace(
            "[reconciliation]",
            "[reconciliation]\nsource_query = \"select 1\"",
        );
        assert!(inventory(&text)
            .unwrap_err()
            .to_string()
            .contains("reconciliation.source_query"));
    }

    #[test]
    fn the_digest_changes_with_the_content_only() {
        let a = inventory(Inventory::CONTRACT).unwrap();
        let b = inventory(&format!("# a comment\n{}", Inventory::CONTRACT)).unwrap();
        assert_eq!(a.digest(), b.digest());
        let c = inventory(&Inventory::CONTRACT.replace("\"5m\"", "\"6m\"")).unwrap();
        assert_ne!(a.digest(), c.digest());
    }

    #[rstest]
    #[case("250ms", 250)]
    #[case("30s", 30_000)]
    #[case("5m", 300_000)]
    #[case("7d", 604_800_000)]
    fn durations_parse(#[case] s: &str, #[case] ms: i64) {
        assert_eq!(parse_duration_ms(s), Ok(ms));
    }
}
