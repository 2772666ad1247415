//! Pod identity from the first event, end to end with real cgroups: a program placed in a
//! kubepods-style cgroup before its exec (as a container runtime does), that makes one refused
//! loopback connect and exits, has its TCP and exit series labelled with its pod — and no series
//! of it ever exists without its pod labels, even when the API names the pod only after the
//! process's first events (the series are held until then). Needs root (cgroups, the daemon).
mod common;

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{Daemon, Metrics, TempDir};

/// The defaults (the test harness gives other tests per-pid series).
const DEFAULT_FOLDING: &str = "[metrics]\nfold_non_go = true\nfold_young_seconds = 30.0\n";

const UID: &str = "5b0e6f2a-93c1-4d7e-8a45-0c6d2e1f9b73";
const CID: &str = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b";

fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(unsafe { libc::getuid() }, 0, "creating cgroups needs root: run the tests as root (sudo -E cargo xtask test)");
}

/// The cgroup v2 mount point and this process's path in it.
fn v2_base() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mp = mi
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup2 hierarchy mounted");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("no cgroup v2 line in /proc/self/cgroup");
    mp.join(path.trim_start_matches('/'))
}

/// `<own cgroup>/<tag>.slice/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<cid>.scope`,
/// the systemd + containerd layout; removed (leaf first) on drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn create(tag: &str) -> PodCgroup {
        let uid_ = UID.replace('-', "_");
        let mut p = v2_base();
        let mut dirs = Vec::new();
        for c in [
            format!("{tag}.slice"),
            "kubepods.slice".into(),
            "kubepods-burstable.slice".into(),
            format!("kubepods-burstable-pod{uid_}.slice"),
            format!("cri-containerd-{CID}.scope"),
        ] {
            p = p.join(c);
            std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            dirs.push(p.clone());
        }
        PodCgroup { dirs }
    }

    fn procs_file(&self) -> PathBuf {
        self.dirs.last().expect("created").join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroupfs layout in every cgroup v1 hierarchy mounted (as runc places a container of a
/// kubelet with the cgroupfs driver on a cgroup v1 node): `<own path>/<tag>/kubepods/burstable/pod<uid>/<cid>`
/// in each, the v2 cgroup left as it is (it names no container). None when no v1 hierarchy is
/// mounted. Removed (leaf first) on drop.
struct V1PodCgroup {
    /// Per hierarchy, the directories created (parent first).
    trees: Vec<Vec<PathBuf>>,
}

impl V1PodCgroup {
    fn create(tag: &str) -> Option<V1PodCgroup> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let mut trees = Vec::new();
        for l in mi.lines() {
            let Some((left, right)) = l.split_once(" - ") else { continue };
            let mut r = right.split_whitespace();
            if r.next() != Some("cgroup") {
                continue;
            }
            let opts: Vec<&str> = r.nth(1).unwrap_or("").split(',').collect();
            let Some(mp) = left.split_whitespace().nth(4) else { continue };
            // This process's path in that hierarchy: the /proc/self/cgroup line whose
            // controllers (or name=) are among the mount's options.
            let Some(path) = own.lines().find_map(|c| {
                let mut p = c.splitn(3, ':');
                let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
                (!ctrls.is_empty() && ctrls.split(',').all(|x| opts.contains(&x))).then_some(path)
            }) else {
                continue;
            };
            let cpuset = opts.contains(&"cpuset");
            let mut dir = PathBuf::from(mp).join(path.trim_start_matches('/'));
            let mut dirs = Vec::new();
            for c in [tag.to_string(), "kubepods".into(), "burstable".into(), format!("pod{UID}"), CID.into()] {
                let parent = dir.clone();
                dir = dir.join(c);
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                if cpuset {
                    // A cpuset cgroup takes tasks only once it has CPUs and memory nodes.
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                        let _ = std::fs::write(dir.join(f), v.trim());
                    }
                }
                dirs.push(dir.clone());
            }
            trees.push(dirs);
        }
        (!trees.is_empty()).then_some(V1PodCgroup { trees })
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.trees.iter().filter_map(|t| t.last()).map(|d| d.join("cgroup.procs")).collect()
    }
}

impl Drop for V1PodCgroup {
    fn drop(&mut self) {
        for d in self.trees.iter().flat_map(|t| t.iter().rev()) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A C program: one connect to 127.0.0.1:PORT (refused: nothing listens), then exits with
/// status 3 after SLEEP_MS. Built with gcc under `name` (its comm).
fn build_job(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join("job.c");
    std::fs::write(
        &src,
        r#"#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(s, (struct sockaddr *)&a, sizeof a);
    close(s);
    long ms = atol(argv[2]);
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, 0);
    return 3;
}
"#,
    )
    .expect("write job.c");
    let bin = dir.join(name);
    let out = Command::new("gcc").arg("-O1").arg("-o").arg(&bin).arg(&src).output().expect("gcc (a test requirement) runs");
    assert!(out.status.success(), "gcc failed: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

/// Runs `bin PORT MS` placed in the cgroup before its exec (the child writes "0" to
/// cgroup.procs between fork and exec, as runc does); returns (pid, when it exec'd, its wait).
fn run_in_cgroup(bin: &Path, cg: &PodCgroup, port: u16, ms: u64) -> (u32, Instant, std::process::ExitStatus) {
    run_in_cgroups(bin, &[cg.procs_file()], port, ms)
}

/// [`run_in_cgroup`] with the cgroup.procs files of every hierarchy to join.
fn run_in_cgroups(bin: &Path, procs_files: &[PathBuf], port: u16, ms: u64) -> (u32, Instant, std::process::ExitStatus) {
    let files: Vec<CString> = procs_files.iter().map(|f| CString::new(f.to_string_lossy().as_bytes()).expect("path without NUL")).collect();
    let mut cmd = Command::new(bin);
    cmd.arg(port.to_string()).arg(ms.to_string()).stdin(Stdio::null());
    // SAFETY: the closure only makes raw syscalls (open, write, close) on memory prepared
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for procs in &files {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let at = Instant::now();
    let mut child = cmd.spawn().expect("spawn the job in its cgroup");
    let pid = child.id();
    let status = child.wait().expect("wait for the job");
    (pid, at, status)
}

/// Scrapes /metrics every 50 ms until stopped; keeps every scrape.
struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<Mutex<Vec<Metrics>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(addr: std::net::SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), scrapes.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((200, body)) = common::http_get(addr, "/metrics") {
                    out.lock().unwrap().push(Metrics::parse(&body));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Scraper { stop, scrapes, thread: Some(thread) }
    }

    /// Waits (bounded) until one scrape satisfies `pred`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Metrics) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let scrapes = self.scrapes.lock().unwrap();
                if scrapes.iter().any(&pred) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!("timed out waiting for {what}; last scrape:\n{}", scrapes.last().map(|m| m.text.as_str()).unwrap_or("(none)"));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn finish(mut self) -> Vec<Metrics> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.scrapes.lock().unwrap())
    }
}

/// Every sample of `comm` in every scrape has exactly the pod labels `want`; returns how many
/// samples of it were seen.
fn assert_always_labelled(scrapes: &[Metrics], comm: &str, want: (&str, &str, &str)) -> usize {
    let mut n = 0;
    for m in scrapes {
        for s in m.samples.iter().filter(|s| s.labels.get("comm").map(String::as_str) == Some(comm)) {
            let got = |k: &str| s.labels.get(k).map(String::as_str).unwrap_or("<none>");
            assert_eq!((got("namespace"), got("pod"), got("container")), want, "a series of {comm} with other pod labels: {s:?}");
            n += 1;
        }
    }
    n
}

fn connects_and_exit(m: &Metrics, comm: &str) -> (f64, f64) {
    let sum = |name: &str, extra: (&str, &str)| -> f64 {
        m.samples
            .iter()
            .filter(|s| s.name == name && s.labels.get("comm").map(String::as_str) == Some(comm) && s.labels.get(extra.0).map(String::as_str) == Some(extra.1))
            .map(|s| s.value)
            .sum()
    };
    (sum("chainprobe_tcp_connects_total", ("result", "refused")), sum("chainprobe_process_exits_total", ("code", "3")))
}

/// A fake API server for node `pod-node`: the list is empty; once `publish` is set, the watch
/// delivers the pod (as a new pod reaches the API cache after its first process started).
fn fake_api(rt: &tokio::runtime::Runtime, publish: Arc<AtomicBool>) -> std::net::SocketAddr {
    use axum::{extract::Query, routing::get, Router};
    let pod = serde_json::json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": UID, "resourceVersion": "2"},
        "spec": {"nodeName": "pod-node"},
        "status": {"qosClass": "Burstable", "containerStatuses": [{"name": "app", "containerID": format!("containerd://{CID}")}]}
    });
    let sent = Arc::new(AtomicBool::new(false));
    let app = Router::new().route(
        "/api/v1/pods",
        get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
            let (pod, publish, sent) = (pod.clone(), publish.clone(), sent.clone());
            async move {
                if !q.contains_key("watch") {
                    return serde_json::json!({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": []}).to_string();
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                while !publish.load(Ordering::Relaxed) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if sent.swap(true, Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    return String::new();
                }
                format!("{}\n", serde_json::json!({"type": "ADDED", "object": pod}))
            }
        }),
    );
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = l.local_addr().expect("addr");
    rt.spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

fn closed_port() -> u16 {
    // Bound and dropped: nothing listens there now, so a connect is refused.
    common::free_port()
}

/// The API names the pod 300 ms after the job's exec (after its connect, before its exit);
/// `folding` is the daemon's [metrics] section; `seen_alive`: its series exist before its exit.
fn pod_named_late(folding: &str, seen_alive: bool) {
    require_root();
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let publish = Arc::new(AtomicBool::new(false));
    let api = fake_api(&rt, publish.clone());
    let d = Daemon::start(
        "pod-identity-api",
        &format!("{folding}[kubernetes]\napi = \"on\"\napi_server = \"http://{api}\"\nnode_name = \"pod-node\"\npod_name_wait_seconds = 20\n"),
    );
    let dir = TempDir::new("pod-identity-api");
    let comm = format!("cpjob{}", std::process::id() % 100_000);
    let bin = build_job(&dir.0, &comm);
    let cg = PodCgroup::create(&format!("t{}-api", std::process::id()));
    let scraper = Scraper::start(d.addr);
    // The API names the pod 300 ms after the exec: after the connect, before the exit.
    let p = publish.clone();
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        p.store(true, Ordering::Relaxed);
    });
    let (pid, at, status) = run_in_cgroup(&bin, &cg, closed_port(), 1000);
    let scrapes_in_life = scraper.scrapes.lock().unwrap().len();
    assert_eq!(status.code(), Some(3), "the job ran");
    let lived = at.elapsed();
    let _ = publisher.join();
    scraper.wait_for("the job's TCP and exit series", Duration::from_secs(30), |m| connects_and_exit(m, &comm) == (1.0, 1.0));
    std::thread::sleep(Duration::from_millis(500));
    let scrapes = scraper.finish();
    let n = assert_always_labelled(&scrapes, &comm, ("shop", "web-0", "app"));
    assert!(n >= 2, "pid {pid} (lived {lived:?}): {n} samples seen");
    let alive = assert_always_labelled(&scrapes[..scrapes_in_life.min(scrapes.len())], &comm, ("shop", "web-0", "app"));
    assert_eq!(alive > 0, seen_alive, "pid {pid}: {alive} samples in the {scrapes_in_life} scrapes of its life");
    // Nothing of it under its pod UID (the label set before the names) either.
    for m in &scrapes {
        assert!(!m.samples.iter().any(|s| s.labels.get("pod").map(String::as_str) == Some(UID)), "a series labelled by UID: {}", m.text);
    }
}

#[test]
fn pod_named_late_by_the_api_labels_every_series_of_a_one_second_process() {
    // Default folding: the young job's series appear at its exit, in its pod's folded series.
    pod_named_late(DEFAULT_FOLDING, false);
}

#[test]
fn pod_named_late_by_the_api_labels_every_per_pid_series_of_a_one_second_process() {
    // Every process its own series: the job's series exist during its life, held until the
    // names arrive.
    pod_named_late("[metrics]\nfold_non_go = false\nfold_young_seconds = 0.0\n", true);
}

#[test]
fn a_process_gone_within_100_ms_of_its_exec_is_attributed_to_its_pod() {
    require_root();
    let _serial = common::serial();
    // cgroup labels only (no API): pod = UID, container = the short container id.
    let d = Daemon::start("pod-identity-cgroup", &format!("{DEFAULT_FOLDING}[kubernetes]\napi = \"off\"\n"));
    let dir = TempDir::new("pod-identity-cgroup");
    let comm = format!("cpfast{}", std::process::id() % 100_000);
    let bin = build_job(&dir.0, &comm);
    let cg = PodCgroup::create(&format!("t{}-fast", std::process::id()));
    let scraper = Scraper::start(d.addr);
    let mut lives = Vec::new();
    for _ in 0..5 {
        let (_, at, status) = run_in_cgroup(&bin, &cg, closed_port(), 10);
        lives.push(at.elapsed());
        assert_eq!(status.code(), Some(3));
    }
    assert!(lives.iter().all(|l| *l < Duration::from_millis(100)), "each run lived < 100 ms: {lives:?}");
    scraper.wait_for("the five runs' TCP and exit series", Duration::from_secs(20), |m| connects_and_exit(m, &comm) == (5.0, 5.0));
    let scrapes = scraper.finish();
    let n = assert_always_labelled(&scrapes, &comm, ("", UID, &CID[..12]));
    assert!(n >= 2, "{n} samples");
}

#[test]
fn with_both_cgroup_versions_processes_gone_before_their_proc_is_read_get_the_pod_of_their_cgroups() {
    require_root();
    let _serial = common::serial();
    let tag = format!("t{}-v1", std::process::id());
    let Some(cg) = V1PodCgroup::create(&tag) else {
        eprintln!("no cgroup v1 hierarchy on this machine (cgroup v2 alone): execs are attributed by their v2 cgroup id, covered by the other tests");
        return;
    };
    let d = Daemon::start("pod-identity-v1", &format!("{DEFAULT_FOLDING}[kubernetes]\napi = \"off\"\n"));
    let dir = TempDir::new("pod-identity-v1");
    let comm = format!("cpv1{}", std::process::id() % 100_000);
    let bin = build_job(&dir.0, &comm);
    let scraper = Scraper::start(d.addr);
    // The container's first process lives long enough for its /proc/PID/cgroup to be read...
    let files = cg.procs_files();
    let (_, _, status) = run_in_cgroups(&bin, &files, closed_port(), 300);
    assert_eq!(status.code(), Some(3), "the job ran");
    // ...the next ones are gone (reaped) within a millisecond or two of their exec, long before
    // the daemon's next ring-buffer poll: only the kernel's ids of their cgroups (v2, and the
    // cgroup in a v1 hierarchy) can attribute them; their v2 cgroup names no container.
    const QUICK: usize = 20;
    for _ in 0..QUICK {
        let (_, _, status) = run_in_cgroups(&bin, &files, closed_port(), 0);
        assert_eq!(status.code(), Some(3));
    }
    let n = (QUICK + 1) as f64;
    scraper.wait_for("every run's TCP and exit series, under the pod", Duration::from_secs(20), |m| connects_and_exit(m, &comm) == (n, n));
    let scrapes = scraper.finish();
    let samples = assert_always_labelled(&scrapes, &comm, ("", UID, &CID[..12]));
    assert!(samples >= 2, "{samples} samples");
}
