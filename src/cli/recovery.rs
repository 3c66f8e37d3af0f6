//! The recovery commands: `contract show`, `replay`, `reconcile`, `dlq replay` and `state get`,
//! from a processor config and the flow's recovery contract to an evidence record.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Contracts;
use crate::config::{Config, FlowConfig};
use crate::recovery::dlq;
use crate::recovery::evidence::{self, Evidence, Operator};
use crate::recovery::replay::{Plan, Signer};
use crate::recovery::scope::Scope;
use crate::recovery::source::Source;
use crate::recovery::travel::Point;
use crate::registry::Registry;
use anyhow::Context;
use clap::{Args, Subcommand};
use tally_topology::Contract;

/// Which config and flow a recovery command works on.
#[derive(Args, Debug, Clone)]
pub struct FlowArgs {
    /// The processor's config (bootstrap, topics, application_id).
    #[arg(long)]
    pub config: PathBuf,
    /// The flow's name in the config.
    #[arg(long)]
    pub flow: String,
}

/// `tally contract ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum ContractCommand {
    /// Print a flow's recovery contract (the built-in one, or the file the config names).
    Show {
        /// A config whose flow may name its own contract file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Flow name (or built-in projection name without --config).
        #[arg(long)]
        flow: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `tally reconcile` (and the read-only part of `tally replay`).
#[derive(Args, Debug, Clone)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub target: FlowArgs,
    /// key=K, time=FROM..TO (RFC 3339), partition=P[:FROM..TO]; repeat to combine.
    #[arg(long)]
    pub scope: Vec<String>,
    /// Also write the evidence record to this file.
    #[arg(long)]
    pub evidence_file: Option<PathBuf>,
    /// Reconcile only: compare the live state and outputs with the contract's source query on
    /// its PostgreSQL history (the config's `[source]`), instead of a replay of the topic.
    #[arg(long)]
    pub against_source: bool,
    /// With --against-source: seconds to wait for the pipeline to catch up before a
    /// difference counts.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

/// Who changes or republishes state, and why: required by `replay --apply` and `dlq replay`.
#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Why this change is made; recorded in the evidence.
    #[arg(long)]
    pub reason: Option<String>,
    /// Who makes it (default: the Kafka principal `User:<sasl.username>` of the config).
    #[arg(long)]
    pub actor: Option<String>,
    /// The `[[control.keys]]` id that vouches for the actor (default: the first that does).
    #[arg(long)]
    pub key_id: Option<String>,
}

/// Arguments of `tally replay`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub base: ReconcileArgs,
    /// Only report (the default).
    #[arg(long, conflicts_with = "apply")]
    pub dry_run: bool,
    /// Repair: send the rebuilt rows, signed, to their owners and confirm them in the
    /// changelog. Needs --reason and a control key that vouches for the actor.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub operator: OperatorArgs,
    /// Seconds an apply waits for the owners to write the repairs.
    #[arg(long, default_value_t = 60)]
    pub confirm_timeout: u64,
}

/// `tally dlq ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// Re-submit dead-lettered records to their input partition, event ids unchanged.
    Replay {
        #[command(flatten)]
        target: FlowArgs,
        /// Only records dead-lettered for this error reason (e.g. unknown_schema_version).
        #[arg(long)]
        only_reason: Option<String>,
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        evidence_file: Option<PathBuf>,
    },
}

/// `tally state ...`.
#[derive(Subcommand, Debug, Clone)]
pub enum StateCommand {
    /// The state of one key now, as of an event time, or at an input offset.
    Get {
        #[command(flatten)]
        target: FlowArgs,
        #[arg(long)]
        key: String,
        /// An RFC 3339 instant: events with a later event time are left out.
        #[arg(long, conflicts_with = "at_offset")]
        as_of: Option<String>,
        /// PARTITION:OFFSET: the key's records up to and including this offset.
        #[arg(long)]
        at_offset: Option<String>,
        /// List the events that produced the state.
        #[arg(long)]
        explain: bool,
    },
}

fn flow_of<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a FlowConfig> {
    cfg.flows.iter().find(|f| f.name == name).ok_or_else(|| {
        let names: Vec<&str> = cfg.flows.iter().map(|f| f.name.as_str()).collect();
        anyhow::anyhow!("no flow `{name}` in the config (flows: {names:?})")
    })
}

/// The plan of a recovery command over one configured flow.
pub(super) fn plan(
    cfg: &Config,
    f: &FlowConfig,
    kind: &'static str,
    registry: &Registry,
) -> anyhow::Result<(Plan, Contract)> {
    Plan::for_flow(cfg, f, kind, registry)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("flow `{}`", f.name))
}

/// `tally contract show`.
pub fn contract(cmd: ContractCommand, registry: &Registry) -> anyhow::Result<ExitCode> {
    let ContractCommand::Show { config, flow, json } = cmd;
    let contract = match config {
        Some(path) => {
            let cfg = Config::load(&path, registry)?;
            flow_of(&cfg, &flow)?
                .contract(registry)
                .map_err(anyhow::Error::msg)?
        }
        None => {
            let text = registry.contract_text(&flow).map_err(anyhow::Error::msg)?;
            registry
                .parse_contract(&flow, text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("the contract of projection {flow}"))?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&contract)?);
    } else {
        print!("{}", contract.render_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the evidence (JSON on stdout, a summary on stderr), publishes it to the contract's
/// evidence topic, and turns its confidence into the exit code.
pub(super) fn emit(
    cfg: &Config,
    contract: &Contract,
    ev: &Evidence,
    file: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let json = serde_json::to_string_pretty(ev)?;
    println!("{json}");
    if let Some(path) = file {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    let topic = contract.evidence_topic(&cfg.application_id);
    evidence::publish(
        &cfg.bootstrap_servers,
        &cfg.kafka,
        &topic,
        cfg.replication_factor,
        ev,
    )
    .with_context(|| format!("publishing evidence to `{topic}`"))?;
    eprintln!(
        "{} {}: {} ({} events, {} rows changed, {} repaired); evidence {} on `{topic}`",
        ev.kind,
        ev.scope,
        ev.confidence_status.to_uppercase(),
        ev.events_processed,
        ev.projection_rows_changed,
        ev.rows_repaired,
        ev.recovery_id
    );
    for r in &ev.reasons {
        eprintln!("  - {r}");
    }
    Ok(if ev.trusted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `tally reconcile`: a replay that only reports.
pub fn reconcile(args: ReconcileArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    let (cfg, plan, contract) = scoped_plan(&args, "reconcile", registry)?;
    let f = flow_of(&cfg, &args.target.flow)?;
    let ev = if args.against_source {
        anyhow::ensure!(
            args.scope.is_empty(),
            "--against-source compares every key; it takes no --scope"
        );
        against_source(&cfg, f, registry, args.wait)?
    } else {
        run_plan(f, &plan, registry)?
    };
    emit(&cfg, &contract, &ev, args.evidence_file.as_ref())
}

/// `tally reconcile --against-source` of flow `f`: its evidence, after waiting up to `wait`
/// seconds for the live side to agree.
pub(super) fn against_source(
    cfg: &Config,
    f: &FlowConfig,
    registry: &Registry,
    wait: u64,
) -> anyhow::Result<Evidence> {
    let (plan, contract) = plan(cfg, f, "reconcile", registry)?;
    let source = source_of(cfg, &contract, wait)?;
    let projection = registry
        .recoverable(f.projection_name())
        .map_err(anyhow::Error::msg)?;
    Ok((projection.against_source)(&plan, &source)?)
}

/// The source database and query a reconcile against the source trusts: the config's
/// `[source]` and the contract's postgres history.
fn source_of(cfg: &Config, contract: &Contract, wait: u64) -> anyhow::Result<Source> {
    let history = &contract.history;
    let (Some(table), Some(query)) = (&history.table, &contract.reconciliation.source_query) else {
        anyhow::bail!(
            "the contract of flow `{}` has no postgres history with a reconciliation.source_query",
            contract.flow
        );
    };
    let db = cfg.source.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the config has no [source] database to reconcile against")
    })?;
    Ok(Source {
        url: db.url.clone(),
        password: db.password.clone(),
        table: table.clone(),
        query: query.clone(),
        wait: Duration::from_secs(wait),
    })
}

/// `tally replay`: a dry run, or with `--apply` a signed repair by a named operator.
pub fn replay(args: ReplayArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !args.base.against_source,
        "--against-source is a reconcile: run `tally reconcile --against-source`"
    );
    let (cfg, mut plan, contract) = scoped_plan(&args.base, "replay", registry)?;
    let f = flow_of(&cfg, &args.base.target.flow)?;
    if args.apply {
        plan.apply = true;
        plan.signer = Some(signer(&cfg, &args.operator, "replay --apply")?);
    }
    plan.confirm_timeout = Duration::from_secs(args.confirm_timeout);
    let ev = run_plan(f, &plan, registry)?;
    emit(&cfg, &contract, &ev, args.base.evidence_file.as_ref())
}

/// The config, and the plan of a replay or reconcile over the scope the contract allows.
fn scoped_plan(
    args: &ReconcileArgs,
    kind: &'static str,
    registry: &Registry,
) -> anyhow::Result<(Config, Plan, Contract)> {
    let cfg = Config::load(&args.target.config, registry)?;
    let f = flow_of(&cfg, &args.target.flow)?;
    let (mut plan, contract) = plan(&cfg, f, kind, registry)?;
    plan.scope = Scope::parse(&args.scope)?;
    for (name, used) in [
        ("key", plan.scope.key.is_some()),
        ("time", plan.scope.time.is_some()),
        ("partition", plan.scope.partition.is_some()),
    ] {
        anyhow::ensure!(
            !used || contract.supports_scope(name),
            "the contract of flow `{}` does not allow {name} scopes",
            f.name
        );
    }
    Ok((cfg, plan, contract))
}

/// The operator of a state change and the key that vouches for them; refuses to go on without
/// a reason, an actor, and a key.
fn signer(cfg: &Config, args: &OperatorArgs, what: &str) -> anyhow::Result<Signer> {
    let reason = args
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{what} changes state: say why with --reason"))?;
    let actor = match (&args.actor, cfg.kafka.get("sasl.username")) {
        (Some(a), _) => a.clone(),
        (None, Some(user)) => format!("User:{user}"),
        (None, None) => anyhow::bail!("{what} changes state: name the operator with --actor"),
    };
    let key = crate::signing::signing_key(&cfg.control, args.key_id.as_deref(), &actor)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(Signer {
        key: key.clone(),
        operator: Operator {
            actor,
            key_id: key.id.clone(),
            host: crate::config::host_name().unwrap_or_else(|| "unknown".into()),
            reason: reason.to_string(),
        },
    })
}

/// Runs a replay plan with the flow's projection.
pub(super) fn run_plan(
    f: &FlowConfig,
    plan: &Plan,
    registry: &Registry,
) -> anyhow::Result<Evidence> {
    let projection = registry
        .recoverable(f.projection_name())
        .map_err(anyhow::Error::msg)?;
    Ok((projection.replay)(plan)?)
}

/// `tally dlq replay`: re-submits dead letters, signed for a named operator.
pub fn dlq(cmd: DlqCommand, registry: &Registry) -> anyhow::Result<ExitCode> {
    let DlqCommand::Replay {
        target,
        only_reason,
        operator,
        evidence_file,
    } = cmd;
    let cfg = Config::load(&target.config, registry)?;
    let f = flow_of(&cfg, &target.flow)?;
    let (mut plan, contract) = plan(&cfg, f, "dlq_replay", registry)?;
    plan.signer = Some(signer(&cfg, &operator, "dlq replay")?);
    let ev = dlq::replay(&plan, &f.dead_letter, only_reason.as_deref())?;
    emit(&cfg, &contract, &ev, evidence_file.as_ref())
}

/// `tally state get`.
pub fn state(cmd: StateCommand, registry: &Registry) -> anyhow::Result<ExitCode> {
    let StateCommand::Get {
        target,
        key,
        as_of,
        at_offset,
        explain,
    } = cmd;
    let cfg = Config::load(&target.config, registry)?;
    let f = flow_of(&cfg, &target.flow)?;
    let (plan, _) = plan(&cfg, f, "state", registry)?;
    let point = match (as_of, at_offset) {
        (Some(t), _) => Point::AsOf(
            tally_topology::time::parse_event_time(&t)
                .map_err(|e| anyhow::anyhow!("--as-of: {}", e.message))?,
        ),
        (None, Some(at)) => {
            let (p, o) = at
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--at-offset `{at}` is not PARTITION:OFFSET"))?;
            Point::AtOffset(p, o)
        }
        (None, None) => Point::Now,
    };
    let projection = registry
        .recoverable(f.projection_name())
        .map_err(anyhow::Error::msg)?;
    let answer = (projection.state_at)(&plan, &key, point, explain)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}
