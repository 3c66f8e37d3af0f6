//! Against the run's secured broker (SASL_SSL with SCRAM-SHA-512, mTLS, StandardAuthorizer with
//! ACLs): a flow runs exactly-once under the principal's ACLs on either listener, a start with a
//! wrong password, an unknown CA or a missing ACL ends within 30 s naming the cause, and no
//! secret appears in anything tally prints.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_trusted, secure, Processor, Setup, CONTROL_KEY};
use tally::workload::Flow;

const LIMIT: Duration = Duration::from_secs(180);

/// A flow on the secured broker whose processors run as `tally` with `settings`.
fn secured(name: &str, settings: &str) -> Setup {
    secure().setup(name, Flow::Inventory, 3, settings)
}

fn exactly_once_over(name: &str, settings: &str) {
    let setup = secured(name, settings);
    let started = Instant::now();
    let p = Processor::start(&setup, "a", &[]);
    p.wait_ready(3, LIMIT);
    eprintln!(
        "secured start ({settings}) to ready: {:?}",
        started.elapsed()
    );
    setup.load(3_000, 300, 0.05, 0.01, 0.002, 11);
    setup.wait_caught_up(LIMIT);
    assert_trusted(&setup.oracle());
    p.terminate();
}

#[test]
fn a_flow_runs_exactly_once_over_sasl_ssl_with_scram() {
    exactly_once_over("sec-scram", "tally-sasl");
}

#[test]
fn a_flow_runs_exactly_once_over_mtls() {
    exactly_once_over("sec-mtls", "tally-mtls");
}

/// Starts a processor that must stop within 30 s; returns everything it printed.
fn fails_fast(setup: &Setup, env: &[(&str, &str)], needles: &[&str]) -> String {
    let mut p = Processor::start(setup, "a", env);
    let started = Instant::now();
    while !p.exited() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after 30 s; log {}",
            p.log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = printed(&p);
    for n in needles {
        assert!(log.contains(n), "the error should say `{n}`:\n{log}");
    }
    log
}

/// stderr and stdout of a processor.
fn printed(p: &Processor) -> String {
    let err = std::fs::read_to_string(&p.log).unwrap_or_default();
    let out = std::fs::read_to_string(p.log.with_extension("stdout")).unwrap_or_default();
    err + &out
}

#[test]
fn a_wrong_password_ends_the_start_naming_authentication() {
    let mut setup = secured("sec-wrong-pw", "tally-sasl");
    let planted = "planted-wrong-password-4711";
    setup.kafka.insert("sasl.password".into(), planted.into());
    let log = fails_fast(&setup, &[], &["refused this client", "uthentication"]);
    assert!(!log.contains(planted), "the password was printed:\n{log}");
}

#[test]
fn an_unknown_ca_ends_the_start_naming_the_tls_handshake() {
    let mut setup = secured("sec-unknown-ca", "tally-sasl");
    let untrusted = secure().dir.join("untrusted-ca.pem");
    setup
        .kafka
        .insert("ssl.ca.location".into(), untrusted.display().to_string());
    fails_fast(
        &setup,
        &[],
        // librdkafka says "SSL handshake failed: .. certificate verify failed" or only the latter.
        &["refused this client", "certificate verify failed"],
    );
}

#[test]
fn a_principal_without_the_acls_ends_the_start_naming_the_topic() {
    let mut setup = secured("sec-no-acl", "tally-sasl");
    setup.kafka = secure().settings("stranger-sasl");
    fails_fast(&setup, &[], &["not authorized", &setup.input.clone()]);
}

/// Every secret the config holds, planted where tally reads them.
struct Planted {
    password: String,
    token: &'static str,
    jaas: &'static str,
}

fn planted_env(p: &Planted) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_PASSWORD_UNDER_TEST", p.password.clone()),
        ("TALLY_HTTP_TOKEN_UNDER_TEST", p.token.to_string()),
    ]
}

fn assert_not_printed(what: &str, text: &str, p: &Planted) {
    for s in [p.password.as_str(), p.token, p.jaas, CONTROL_KEY] {
        assert!(!text.contains(s), "{what} shows a secret:\n{text}");
    }
}

#[test]
fn no_secret_is_printed_by_a_running_or_a_failing_processor() {
    let b = secure();
    let planted = Planted {
        password: b.settings("tally-sasl")["sasl.password"].clone(),
        token: "planted-http-token-0815",
        jaas: "planted-jaas-secret-2342",
    };
    let env = planted_env(&planted);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // A run that works: password and HTTP token from the environment, logs at debug.
    let mut setup = secured("sec-secrets", "tally-sasl");
    setup.kafka.remove("sasl.password");
    setup.kafka_raw = "\"sasl.password\" = { env = \"KAFKA_PASSWORD_UNDER_TEST\" }\n".into();
    setup.extra = "[http.token]\nenv = \"TALLY_HTTP_TOKEN_UNDER_TEST\"\n".into();
    let mut with_debug = env.clone();
    with_debug.push(("RUST_LOG", "debug"));
    let p = Processor::start(&setup, "a", &with_debug);
    p.wait_ready(3, LIMIT);
    setup.load(500, 50, 0.05, 0.01, 0.0, 12);
    setup.wait_caught_up(LIMIT);
    let (code, _) = p.get("/state/inventory/sku-1").unwrap();
    assert_eq!(code, 401, "/state needs the token");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (_, body) = p.get(path).unwrap();
        assert_not_printed(path, &body, &planted);
    }
    p.terminate();

    // A run whose config librdkafka refuses, naming the setting it does not know.
    let mut bad = setup.clone();
    bad.kafka_raw
        .push_str(&format!("\"sasl.jaas.config\" = \"{}\"\n", planted.jaas));
    let refused = fails_fast(&bad, &env, &["sasl.jaas.config"]);
    assert_not_printed("a refused config", &refused, &planted);

    // A run the broker refuses: a wrong password (planted too).
    let mut wrong = setup.clone();
    wrong.kafka_raw = format!("\"sasl.password\" = \"{}\"\n", planted.jaas);
    let refused = fails_fast(&wrong, &env, &["refused this client"]);
    assert_not_printed("a refused login", &refused, &planted);

    for entry in std::fs::read_dir(&setup.dir).unwrap().flatten() {
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|e| e == "log" || e == "stdout")
        {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert_not_printed(&path.display().to_string(), &text, &planted);
        }
    }
}

#[test]
fn http_serves_tls_and_state_needs_the_bearer_token() {
    let b = secure();
    let mut setup = Setup::new("https", Flow::Inventory, 1);
    let (cert, key) = (b.dir.join("broker.crt"), b.dir.join("broker.key"));
    setup.extra = format!(
        "token = \"planted-token-https\"\n[http.tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let p = Processor::start(&setup, "a", &[]);
    let curl = |path: &str, token: Option<&str>| -> (String, String) {
        let url = format!("https://127.0.0.1:{}{path}", p.http_port);
        let mut c = Command::new("curl");
        c.args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(b.dir.join("ca.pem"))
            .arg(&url);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.to_string(), body.to_string())
    };
    let started = Instant::now();
    while curl("/readyz", None).0 != "200" {
        assert!(started.elapsed() < LIMIT, "no HTTPS answer");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(curl("/state/inventory/sku-1", None).0, "401");
    assert_eq!(curl("/state/inventory/sku-1", Some("wrong")).0, "401");
    let (code, body) = curl("/state/inventory/sku-1", Some("planted-token-https"));
    assert_eq!(code, "404", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("sku-1"));
}
