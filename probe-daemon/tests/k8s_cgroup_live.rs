//! Live: a real process moved into a kubepods-style cgroup that the test creates (below the test's
//! own cgroup: cgroup v1 `memory` hierarchy with the cgroupfs layout, and cgroup v2 with the
//! systemd/containerd layout) gets the right container id, pod UID and QoS class from
//! `PodResolver::resolve(pid)`, which reads the kernel's `/proc/PID/cgroup`; and with a node-scoped
//! watch on a fake API server (axum, loopback) it also gets the pod's names. Needs root.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chainprobe::k8s::{ApiConfig, PodCache, PodResolver, QosClass, Runtime, Watcher};

const UID: &str = "7d1c3a52-0b9e-4f6a-8c2d-1e5f9a7b3c4d";
const CID_V1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const CID_V2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(unsafe { libc::getuid() }, 0, "creating cgroups needs root: run the tests as root (sudo -E cargo xtask test)");
}

/// Mount point of a cgroup hierarchy from /proc/self/mountinfo: v2 when `controller` is None.
fn mount_point(controller: Option<&str>) -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mi.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let fstype = r.next()?;
        let _src = r.next();
        let opts = r.next().unwrap_or("");
        let mp = left.split_whitespace().nth(4)?;
        let ok = match controller {
            None => fstype == "cgroup2",
            Some(c) => fstype == "cgroup" && opts.split(',').any(|o| o == c),
        };
        if ok {
            return Some(PathBuf::from(mp));
        }
    }
    None
}

/// This process's path in a hierarchy (`memory`, or "" for v2).
fn own_path(controller: &str) -> String {
    let c = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    for line in c.lines() {
        let mut p = line.splitn(3, ':');
        let (_, ctrls, path) = (p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""));
        if (controller.is_empty() && ctrls.is_empty()) || (!controller.is_empty() && ctrls.split(',').any(|x| x == controller)) {
            return path.to_string();
        }
    }
    panic!("no {controller:?} line in /proc/self/cgroup:\n{c}");
}

/// Creates nested cgroups; on drop kills the child it holds and removes them leaf first.
struct Cgroup {
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Cgroup {
    fn create(base: &Path, rel: &[String]) -> Cgroup {
        let mut dirs = Vec::new();
        let mut p = base.to_path_buf();
        for c in rel {
            p = p.join(c);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                dirs.push(p.clone());
            }
        }
        Cgroup { dirs, child: None }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("created at least one cgroup")
    }

    /// Starts `sleep` and moves it into the leaf cgroup.
    fn spawn(&mut self) -> u32 {
        let child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep");
        let pid = child.id();
        std::fs::write(self.leaf().join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.leaf().display()));
        self.child = Some(child);
        pid
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            // The cgroup empties asynchronously after the child is reaped.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn tag() -> String {
    format!("t{}", std::process::id())
}

#[test]
fn cgroup_v1_cgroupfs_layout_resolves_live() {
    require_root();
    let Some(mp) = mount_point(Some("memory")) else {
        eprintln!("no cgroup v1 memory hierarchy on this machine (pure cgroup v2): the v1 case is covered by the unit tests only");
        return;
    };
    let own = own_path("memory");
    let base = mp.join(own.trim_start_matches('/'));
    assert!(base.is_dir(), "{} missing", base.display());
    // A private parent so concurrent runs do not collide: <own>/<tag>/kubepods/burstable/pod<uid>/<cid>
    let rel: Vec<String> = [tag(), "kubepods".into(), "burstable".into(), format!("pod{UID}"), CID_V1.into()].into();
    let mut cg = Cgroup::create(&base, &rel);
    let pid = cg.spawn();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    assert!(text.contains(&format!("pod{UID}/{CID_V1}")), "kernel did not place the child:\n{text}");
    let meta = PodResolver::cgroup_only("/proc").resolve(pid).unwrap_or_else(|| panic!("no pod for {pid}:\n{text}"));
    assert_eq!(meta.container_id.as_deref(), Some(CID_V1), "{text}");
    assert_eq!(meta.pod_uid.as_deref(), Some(UID));
    assert_eq!(meta.qos, Some(QosClass::Burstable));
    assert_eq!(meta.runtime, Some(Runtime::Unknown));
    assert!(!meta.has_names());
    // The test process itself is not in a pod.
    assert!(PodResolver::cgroup_only("/proc").resolve(std::process::id()).is_none_or(|m| m.pod_uid.is_none()));
}

fn v2_pod_cgroup(qos: &str) -> (Cgroup, u32) {
    let mp = mount_point(None).expect("no cgroup2 hierarchy mounted (expected at /sys/fs/cgroup or /sys/fs/cgroup/unified)");
    let own = own_path("");
    let base = mp.join(own.trim_start_matches('/'));
    assert!(base.is_dir(), "{} missing", base.display());
    let uid_ = UID.replace('-', "_");
    let rel: Vec<String> = [
        format!("{}-{qos}.slice", tag()),
        "kubepods.slice".into(),
        format!("kubepods-{qos}.slice"),
        format!("kubepods-{qos}-pod{uid_}.slice"),
        format!("cri-containerd-{CID_V2}.scope"),
    ]
    .into();
    let mut cg = Cgroup::create(&base, &rel);
    let pid = cg.spawn();
    (cg, pid)
}

#[test]
fn cgroup_v2_systemd_containerd_layout_resolves_live() {
    require_root();
    let (_cg, pid) = v2_pod_cgroup("besteffort");
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    let meta = PodResolver::cgroup_only("/proc").resolve(pid).unwrap_or_else(|| panic!("no pod for {pid}:\n{text}"));
    assert_eq!(meta.container_id.as_deref(), Some(CID_V2), "{text}");
    assert_eq!(meta.pod_uid.as_deref(), Some(UID));
    assert_eq!(meta.qos, Some(QosClass::BestEffort));
    assert_eq!(meta.runtime, Some(Runtime::Containerd));
    let l = meta.labels();
    assert_eq!((l.namespace.as_str(), l.pod.as_str(), l.container.as_str()), ("", UID, &CID_V2[..12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_process_gets_pod_names_from_the_node_scoped_watch() {
    require_root();
    use axum::{extract::Query, routing::get, Router};
    let (_cg, pid) = v2_pod_cgroup("burstable");
    let pod = serde_json::json!({
        "metadata": {"name": "checkout-0", "namespace": "shop", "uid": UID, "resourceVersion": "7",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "checkout", "uid": "s", "controller": true}]},
        "spec": {"nodeName": "live-node"},
        "status": {"qosClass": "Burstable", "containerStatuses": [{"name": "server", "containerID": format!("containerd://{CID_V2}")}]}
    });
    let app = Router::new().route(
        "/api/v1/pods",
        get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
            let pod = pod.clone();
            async move {
                assert_eq!(q.get("fieldSelector").map(String::as_str), Some("spec.nodeName=live-node"));
                if q.contains_key("watch") {
                    // Keep the watch open.
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    return String::new();
                }
                serde_json::json!({"kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": [pod]}).to_string()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let cache = PodCache::new();
    let mut cfg = ApiConfig::new(format!("http://{addr}"), "live-node");
    cfg.token = Some("t".into());
    let watch = tokio::spawn(Watcher::new(cfg, cache.clone()).expect("watcher").run());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.is_synced() {
        assert!(Instant::now() < deadline, "the watcher never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = PodResolver::with_cache("/proc", cache.clone());
    let meta = r.resolve(pid).expect("meta");
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert_eq!(meta.pod.as_deref(), Some("checkout-0"));
    assert_eq!(meta.container.as_deref(), Some("server"));
    assert_eq!(meta.owner_kind.as_deref(), Some("StatefulSet"));
    assert_eq!(meta.owner_name.as_deref(), Some("checkout"));
    assert_eq!(meta.qos, Some(QosClass::Burstable));
    // And the reverse lookup the snapshot API uses.
    assert_eq!(r.pids_of("shop", "checkout-0", Some("server")), vec![pid]);
    assert_eq!(r.pids_of("shop", "checkout-0", Some("other")), Vec::<u32>::new());
    assert_eq!(r.pids_of("shop", "nope", None), Vec::<u32>::new());
    watch.abort();
    server.abort();
}
