//! `tally demo`: the README's main job. Starts a real local broker, runs the processor on a mixed
//! workload (duplicates, conflicts, poison), then checks every key against an independent fold.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::workload;
use anyhow::bail;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::registry::Registry;

use super::{ensure_input, load_spec, oracle_spec, DemoArgs, LoadArgs};

const PARTITIONS: i32 = 6;

fn say(msg: impl AsRef<str>) {
    eprintln!("\n==> {}", msg.as_ref());
}

/// Runs the demo end to end; exits non-zero when the independent check fails.
pub fn run(args: DemoArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    say(format!(
        "Starting a real Apache Kafka broker (KRaft) on 127.0.0.1:{}",
        args.kafka_port
    ));
    super::local::kafka(args.kafka_port, "up")?;
    let result = run_on_broker(&args, registry);
    if !args.keep_broker {
        say("Stopping the local broker (pass --keep-broker to keep it)");
        super::local::kafka(args.kafka_port, "down")?;
    }
    result
}

fn run_on_broker(args: &DemoArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    let bootstrap = format!("127.0.0.1:{}", args.kafka_port);
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let state_dir = std::env::temp_dir().join(format!("tally-demo-{run_id}"));
    let t = |s: &str| format!("demo-{run_id}.{s}");
    let config = format!(
        r#"
application_id = "tally-demo-{run_id}"
bootstrap_servers = "{bootstrap}"
state_dir = "{state}"
processing_guarantee = "exactly_once"
commit_interval_ms = 100
instance_id = "demo"
[[flows]]
name = "inventory"
input = "{ii}"
output = "{io}"
dead_letter = "{id}"
[[flows]]
name = "ledger"
input = "{li}"
output = "{lo}"
dead_letter = "{ld}"
[http]
listen = "127.0.0.1:0"
"#,
        state = state_dir.display(),
        ii = t("inventory.events"),
        io = t("inventory.availability"),
        id = t("inventory.events.dlq"),
        li = t("ledger.events"),
        lo = t("ledger.balances"),
        ld = t("ledger.events.dlq"),
    );
    let cfg = Config::from_toml(&config, |_| None, registry)?;
    let passthrough = BTreeMap::new();
    for f in &cfg.flows {
        ensure_input(&bootstrap, &passthrough, &f.input, PARTITIONS)?;
    }

    say("Starting the tally processor (exactly_once, 2 flows, 6 partitions each)");
    let shutdown = Arc::new(AtomicBool::new(false));
    let processor = {
        let (cfg, shutdown, registry) = (cfg.clone(), Arc::clone(&shutdown), registry.clone());
        std::thread::spawn(move || crate::processor::run(cfg, &registry, shutdown))
    };

    let mut loads = Vec::new();
    for (flow, events, keys) in [
        ("inventory", args.events.unwrap_or(100_000), 2_000),
        ("ledger", args.events.unwrap_or(100_000) / 2, 1_000),
    ] {
        let load = LoadArgs {
            flow: flow.into(),
            events,
            keys,
            duplicates: 0.05,
            invalid: 0.01,
            conflicts: 0.002,
            rate: 0,
            seed: 7,
            topic: Some(t(&format!("{flow}.events"))),
            partitions: PARTITIONS,
            bootstrap: bootstrap.clone(),
        };
        let (spec, topic) = load_spec(&load)?;
        say(format!(
            "Loading {events} {flow} events (5% duplicates, 0.2% conflicting ids, 1% poison)"
        ));
        let report = workload::produce(&bootstrap, &passthrough, &topic, &spec)?;
        eprintln!("    {}", serde_json::to_string(&report)?);
        loads.push(report);
    }

    say("Waiting until the processor has committed every input record");
    let inputs: Vec<&str> = cfg.flows.iter().map(|f| f.input.as_str()).collect();
    let started = Instant::now();
    loop {
        if processor.is_finished() {
            bail!("the processor stopped early: {:?}", processor.join());
        }
        let lag = crate::kafka::progress::group_lag(
            &bootstrap,
            &passthrough,
            &cfg.application_id,
            &inputs,
        )
        .unwrap_or(i64::MAX);
        if lag == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the processor did not catch up within 10 minutes (lag {lag})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    shutdown.store(true, Ordering::Release);
    match processor.join() {
        Ok(r) => {
            r?;
        }
        Err(_) => bail!("the processor thread panicked"),
    }
    eprintln!(
        "    caught up {:.1} s after the load finished",
        elapsed.as_secs_f64()
    );

    say("What the processor counted (committed)");
    let metrics = crate::metrics::install().render();
    let mut counted: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            [
                "tally_events_processed_total",
                "tally_duplicates_skipped_total",
                "tally_dead_lettered_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .collect();
    counted.sort_unstable();
    for line in counted {
        eprintln!("    {line}");
    }

    let mut trusted = true;
    for f in &cfg.flows {
        say(format!("A few `{}` lines from {}", f.name, f.output));
        for line in sample(&bootstrap, &f.output, 3)? {
            eprintln!("    {line}");
        }
        say(format!(
            "Independent recomputation of every `{}` key from {}",
            f.name, f.input
        ));
        let report = crate::oracle::check(&oracle_spec(&cfg, f, false, true)?)?;
        eprintln!(
            "    events checked {}, applied {}, duplicates {}, conflicts {}, invalid {}",
            report.events_checked,
            report.valid_applied,
            report.duplicates,
            report.conflicts,
            report.invalid
        );
        eprintln!(
            "    keys expected {}, in output {}, matched {}; lost {}, double-applied {}, wrong {}, extra {}",
            report.keys_expected,
            report.keys_in_output,
            report.keys_matched,
            report.lost,
            report.double_applied,
            report.wrong,
            report.extra_keys
        );
        eprintln!(
            "    dead letters expected {}, found {}, by reason {:?}",
            report.dead_letters_expected, report.dead_letters_found, report.dead_letters_by_reason
        );
        for m in &report.mismatches {
            eprintln!("    MISMATCH {m}");
        }
        eprintln!(
            "    verdict: {}",
            if report.pass {
                "TRUSTED"
            } else {
                "NOT TRUSTED"
            }
        );
        trusted &= report.pass;
        println!("{}", serde_json::to_string(&report)?);
    }
    for f in &cfg.flows {
        say(format!(
            "tally reconcile --flow {}: rebuild from history under the recovery contract, with evidence",
            f.name
        ));
        let (plan, contract) = super::recovery::plan(&cfg, f, "reconcile", registry)?;
        let ev = super::recovery::run_plan(f, &plan, registry)?;
        super::recovery::emit(&cfg, &contract, &ev, None)?;
        trusted &= ev.trusted();
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    say(if trusted {
        "Every output key equals the independent recomputation, and every reconciliation is trusted."
    } else {
        "Some keys differ from the independent recomputation or a reconciliation is untrusted (see above)."
    });
    Ok(if trusted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The first `n` records of partition 0 of a topic, as text.
fn sample(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let consumer =
        crate::kafka::clients::quiet_reader(bootstrap, &BTreeMap::new(), "tally-demo-sample")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    Ok(out)
}
