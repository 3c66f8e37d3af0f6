use super::*;
use rstest::rstest;

const MINIMAL: &str = r#"
application_id = "tally-inventory"
bootstrap_servers = "127.0.0.1:9092"
[[flows]]
name = "inventory"
input = "inventory.events"
output = "inventory.availability"
dead_letter = "inventory.events.dlq"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn builtin() -> crate::registry::Registry {
    crate::registry::Registry::builtin()
}

#[test]
fn defaults_match_kafka_streams_names_and_values() {
    let cfg = Config::from_toml(MINIMAL, no_env, &builtin()).unwrap();
    assert_eq!(cfg.processing_guarantee, ProcessingGuarantee::ExactlyOnce);
    assert_eq!(cfg.commit_interval_ms, 100);
    assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/tally"));
    assert_eq!(cfg.dedupe_retention, Duration::from_secs(7 * 86400));
    assert_eq!(cfg.http.listen.to_string(), "127.0.0.1:9464");
    // statestore.cache.max.bytes: 10 MiB.
    assert_eq!(cfg.statestore_cache_max_bytes, 10 * 1024 * 1024);
    // num.standby.replicas: 0; group.instance.id unset.
    assert_eq!(cfg.num_standby_replicas, 0);
    assert!(!cfg.static_membership);
    assert_eq!(
        cfg.flows[0].changelog_topic(&cfg.application_id),
        "tally-inventory-inventory-changelog"
    );
}

#[test]
fn env_overrides_win_and_are_typed() {
    let env = |k: &str| match k {
        "TALLY_COMMIT_INTERVAL_MS" => Some("250".to_string()),
        "TALLY_PROCESSING_GUARANTEE" => Some("at_least_once".to_string()),
        "TALLY_HTTP_LISTEN" => Some("127.0.0.1:1".to_string()),
        "TALLY_STATESTORE_CACHE_MAX_BYTES" => Some("0".to_string()),
        _ => None,
    };
    let cfg = Config::from_toml(MINIMAL, env, &builtin()).unwrap();
    assert_eq!(cfg.statestore_cache_max_bytes, 0);
    assert_eq!(cfg.commit_interval_ms, 250);
    assert_eq!(cfg.processing_guarantee, ProcessingGuarantee::AtLeastOnce);
    assert_eq!(cfg.http.listen.port(), 1);
}

#[rstest]
#[case::unknown_key("typo_key = 1\n", "typo_key")]
#[case::zero_interval("commit_interval_ms = 0\n", "commit_interval_ms")]
#[case::bad_guarantee("processing_guarantee = \"maybe_once\"\n", "maybe_once")]
#[case::bad_retention("dedupe_retention = \"7 weeks\"\n", "7 weeks")]
#[case::bad_app_id("application_id = \"has space\"\n", "application_id")]
#[case::static_without_instance("static_membership = true\n", "static_membership")]
#[case::too_many_standbys("num_standby_replicas = 9\n", "num_standby_replicas")]
#[case::server_without_port("application_server = \"tally-0.tally\"\n", "application_server")]
#[case::server_with_path("application_server = \"tally-0/x:8080\"\n", "application_server")]
fn a_bad_config_fails_naming_the_key(#[case] line: &str, #[case] named: &str) {
    // Later keys of the same name would be a TOML error; put the line first and drop the original.
    let text = format!(
        "{line}{}",
        MINIMAL
            .lines()
            .filter(|l| !l.starts_with(line.split('=').next().unwrap().trim()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let err = Config::from_toml(&text, no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(err.contains(named), "`{err}` should name `{named}`");
}

#[test]
fn an_unknown_projection_is_refused() {
    let text = MINIMAL.replace("name = \"inventory\"", "name = \"payroll\"");
    let err = Config::from_toml(&text, no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(err.contains("flows[0].projection"), "{err}");
}

#[test]
fn managed_kafka_keys_cannot_be_overridden() {
    let text = format!("{MINIMAL}\n[kafka]\n\"group.id\" = \"other\"\n");
    let err = Config::from_toml(&text, no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(err.contains("kafka.group.id"), "{err}");
}

#[test]
fn kafka_passthrough_keeps_settings_as_is() {
    let text = format!("{MINIMAL}\n[kafka]\n\"security.protocol\" = \"plaintext\"\n");
    let cfg = Config::from_toml(&text, no_env, &builtin()).unwrap();
    assert_eq!(cfg.kafka["security.protocol"], "plaintext");
}

#[rstest]
#[case("7d", 7 * 86_400_000)]
#[case("36h", 36 * 3_600_000)]
#[case("90m", 90 * 60_000)]
#[case("600s", 600_000)]
#[case("250ms", 250)]
#[case("1500", 1500)]
fn durations_parse(#[case] text: &str, #[case] ms: u64) {
    assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(ms));
}

/// A flow pointing at a contract file in a scratch directory.
fn with_contract(body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.toml");
    std::fs::write(&path, body).unwrap();
    let text = MINIMAL.replace(
        "dead_letter = \"inventory.events.dlq\"",
        &format!(
            "dead_letter = \"inventory.events.dlq\"\ncontract = \"{}\"",
            path.display()
        ),
    );
    (dir, text)
}

#[test]
fn the_builtin_contract_is_used_when_none_is_named() {
    let cfg = Config::from_toml(MINIMAL, no_env, &builtin()).unwrap();
    let contract = cfg.flows[0].contract(&builtin()).unwrap();
    assert_eq!(contract.projection.name, "inventory");
}

#[test]
fn a_valid_contract_file_is_accepted() {
    let contract = <tally_topology::Inventory as tally_topology::Projection>::CONTRACT;
    let (_dir, text) = with_contract(contract);
    assert!(Config::from_toml(&text, no_env, &builtin()).is_ok());
}

#[rstest]
#[case::wrong_projection(
    "name = \"inventory\"\nversion",
    "name = \"ledger\"\nversion",
    "projection"
)]
#[case::unreplayable_version("schema_versions = [1, 2]", "schema_versions = [1, 7]", "7")]
#[case::unknown_check(
    "\"sellable_non_negative\",",
    "\"sellable_is_pink\",",
    "sellable_is_pink"
)]
#[case::unknown_field("[replay]", "[replay]\nscopes_typo = 1", "scopes_typo")]
fn a_bad_contract_stops_the_start_naming_the_flow_and_field(
    #[case] from: &str,
    #[case] to: &str,
    #[case] named: &str,
) {
    let contract = <tally_topology::Inventory as tally_topology::Projection>::CONTRACT;
    assert!(contract.contains(from), "the case edits `{from}`");
    let (_dir, text) = with_contract(&contract.replacen(from, to, 1));
    let err = Config::from_toml(&text, no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(err.contains("flows[0].contract"), "{err}");
    assert!(err.contains(named), "`{err}` should name `{named}`");
}

#[test]
fn a_missing_contract_file_stops_the_start() {
    let text = MINIMAL.replace(
        "dead_letter = \"inventory.events.dlq\"",
        "dead_letter = \"inventory.events.dlq\"\ncontract = \"/nonexistent/inventory.toml\"",
    );
    let err = Config::from_toml(&text, no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("flows[0].contract") && err.contains("cannot read"),
        "{err}"
    );
}

#[rstest]
#[case("TALLY_INSTANCE_ID", "1")]
#[case("TALLY_APPLICATION_ID", "2024")]
#[case("TALLY_BOOTSTRAP_SERVERS", "10.0.0.1:9092")]
fn a_string_key_from_the_environment_is_taken_as_text(#[case] var: &str, #[case] value: &str) {
    let env = |k: &str| (k == var).then(|| value.to_string());
    let cfg = Config::from_toml(MINIMAL, env, &builtin()).unwrap();
    let got = match var {
        "TALLY_INSTANCE_ID" => cfg.instance_id.clone().unwrap(),
        "TALLY_APPLICATION_ID" => cfg.application_id.clone(),
        _ => cfg.bootstrap_servers.clone(),
    };
    assert_eq!(got, value);
}

#[test]
fn kafka_settings_may_be_written_as_natural_dotted_toml() {
    let text = format!(
        "{MINIMAL}\n[kafka]\nsecurity.protocol = \"SASL_SSL\"\nsasl.mechanisms = \"SCRAM-SHA-512\"\nsession.timeout.ms = 6000\n"
    );
    let cfg = Config::from_toml(&text, no_env, &builtin()).unwrap();
    assert_eq!(cfg.kafka["security.protocol"], "SASL_SSL");
    assert_eq!(cfg.kafka["sasl.mechanisms"], "SCRAM-SHA-512");
    assert_eq!(cfg.kafka["session.timeout.ms"], "6000");
}

#[test]
fn secrets_come_from_the_environment_and_never_show_in_debug() {
    let text = format!(
        "{MINIMAL}\n[http]\ntoken = {{ env = \"T\" }}\n[kafka]\n\"sasl.password\" = {{ env = \"P\" }}\n\
         [[control.keys]]\nid = \"ops\"\nsecret = {{ env = \"K\" }}\n"
    );
    let env = |k: &str| match k {
        "T" => Some("token-from-env-config-test".to_string()),
        "P" => Some("password-from-env-config-test".to_string()),
        "K" => Some("control-key-from-env-config-test".to_string()),
        _ => None,
    };
    let cfg = Config::from_toml(&text, env, &builtin()).unwrap();
    assert_eq!(cfg.kafka["sasl.password"], "password-from-env-config-test");
    assert_eq!(
        cfg.http.token.as_ref().unwrap().expose(),
        "token-from-env-config-test"
    );
    let debug = format!("{cfg:?}");
    for secret in ["token-from", "password-from", "control-key-from"] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

#[test]
fn a_host_name_listen_address_is_accepted() {
    let text = format!("{MINIMAL}\n[http]\nlisten = \"localhost:9464\"\n");
    let cfg = Config::from_toml(&text, no_env, &builtin()).unwrap();
    assert!(cfg.http.listen.ip().is_loopback());
}

#[rstest]
#[case::short_control_key(
    "[[control.keys]]\nid = \"ops\"\nsecret = \"too-short\"\n",
    "control.keys[0].secret"
)]
#[case::unset_secret_env(
    "[kafka]\nsasl.password = { env = \"TALLY_NEVER_SET_4711\" }\n",
    "kafka.sasl.password"
)]
#[case::stall_timeout("[health]\nstall_timeout = \"0s\"\n", "health.stall_timeout")]
fn a_bad_security_or_health_setting_fails_naming_it(#[case] table: &str, #[case] named: &str) {
    let err = Config::from_toml(&format!("{MINIMAL}\n{table}"), no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(err.contains(named), "`{err}` should name `{named}`");
}

#[test]
fn a_debezium_flow_maps_its_columns_to_event_fields() {
    let text = format!(
        "{MINIMAL}format = \"debezium_cdc\"\n[flows.map]\nlocation_id = {{ field = \"location\" }}\n\
         schema_version = {{ value = 1 }}\nevent_id = {{ header = \"id\" }}\n"
    );
    let cfg = Config::from_toml(&text, no_env, &builtin()).unwrap();
    let f = &cfg.flows[0];
    assert_eq!(f.format, Format::DebeziumCdc);
    assert_eq!(f.map["location_id"], FieldSource::Field("location".into()));
    assert_eq!(
        f.map["schema_version"],
        FieldSource::Value(serde_json::json!(1))
    );
    assert_eq!(f.map["event_id"], FieldSource::Header("id".into()));
}

#[rstest]
#[case::map_on_json("[flows.map]\nsku = { field = \"x\" }\n", "flows[0].map")]
#[case::unknown_format("format = \"avro\"\n", "format")]
#[case::unknown_source(
    "format = \"debezium_cdc\"\n[flows.map]\nsku = { column = \"x\" }\n",
    "column"
)]
fn a_bad_input_format_fails_the_start(#[case] lines: &str, #[case] named: &str) {
    let err = Config::from_toml(&format!("{MINIMAL}{lines}"), no_env, &builtin()).unwrap_err();
    assert!(err.to_string().contains(named), "{err}");
}

#[test]
fn the_source_database_password_comes_from_the_environment() {
    let text = format!(
        "{MINIMAL}[source]\nurl = \"postgres://tally@127.0.0.1:15432/tally\"\npassword = {{ env = \"PGPW\" }}\n"
    );
    let env = |k: &str| (k == "PGPW").then(|| "pg-secret-value".to_string());
    let cfg = Config::from_toml(&text, env, &builtin()).unwrap();
    let source = cfg.source.unwrap();
    assert_eq!(source.password.unwrap().expose(), "pg-secret-value");
}

#[test]
fn a_password_inside_the_source_url_is_refused_without_being_shown() {
    let text = format!("{MINIMAL}[source]\nurl = \"postgres://tally:hunter22@db/tally\"\n");
    let err = Config::from_toml(&text, no_env, &builtin())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("source.url") && !err.contains("hunter22"),
        "{err}"
    );
}

#[rstest]
#[case::inventory("inventory")]
#[case::ledger("ledger")]
fn the_postgres_pipelines_contracts_are_valid(#[case] flow: &str) {
    let path = format!(
        "{}/deploy/local/sql/contracts/{flow}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = MINIMAL.replace(
        "name = \"inventory\"",
        &format!("name = \"{flow}\"\ncontract = \"{path}\"\nformat = \"debezium_outbox\""),
    );
    let cfg = Config::from_toml(&text, no_env, &builtin()).unwrap();
    let contract = cfg.flows[0].contract(&builtin()).unwrap();
    assert_eq!(contract.history.kind, "postgres");
    assert!(
        contract
            .reconciliation
            .source_query
            .unwrap()
            .contains("/locations/")
            == (flow == "inventory")
    );
}
