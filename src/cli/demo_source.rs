//! `tally demo --source postgres`: the whole pipeline on this machine. A marketplace writes stock
//! movements and postings to PostgreSQL with an outbox row each; Debezium in Kafka Connect relays
//! them; tally projects them. Connect is killed mid-load so rows are relayed twice, and the run
//! ends with a reconcile of every key against PostgreSQL.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::local::{self, Connect, Outbox, Postgres};
use super::{ensure_input, DemoArgs};
use crate::config::Config;
use crate::registry::Registry;
use crate::workload::postgres::{self as writer, PgSpec};
use crate::workload::Flow;

const PARTITIONS: i32 = 6;

fn say(msg: impl AsRef<str>) {
    eprintln!("\n==> {}", msg.as_ref());
}

/// Waits until the processor has every input partition of its flows assigned and restored, so
/// the load's latency is not its start-up.
fn wait_ready(
    cfg: &Config,
    processor: &std::thread::JoinHandle<
        Result<std::net::SocketAddr, crate::processor::ProcessorError>,
    >,
) -> anyhow::Result<()> {
    let want = (PARTITIONS as usize * cfg.flows.len()) as f64;
    let started = Instant::now();
    loop {
        let text = crate::metrics::install().render();
        let gauge = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        if gauge("tally_partitions_assigned") == Some(want)
            && gauge("tally_partitions_restoring") == Some(0.0)
        {
            return Ok(());
        }
        if processor.is_finished() {
            bail!("the processor stopped before it was ready");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the processor was not ready within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the pipeline demo; exits non-zero unless every reconcile against PostgreSQL is trusted.
pub fn run(args: &DemoArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    say(format!(
        "Starting PostgreSQL (127.0.0.1:{}), a Kafka broker (127.0.0.1:{}) and Kafka Connect with Debezium (127.0.0.1:{})",
        args.pg_port, args.kafka_port, args.connect_port
    ));
    let t0 = Instant::now();
    let pg = Postgres::up(args.pg_port)?;
    local::kafka(args.kafka_port, "up")?;
    let bootstrap = format!("127.0.0.1:{}", args.kafka_port);
    let connect = Connect::up(args.connect_port, &bootstrap)?;
    eprintln!("    servers up in {:.1} s", t0.elapsed().as_secs_f64());
    let result = on_servers(args, registry, &pg, &connect);
    if !args.keep_broker {
        say("Stopping Kafka Connect, the broker and PostgreSQL (pass --keep-broker to keep them)");
        for r in [
            connect.ctl("down"),
            local::kafka(args.kafka_port, "down"),
            pg.ctl("down"),
        ] {
            if let Err(e) = r {
                eprintln!("    {e:#}");
            }
        }
    }
    result
}

fn on_servers(
    args: &DemoArgs,
    registry: &Registry,
    pg: &Postgres,
    connect: &Connect,
) -> anyhow::Result<ExitCode> {
    let bootstrap = &connect.bootstrap;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let database = format!("demo_{run_id}");
    pg.createdb(&database)?;
    let prefix = format!("demo-pg-{run_id}");
    let state_dir = std::env::temp_dir().join(format!("tally-demo-pg-{run_id}"));
    let contracts = local::scripts()?.join("sql/contracts");
    let password_file = pg.password_file()?;
    let flow = |name: &str| {
        format!(
            "[[flows]]\nname = \"{name}\"\ninput = \"{prefix}.{name}\"\noutput = \"{prefix}.{name}.out\"\n\
             dead_letter = \"{prefix}.{name}.dlq\"\nformat = \"debezium_outbox\"\ncontract = \"{}\"\n",
            local::toml_path(&contracts.join(format!("{name}.toml")))
        )
    };
    let config = format!(
        "application_id = \"tally-{prefix}\"\nbootstrap_servers = \"{bootstrap}\"\nstate_dir = \"{}\"\n\
         instance_id = \"demo\"\n{}{}[http]\nlisten = \"127.0.0.1:0\"\n\
         [source]\nurl = \"{}\"\npassword = {{ file = \"{}\" }}\n",
        local::toml_path(&state_dir),
        flow("inventory"),
        flow("ledger"),
        pg.url(&database),
        local::toml_path(&password_file),
    );
    let cfg = Config::from_toml(&config, |_| None, registry)?;
    for f in &cfg.flows {
        ensure_input(bootstrap, &BTreeMap::new(), &f.input, PARTITIONS)?;
    }

    say("Registering Debezium's outbox connector (pgoutput, the outbox event router)");
    connect.register_outbox(&Outbox {
        name: &prefix,
        postgres: pg,
        database: &database,
        route: &format!("{prefix}.${{routedByValue}}"),
        snapshot_mode: "initial",
    })?;

    say("Starting the tally processor (exactly_once, 2 flows in the debezium_outbox format)");
    let shutdown = Arc::new(AtomicBool::new(false));
    let processor = {
        let (cfg, shutdown, registry) = (cfg.clone(), Arc::clone(&shutdown), registry.clone());
        std::thread::spawn(move || crate::processor::run(cfg, &registry, shutdown))
    };

    let events = args.events.unwrap_or(20_000);
    let specs = [
        PgSpec {
            flow: Flow::Inventory,
            events,
            keys: 500,
            invalid: 0.01,
            batch: 50,
            rate: args.rate,
            seed: 7,
        },
        PgSpec {
            flow: Flow::Ledger,
            events: events / 2,
            keys: 250,
            invalid: 0.01,
            batch: 50,
            rate: args.rate / 2,
            seed: 7,
        },
    ];
    wait_ready(&cfg, &processor)?;
    say(format!(
        "Writing {events} stock movements and {} postings to PostgreSQL at {} rows/s, each with its outbox row in one transaction (1% poison payloads){}",
        events / 2,
        args.rate,
        if args.no_kill { "" } else { "; Kafka Connect is killed halfway" }
    ));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (url, password, written) = (pg.url(&database), pg.password()?, Arc::clone(&written));
        std::thread::spawn(move || -> anyhow::Result<Vec<writer::PgReport>> {
            let mut client = writer::connect(&url, Some(password.expose()))?;
            let mut reports = Vec::new();
            let mut before = 0;
            for spec in &specs {
                let report = writer::write(&mut client, spec, |r| {
                    written.store(before + r.events, Ordering::Release);
                })?;
                before += report.events;
                reports.push(report);
            }
            Ok(reports)
        })
    };
    let total = events + events / 2;
    while written.load(Ordering::Acquire) < total / 2 && !writer.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !args.no_kill {
        say("kill -9 of Kafka Connect mid-load, then a start: Debezium resumes from its last flushed position and relays those rows again");
        connect.ctl("kill")?;
        connect.ctl("start")?;
    }
    let reports = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    for r in &reports {
        eprintln!("    {}", serde_json::to_string(r)?);
    }

    let mut trusted = true;
    for f in &cfg.flows {
        say(format!(
            "tally reconcile --flow {} --against-source: every key's state and output against the SQL fold of {}",
            f.name,
            f.contract(registry).map_err(anyhow::Error::msg)?.history.table.unwrap_or_default()
        ));
        let ev = super::recovery::against_source(&cfg, f, registry, 240)?;
        if let Some(s) = &ev.source {
            eprintln!(
                "    {} keys, {} values compared at LSN {} after {} attempt(s); {} mismatches",
                s.keys_compared, s.values_compared, s.snapshot_lsn, s.attempts, s.mismatches_total
            );
            for m in s.mismatches.iter().take(10) {
                eprintln!(
                    "    MISMATCH {}{}: source {:?}, state {:?}, output {:?}",
                    m.key, m.path, m.source, m.state, m.output
                );
            }
        }
        eprintln!(
            "    verdict: {}",
            if ev.trusted() {
                "TRUSTED"
            } else {
                "NOT TRUSTED"
            }
        );
        trusted &= ev.trusted();
        println!("{}", serde_json::to_string(&ev)?);
    }

    say("What the processor counted (committed)");
    let metrics = crate::metrics::install().render();
    for name in [
        "tally_events_processed_total",
        "tally_duplicates_skipped_total",
        "tally_dead_lettered_total",
        "tally_records_skipped_total",
    ] {
        for line in metrics.lines().filter(|l| l.starts_with(name)) {
            eprintln!("    {line}");
        }
    }
    for f in &cfg.flows {
        let q = |p| {
            crate::metrics::histogram_quantile(
                &metrics,
                "tally_source_to_committed_seconds",
                &f.name,
                p,
            )
        };
        if let (Some(p50), Some(p99)) = (q(0.5), q(0.99)) {
            eprintln!(
                "    {}: change relayed by Debezium to projection committed p50 {p50:.3} s, p99 {p99:.3} s (interpolated in histogram buckets{})",
                f.name,
                if args.no_kill { "" } else { "; the Connect outage is in it" }
            );
        }
    }
    shutdown.store(true, Ordering::Release);
    match processor.join() {
        Ok(r) => drop(r.context("the processor")?),
        Err(_) => bail!("the processor thread panicked"),
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    say(if trusted {
        "Every key equals PostgreSQL's fold of its history: TRUSTED."
    } else {
        "Some keys differ from PostgreSQL's fold of their history (see above): NOT TRUSTED."
    });
    Ok(if trusted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
