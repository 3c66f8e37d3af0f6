//! The Kubernetes manifests in deploy/k8s, checked without a cluster: every document parses, the
//! ConfigMap's tally.toml is a config tally starts with, the ScaledObject scales the StatefulSet
//! on the group and topic that config names, and the pods' memory covers the measured peak.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use tally::config::Config;
use tally::Registry;

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

/// Every YAML document under deploy/k8s, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s())
        .expect("deploy/k8s")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
            out.push((
                file.file_name().unwrap().to_string_lossy().into_owned(),
                value,
            ));
        }
    }
    out
}

fn kind<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    &docs
        .iter()
        .find(|(_, d)| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s"))
        .1
}

/// Bytes of a Kubernetes quantity like `768Mi` or `1Gi`.
fn bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().expect("a number");
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "" => 1,
        other => panic!("unit {other}"),
    }
}

/// The config pod `tally-0` starts with: the ConfigMap's, with the StatefulSet's env over it
/// (`$(VAR)` expanded as Kubernetes does, the pod name from its fieldRef).
fn config(docs: &[(String, Value)]) -> Config {
    let text = kind(docs, "ConfigMap")["data"]["tally.toml"]
        .as_str()
        .expect("the ConfigMap holds tally.toml");
    let mut env: Vec<(String, String)> = Vec::new();
    let container = &kind(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0];
    for var in container["env"]
        .as_sequence()
        .expect("the container has env")
    {
        let name = var["name"].as_str().unwrap().to_string();
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => env
                .iter()
                .fold(v.clone(), |v, (k, x)| v.replace(&format!("$({k})"), x)),
            (_, Value::String(f)) if f == "metadata.name" => "tally-0".to_string(),
            _ => continue,
        };
        env.push((name, value));
    }
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Config::from_toml(text, lookup, &Registry::builtin()).expect("tally starts with it")
}

#[test]
fn every_manifest_parses_and_names_its_kind() {
    let docs = documents();
    assert!(docs.len() >= 6, "{} documents", docs.len());
    for (file, doc) in &docs {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{file}"
        );
    }
}

#[test]
fn the_configmaps_config_is_one_tally_starts_with() {
    let cfg = config(&documents());
    assert_eq!(cfg.application_id, "tally-inventory");
}

#[test]
fn a_pods_config_is_a_static_member_with_a_standby_and_its_own_address() {
    let docs = documents();
    let cfg = config(&docs);
    assert_eq!(cfg.instance_id.as_deref(), Some("tally-0"));
    assert!(cfg.static_membership, "group.instance.id from the pod name");
    assert!(cfg.num_standby_replicas >= 1);
    // Reached through the headless Service the StatefulSet names, on the port it listens at.
    let service = kind(&docs, "StatefulSet")["spec"]["serviceName"]
        .as_str()
        .unwrap();
    assert_eq!(
        cfg.application_server.as_deref(),
        Some(format!("tally-0.{service}:{}", cfg.http.listen.port()).as_str())
    );
    assert_eq!(
        kind(&docs, "Service")["spec"]["clusterIP"].as_str(),
        Some("None")
    );
}

#[test]
fn the_scaled_object_scales_the_statefulset_on_its_group_and_input() {
    let docs = documents();
    let cfg = config(&docs);
    let scaled = kind(&docs, "ScaledObject");
    let set = kind(&docs, "StatefulSet");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        set["metadata"]["name"]
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "kafka");
    assert_eq!(
        trigger["metadata"]["consumerGroup"],
        cfg.application_id.as_str()
    );
    assert_eq!(trigger["metadata"]["topic"], cfg.flows[0].input.as_str());
    assert_eq!(
        trigger["metadata"]["bootstrapServers"],
        cfg.bootstrap_servers.as_str()
    );
    assert_eq!(trigger["metadata"]["allowIdleConsumers"], "false");
}

#[test]
fn a_pod_has_the_memory_of_the_measured_peak_and_time_to_finish_its_commit() {
    let docs = documents();
    let cfg = config(&docs);
    let pod = &kind(&docs, "StatefulSet")["spec"]["template"]["spec"];
    let limit = pod["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    // benches/report/failover.md: a takeover of 6 partitions at 1M keys by a full restore under
    // load peaked at 623 MiB RSS.
    assert!(bytes(limit) >= 623 << 20, "{limit}");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(grace * 1000 > cfg.transaction_timeout_ms, "{grace} s");
}

#[test]
fn kustomize_builds_the_manifests_where_kubectl_is_present() {
    let Ok(out) = std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(k8s())
        .output()
    else {
        eprintln!("kubectl is not installed here: the build of the kustomization is not checked");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = String::from_utf8_lossy(&out.stdout);
    for kind in ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"] {
        assert!(built.contains(&format!("kind: {kind}")), "{kind} missing");
    }
}
