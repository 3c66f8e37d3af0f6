//! The run's secured broker (TLS, SCRAM, mTLS, ACLs) and its client settings, for the security
//! tests; started once per run like the plain one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::Setup;

/// The run's secured broker (SASL_SSL + SCRAM, mTLS, ACLs): `TALLY_TEST_SECURE_DIR` names the
/// secure directory of one already up (deploy/local/test starts it), else one is started on
/// `TALLY_TEST_SECURE_PORT` (19192).
pub struct SecureBroker {
    pub dir: PathBuf,
    pub port: u16,
}

pub fn secure() -> &'static SecureBroker {
    static SECURE: OnceLock<SecureBroker> = OnceLock::new();
    SECURE.get_or_init(|| {
        let port: u16 = std::env::var("TALLY_TEST_SECURE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(19192);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = match std::env::var("TALLY_TEST_SECURE_DIR") {
            Ok(d) => PathBuf::from(d),
            Err(_) => {
                let status = Command::new(root.join("deploy/local/kafka"))
                    .args(["up", "--secure"])
                    .env("KAFKA_PORT", port.to_string())
                    .status()
                    .expect("run deploy/local/kafka up --secure");
                assert!(status.success(), "the secured test broker did not start");
                root.join(format!("deploy/local/run/{port}/secure"))
            }
        };
        SecureBroker { dir, port }
    })
}

impl SecureBroker {
    /// A setup on this broker: the test's own clients are the admin, the processors run as
    /// `tally` with the `settings` file (e.g. `tally-sasl`) on the listener it names, with the
    /// ACLs `grant` gives.
    pub fn setup(&self, name: &str, flow: super::Flow, partitions: i32, settings: &str) -> Setup {
        let mut setup = Setup::with_clients(
            &self.sasl(),
            self.settings("admin-sasl"),
            name,
            flow,
            partitions,
            1,
        );
        setup.kafka = self.settings(settings);
        setup.processor_bootstrap = Some(if settings.ends_with("mtls") {
            self.mtls()
        } else {
            self.sasl()
        });
        self.grant("User:tally", &setup);
        setup
    }

    /// The SASL_SSL listener.
    pub fn sasl(&self) -> String {
        self.read("bootstrap-sasl")
    }

    /// The mTLS listener.
    pub fn mtls(&self) -> String {
        self.read("bootstrap-mtls")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.join(name).display()))
            .trim()
            .to_string()
    }

    /// The librdkafka settings of one of the broker's client files (e.g. `tally-sasl`).
    pub fn settings(&self, who: &str) -> BTreeMap<String, String> {
        let text = self.read(&format!("{who}.toml"));
        let table: toml::Table = text.parse().expect("client settings are TOML");
        table
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect()
    }

    /// Grants `principal` what the setup's application needs.
    pub fn grant(&self, principal: &str, setup: &Setup) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka");
        let out = Command::new(script)
            .args(["grant", "--principal", principal, "--app", &setup.app])
            .args(["--input", &setup.input, "--output", &setup.output])
            .args(["--dead-letter", &setup.dlq])
            .env("KAFKA_PORT", self.port.to_string())
            .output()
            .expect("run deploy/local/kafka grant");
        assert!(
            out.status.success(),
            "grant failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
