//! deploy/: every Kubernetes manifest validates against the OpenAPI schema of a current
//! Kubernetes release (kubernetes-validate, which ships the schemas), the Prometheus Operator
//! resources against the operator's CRD schemas (npm @kubernetes-models/prometheus-operator),
//! the alert rules pass `promtool check rules` and their unit tests, and every metric the
//! dashboard and the rules name is one chainprobe exposes (README.md) or has announced
//! (docs/deploy.md, "Metrics being built").
//!
//! Tools: tests/tools/install.sh installs them; a missing tool fails the test.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn tools_dir() -> PathBuf {
    std::env::var_os("CHAINPROBE_TEST_TOOLS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/chainprobe-test-tools"))
}

/// Runs a tool; panics with an install hint when it is missing.
fn run(cmd: &mut Command) -> (bool, String) {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(o) => (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
        Err(e) => panic!("cannot run {prog}: {e}\nInstall the test tools: bash tests/tools/install.sh"),
    }
}

/// All YAML documents of a file, as JSON (PyYAML, which kubernetes-validate brings).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let (ok, out) = run(Command::new("python3")
        .args(["-c", "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)"])
        .arg(path));
    assert!(ok, "cannot parse {} as YAML (PyYAML missing? bash tests/tools/install.sh):\n{out}", path.display());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}\n{out}", path.display()))
}

fn kustomization() -> Value {
    yaml_docs(&deploy().join("kustomization.yaml")).remove(0)
}

fn resources() -> Vec<PathBuf> {
    kustomization()["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| deploy().join(r.as_str().expect("resource path")))
        .collect()
}

fn all_docs() -> Vec<Value> {
    resources().iter().flat_map(|p| yaml_docs(p)).collect()
}

fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/"))
}

const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

#[test]
fn kustomization_lists_every_manifest_and_they_exist() {
    let k = kustomization();
    let listed: BTreeSet<PathBuf> = resources().into_iter().collect();
    for p in &listed {
        assert!(p.is_file(), "kustomization.yaml lists {} which does not exist", p.display());
    }
    for e in std::fs::read_dir(deploy()).expect("deploy/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml") && p.file_name().is_some_and(|n| n != "kustomization.yaml") {
            assert!(listed.contains(&p), "{} is not in kustomization.yaml resources", p.display());
        }
    }
    for g in k["configMapGenerator"].as_array().into_iter().flatten() {
        for f in g["files"].as_array().into_iter().flatten() {
            let f = f.as_str().expect("file");
            assert!(deploy().join(f).is_file(), "configMapGenerator file {f} missing");
        }
    }
    assert_eq!(k["namespace"], "chainprobe");
    for d in all_docs() {
        let kind = d["kind"].as_str().unwrap_or_default();
        let ns = &d["metadata"]["namespace"];
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            assert_eq!(ns, "chainprobe", "{kind} {} not in namespace chainprobe", d["metadata"]["name"]);
        }
    }
}

#[test]
fn manifests_validate_against_the_kubernetes_openapi_schema() {
    let (ok, out) = run(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]));
    assert!(ok, "kubernetes-validate is not installed ({out}): run bash tests/tools/install.sh");
    // The validator itself must reject a wrong manifest, or a pass means nothing.
    let bad = std::env::temp_dir().join(format!("chainprobe-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      hostPID: \"yes\"\n      containers: [{name: c, image: i, ports: [{containerPort: http}]}]\n").expect("write");
    let (ok, out) = run(Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).arg(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(!ok, "kubernetes-validate accepted an invalid DaemonSet:\n{out}");

    let files: Vec<PathBuf> = resources();
    let (ok, out) = run(Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).args(&files));
    assert!(ok, "kubernetes-validate --strict failed:\n{out}");
    // Every built-in kind must have been checked against a schema (only the CRDs have none there).
    for line in out.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(CRD_KINDS.iter().any(|k| line.contains(&format!("kind {k} "))), "not validated: {line}");
    }
    let passed = out.lines().filter(|l| l.contains(" passed for resource ")).count();
    let builtin = all_docs().iter().filter(|d| !CRD_KINDS.contains(&d["kind"].as_str().unwrap_or_default())).count();
    assert_eq!(passed, builtin, "every built-in resource validated:\n{out}");
}

#[test]
fn operator_resources_validate_against_the_crd_schemas() {
    let tools = tools_dir();
    let pkg = tools.join("node_modules/@kubernetes-models/prometheus-operator/package.json");
    assert!(pkg.is_file(), "{} missing: run bash tests/tools/install.sh", pkg.display());
    let docs: Vec<Value> = all_docs().into_iter().filter(|d| CRD_KINDS.contains(&d["kind"].as_str().unwrap_or_default())).collect();
    assert_eq!(docs.len(), 2, "one ServiceMonitor and one PrometheusRule");
    let mut broken = doc(&docs, "ServiceMonitor").clone();
    broken["spec"]["endpoints"][0]["interval"] = Value::from("thirty seconds");
    let tag = format!("{}-{}", std::process::id(), line!());
    let script = tools.join(format!("validate-{tag}.mjs"));
    std::fs::write(
        &script,
        r#"import { readFileSync } from 'node:fs';
import * as v1 from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
const objs = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let bad = 0;
for (const o of objs) {
  const M = o.apiVersion === 'monitoring.coreos.com/v1' ? v1[o.kind] : undefined;
  if (!M) { console.log(`FAIL ${o.kind}: no schema for ${o.apiVersion}`); bad++; continue; }
  try { new M(o).validate(); console.log(`ok ${o.kind}`); } catch (e) { console.log(`FAIL ${o.kind}: ${e.message}`); bad++; }
}
process.exit(bad ? 1 : 0);
"#,
    )
    .expect("write validator script");
    let good_json = std::env::temp_dir().join(format!("chainprobe-crs-{tag}.json"));
    let bad_json = std::env::temp_dir().join(format!("chainprobe-crs-bad-{tag}.json"));
    std::fs::write(&good_json, serde_json::to_string(&docs).expect("json")).expect("write");
    std::fs::write(&bad_json, serde_json::to_string(&vec![broken]).expect("json")).expect("write");
    let (ok_good, out_good) = run(Command::new("node").arg(&script).arg(&good_json));
    let (ok_bad, out_bad) = run(Command::new("node").arg(&script).arg(&bad_json));
    for f in [&script, &good_json, &bad_json] {
        let _ = std::fs::remove_file(f);
    }
    assert!(!ok_bad, "the CRD validator accepted a broken ServiceMonitor:\n{out_bad}");
    assert!(ok_good, "ServiceMonitor/PrometheusRule do not match the operator's CRD schemas:\n{out_good}");
    assert_eq!(out_good.matches("ok ").count(), 2, "{out_good}");
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = deploy().join("prometheus/chainprobe-rules.yaml");
    let (ok, out) = run(Command::new("promtool").arg("check").arg("rules").arg(&rules));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = run(Command::new("promtool").args(["test", "rules"]).arg(deploy().join("prometheus/chainprobe-rules.test.yaml")));
    assert!(ok, "promtool test rules:\n{out}");

    // The PrometheusRule carries exactly the same groups, and it passes promtool too.
    let plain = yaml_docs(&rules).remove(0);
    let docs = all_docs();
    let pr = doc(&docs, "PrometheusRule");
    assert_eq!(pr["spec"], plain, "deploy/prometheusrule.yaml spec differs from deploy/prometheus/chainprobe-rules.yaml");
    let from_cr = std::env::temp_dir().join(format!("chainprobe-cr-rules-{}.json", std::process::id()));
    std::fs::write(&from_cr, serde_json::to_string(&pr["spec"]).expect("json")).expect("write");
    let (ok, out) = run(Command::new("promtool").arg("check").arg("rules").arg(&from_cr));
    let _ = std::fs::remove_file(&from_cr);
    assert!(ok, "promtool check rules on the PrometheusRule's spec:\n{out}");

    // What the issue asks alerts for.
    let exprs: Vec<String> =
        plain["groups"][0]["rules"].as_array().expect("rules").iter().map(|r| r["expr"].as_str().unwrap_or_default().to_string()).collect();
    for needle in [
        "chainprobe_health_score < 50",
        "chainprobe_snapshots_total{result=\"failed\"}",
        "chainprobe_attach_failures_total > 0",
        "rate(chainprobe_events_lost_total[5m]) > 0",
        "up{job=\"chainprobe\"} == 0",
    ] {
        assert!(exprs.iter().any(|e| e.contains(needle)), "no alert on {needle}: {exprs:?}");
    }
    let health = plain["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["expr"].as_str().is_some_and(|e| e.contains("health_score")))
        .expect("health rule");
    assert_eq!(health["for"], "5m");
}

/// Metric names in `text`: identifiers starting with `chainprobe_`.
fn chainprobe_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("chainprobe_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let before_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Metrics chainprobe exposes (README.md's metric tables).
fn known_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut known = chainprobe_names(&readme);
    assert!(known.contains("chainprobe_tcp_connects_total") && known.len() > 15, "README metric table not found: {known:?}");
    // A histogram (README table rows typed `histogram`) is queried through its series.
    for line in readme.lines().filter(|l| l.contains("| histogram |")) {
        for h in chainprobe_names(line) {
            for suffix in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{h}{suffix}"));
            }
        }
    }
    known
}

#[test]
fn dashboard_and_rules_name_only_known_metrics() {
    let known = known_metrics();
    let text = std::fs::read_to_string(deploy().join("grafana-dashboard.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("grafana-dashboard.json parses as JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "dashboard has {} panels", panels.len());
    let mut queries = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} has no queries", p["title"]);
        for t in targets {
            queries.push(t["expr"].as_str().unwrap_or_else(|| panic!("panel {} target without expr", p["title"])).to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str().or(v["definition"].as_str()) {
            queries.push(q.to_string());
        }
    }
    let rules = std::fs::read_to_string(deploy().join("prometheus/chainprobe-rules.yaml")).expect("rules");
    let mut used = BTreeSet::new();
    for q in queries.iter().map(String::as_str).chain([rules.as_str()]) {
        for name in chainprobe_names(q) {
            assert!(known.contains(&name), "{name} (in {q:.120}) is neither in README.md nor in docs/deploy.md 'Metrics being built'");
            used.insert(name);
        }
    }
    // The dashboard covers each family chainprobe exposes.
    for family in [
        "chainprobe_tcp_connects_total",
        "chainprobe_mmap_calls_total",
        "chainprobe_process_exits_total",
        "chainprobe_events_lost_total",
        "chainprobe_health_score",
        "chainprobe_go_stw_pause_seconds_bucket",
        "chainprobe_go_goroutines",
    ] {
        assert!(used.contains(family), "dashboard/rules never use {family}");
    }
    // Every PromQL query is syntactically valid: promtool parses each as a recording rule.
    let groups: Vec<Value> = vec![serde_json::json!({
        "name": "dashboard",
        "rules": queries.iter().filter(|q| !q.starts_with("label_values") && q.as_str() != "prometheus").enumerate().map(|(i, q)| {
            let q = q.replace("$__rate_interval", "5m").replace("$node", ".*").replace("$namespace", ".*").replace("$pod", ".*");
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": q})
        }).collect::<Vec<_>>()
    })];
    let f = std::env::temp_dir().join(format!("chainprobe-dash-rules-{}.json", std::process::id()));
    std::fs::write(&f, serde_json::to_string(&serde_json::json!({"groups": groups})).expect("json")).expect("write");
    let (ok, out) = run(Command::new("promtool").arg("check").arg("rules").arg(&f));
    let _ = std::fs::remove_file(&f);
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}");
}

#[test]
fn daemonset_is_least_privilege_and_wired() {
    let docs = all_docs();
    let ds = doc(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_ne!(pod["hostNetwork"], true, "no host network");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps: BTreeSet<&str> = sc["capabilities"]["add"].as_array().expect("caps").iter().filter_map(Value::as_str).collect();
    assert_eq!(caps, BTreeSet::from(["BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE", "KILL", "SYS_ADMIN"]), "capabilities");
    let text = std::fs::read_to_string(deploy().join("daemonset.yaml")).expect("daemonset");
    assert!(
        text.contains("setns(2) into a pod's network namespace") && text.contains("Not for BPF"),
        "the one reason for CAP_SYS_ADMIN is written next to it"
    );

    // Mounts.
    let mounts: Vec<(&str, &str, bool)> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or(""), m["mountPath"].as_str().unwrap_or(""), m["readOnly"] == true))
        .collect();
    let host = |name: &str| -> String {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or("")
            .to_string()
    };
    for (path, ro) in
        [("/sys/kernel/tracing", true), ("/sys/fs/bpf", false), ("/sys/kernel/btf", true), ("/var/lib/chainprobe/snapshots", false)]
    {
        let m = mounts.iter().find(|m| m.1 == path).unwrap_or_else(|| panic!("no mount at {path}"));
        assert_eq!(m.2, ro, "{path} readOnly");
        assert_eq!(host(m.0), path, "{path} comes from the host");
    }

    // Probes, env, resources, ports.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = c["env"].as_array().expect("env");
    let e = |n: &str| env.iter().find(|e| e["name"] == n).unwrap_or_else(|| panic!("env {n}"));
    assert_eq!(e("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert!(e("CHAINPROBE_API_TOKEN")["valueFrom"]["secretKeyRef"]["name"].is_string());
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["memory"].is_string(), "resources.{k}.memory");
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert_eq!(c["ports"][0]["containerPort"], 9479);
    let port_name = c["ports"][0]["name"].as_str().expect("port name");

    // Service → pods, ServiceMonitor → Service port, NetworkPolicy → port, RBAC → ServiceAccount.
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let svc = doc(&docs, "Service");
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[k], v, "Service selects the DaemonSet pods");
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], port_name);
    let sm = doc(&docs, "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().expect("sm selector") {
        assert_eq!(&svc["metadata"]["labels"][k], v, "ServiceMonitor selects the Service");
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    let np = doc(&docs, "NetworkPolicy");
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 9479);
    let sa = doc(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let crb = doc(&docs, "ClusterRoleBinding");
    assert_eq!(crb["subjects"][0]["name"], sa["metadata"]["name"]);
    let cr = doc(&docs, "ClusterRole");
    let rules = cr["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "pods only");
    assert_eq!(rules[0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(rules[0]["verbs"], serde_json::json!(["get", "list", "watch"]), "read only");
}

#[test]
fn dockerfile_is_multi_stage_with_the_bpf_toolchain() {
    let d = std::fs::read_to_string(deploy().join("Dockerfile")).expect("deploy/Dockerfile");
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "builder + runtime: {froms:?}");
    assert!(froms[0].contains("rust") && froms[0].contains(" AS builder"));
    assert!(froms[1].contains("debian") && froms[1].contains("slim"));
    for needle in ["nightly", "rust-src", "bpf-linker", "COPY --from=builder", "ENTRYPOINT"] {
        assert!(d.contains(needle), "Dockerfile lacks {needle}");
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy().join("chainprobe.service")).expect("deploy/chainprobe.service");
    // Point it at the binary under test so that systemd-analyze can check the commands too.
    let dir = std::env::temp_dir().join(format!("chainprobe-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let f = dir.join("chainprobe.service");
    std::fs::write(&f, unit.replace("/usr/local/bin/chainprobe", env!("CARGO_BIN_EXE_chainprobe"))).expect("write unit");
    let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&f));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok && !out.contains("chainprobe.service:"), "systemd-analyze verify deploy/chainprobe.service:\n{out}");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE", "CAP_KILL"] {
        assert!(unit.contains(cap), "unit lacks {cap}");
    }
    assert!(!unit.contains("CAP_SYS_ADMIN"), "the unit must not grant CAP_SYS_ADMIN");
}
