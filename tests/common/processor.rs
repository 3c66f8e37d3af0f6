//! A `tally run` child process of a test: started with a setup's config, killed, frozen or
//! stopped, and asked over its HTTP endpoint; a hung one leaves its thread stacks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{free_port, Setup};

/// A `tally run` child process.
pub struct Processor {
    child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Processor {
    /// Starts `tally run --config CONFIG` with extra environment.
    pub fn start(setup: &Setup, instance: &str, env: &[(&str, &str)]) -> Self {
        Self::start_config(setup, instance, env, |http_port| {
            setup.config(instance, http_port)
        })
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "tally exited with {status}; log {}",
                    self.log.display()
                );
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let stacks = stacks_of(self.child.id(), &self.log);
                let _ = self.child.kill();
                panic!(
                    "tally did not stop within 60 s of SIGTERM; log {}, thread stacks {stacks}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Dumps the thread stacks of the running process beside its log, and says where.
    pub fn stacks(&self) -> String {
        stacks_of(self.child.id(), &self.log)
    }

    /// SIGSTOP: the process freezes (a zombie in the making) until [`Processor::resume`].
    pub fn freeze(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGSTOP);
        }
    }

    /// SIGCONT.
    pub fn resume(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
    }

    /// Whether the process already exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// GET a path of the processor's HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// Sum of every sample of a metric (all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        metric_sum(&body, name)
    }

    /// Waits until `/readyz` answers 200 with at least `min_partitions` assigned.
    pub fn wait_ready(&self, min_partitions: usize, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some((200, body)) = self.get("/readyz") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                if v["partitions_assigned"].as_u64().unwrap_or(0) as usize >= min_partitions {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "processor not ready within {limit:?}; log {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every sample of `name` in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path)
}

/// One request to a local HTTP API: (status, body).
pub fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Writes every thread's stack of a hung process beside its log (with gdb, when installed) and
/// says where, so a rare hang leaves more than silence.
pub(super) fn stacks_of(pid: u32, log: &Path) -> String {
    let out = log.with_extension("stacks");
    let dumped = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output();
    match dumped {
        Ok(o) => match std::fs::write(&out, [o.stdout, o.stderr].concat()) {
            Ok(()) => out.display().to_string(),
            Err(e) => format!("not written: {e}"),
        },
        Err(e) => format!("not taken: {e}"),
    }
}

impl Processor {
    /// [`Processor::start`] of the config `write` writes for the HTTP port it is given: a
    /// setup's config with settings [`Setup::config`] does not write (a flow's `format`).
    pub fn start_config(
        setup: &Setup,
        instance: &str,
        env: &[(&str, &str)],
        write: impl FnOnce(u16) -> PathBuf,
    ) -> Self {
        let http_port = free_port();
        let config = write(http_port);
        let log = setup.dir.join(format!(
            "{instance}-{}.log",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let out = std::fs::File::create(log.with_extension("stdout")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            // Commit lines (debug) make a stalled processor's log say where it stopped.
            .env("RUST_LOG", "info,tally::engine::commit=debug")
            .stdout(out)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tally");
        Self {
            child,
            http_port,
            log,
        }
    }
}
