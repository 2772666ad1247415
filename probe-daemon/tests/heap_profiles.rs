//! Heap profiles read out of process (issue #16): the `heapprof` Go fixture
//! (tests/fixtures/go/src/heapprof) retains known amounts in known functions; chainprobe's profile
//! of it is compared with the profile the same process writes itself (pprof.WriteHeapProfile) at
//! the same moment, for Go 1.19, 1.26 and 1.27, default, stripped and PIE-stripped builds. Then the
//! daemon end to end: source proc-mem, the bucket cap, MemProfileRate = 0, a process that exits
//! mid-read.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{serial, Daemon, GoProgram, TempDir};
use serde_json::Value;

const VERSIONS: &[&str] = &["1.19", "1.26", "1.27"];
const VARIANTS: &[&str] = &["default", "stripped", "pie-stripped"];
const MIB: i64 = 1 << 20;

// ---- a minimal profile.proto reader ----

/// A sample: location ids leaf first, values, numeric labels.
type Sample = (Vec<u64>, Vec<i64>, Vec<(String, i64)>);
/// A location: mapping id, address, [(function id, line)].
type Location = (u64, u64, Vec<(u64, i64)>);

#[derive(Debug, Default)]
struct Prof {
    types: Vec<(String, String)>,
    period: i64,
    samples: Vec<Sample>,
    locs: HashMap<u64, Location>,
    /// id → (name, file)
    funcs: HashMap<u64, (String, String)>,
    /// (start, limit, file, build id)
    mappings: Vec<(u64, u64, String, String)>,
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let x = b[*i];
        *i += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Fields of one message: (field, varint value or bytes).
fn fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let k = varint(b, &mut i);
        match k & 7 {
            0 => out.push((k >> 3, varint(b, &mut i), &b[0..0])),
            2 => {
                let n = varint(b, &mut i) as usize;
                out.push((k >> 3, 0, &b[i..i + n]));
                i += n;
            }
            w => panic!("wire type {w}"),
        }
    }
    out
}

fn ints(v: u64, data: &[u8]) -> Vec<u64> {
    if data.is_empty() {
        return vec![v];
    }
    let mut i = 0;
    let mut out = Vec::new();
    while i < data.len() {
        out.push(varint(data, &mut i));
    }
    out
}

fn parse(gz: &[u8]) -> Prof {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).expect("gzipped profile");
    let mut strings = Vec::new();
    for (f, _, d) in fields(&raw) {
        if f == 6 {
            strings.push(String::from_utf8(d.to_vec()).unwrap());
        }
    }
    let s = |i: u64| strings[i as usize].clone();
    let mut p = Prof::default();
    for (f, v, d) in fields(&raw) {
        match f {
            1 => {
                let m: BTreeMap<u64, u64> = fields(d).into_iter().map(|(f, v, _)| (f, v)).collect();
                p.types.push((s(m.get(&1).copied().unwrap_or(0)), s(m.get(&2).copied().unwrap_or(0))));
            }
            2 => {
                let (mut locs, mut vals, mut labels) = (Vec::new(), Vec::new(), Vec::new());
                for (f, v, d) in fields(d) {
                    match f {
                        1 => locs.extend(ints(v, d)),
                        2 => vals.extend(ints(v, d).into_iter().map(|x| x as i64)),
                        3 => {
                            let m: BTreeMap<u64, u64> = fields(d).into_iter().map(|(f, v, _)| (f, v)).collect();
                            labels.push((s(m[&1]), m.get(&3).copied().unwrap_or(0) as i64));
                        }
                        _ => {}
                    }
                }
                p.samples.push((locs, vals, labels));
            }
            3 => {
                let m: BTreeMap<u64, u64> = fields(d).into_iter().map(|(f, v, _)| (f, v)).collect();
                let g = |k| m.get(&k).copied().unwrap_or(0);
                p.mappings.push((g(2), g(3), s(g(5)), s(g(6))));
            }
            4 => {
                let (mut id, mut mapping, mut addr, mut lines) = (0, 0, 0, Vec::new());
                for (f, v, d) in fields(d) {
                    match f {
                        1 => id = v,
                        2 => mapping = v,
                        3 => addr = v,
                        4 => {
                            let m: BTreeMap<u64, u64> = fields(d).into_iter().map(|(f, v, _)| (f, v)).collect();
                            lines.push((m.get(&1).copied().unwrap_or(0), m.get(&2).copied().unwrap_or(0) as i64));
                        }
                        _ => {}
                    }
                }
                p.locs.insert(id, (mapping, addr, lines));
            }
            5 => {
                let m: BTreeMap<u64, u64> = fields(d).into_iter().map(|(f, v, _)| (f, v)).collect();
                let g = |k| m.get(&k).copied().unwrap_or(0);
                p.funcs.insert(g(1), (s(g(2)), s(g(4))));
            }
            12 => p.period = v as i64,
            _ => {}
        }
    }
    p
}

impl Prof {
    fn index(&self, t: &str) -> usize {
        self.types.iter().position(|(n, _)| n == t).unwrap_or_else(|| panic!("no sample type {t}: {:?}", self.types))
    }

    /// The frames of a sample's leaf location: (function, file, line), innermost first.
    fn leaf(&self, sample: usize) -> Vec<(String, String, i64)> {
        let Some(l) = self.samples[sample].0.first() else { return Vec::new() };
        self.locs[l].2.iter().map(|(f, line)| (self.funcs[f].0.clone(), self.funcs[f].1.clone(), *line)).collect()
    }

    /// Flat values of sample type `t` by function (the innermost frame of each sample's leaf).
    fn flat(&self, t: &str) -> BTreeMap<String, i64> {
        let i = self.index(t);
        let mut out = BTreeMap::new();
        for (k, s) in self.samples.iter().enumerate() {
            if let Some((f, _, _)) = self.leaf(k).into_iter().next() {
                *out.entry(f).or_insert(0) += s.1[i];
            }
        }
        out
    }

    /// The leaf locations' frames of every sample whose innermost function is `func`.
    fn sites(&self, func: &str) -> BTreeSet<Vec<(String, String, i64)>> {
        (0..self.samples.len()).map(|k| self.leaf(k)).filter(|l| l.first().is_some_and(|f| f.0 == func)).collect()
    }

    /// The functions with the most of `t`, most first.
    fn top(&self, t: &str, n: usize) -> Vec<String> {
        let mut v: Vec<(String, i64)> = self.flat(t).into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().take(n).map(|x| x.0).collect()
    }
}

// ---- helpers ----

fn heapprof(version: &str, variant: &str) -> PathBuf {
    common::go_fixture(version, variant, "heapprof")
}

/// `go tool pprof` of the newest toolchain.
fn pprof_tool(args: &[&str], file: &Path) -> String {
    common::pprof(common::go_versions().last().copied().unwrap_or("1.27"), args, file)
}

/// What chainprobe wrote for a heap snapshot: the profile's bytes and the summary.
struct Ours {
    profile_gz: Vec<u8>,
    summary: Value,
}

/// chainprobe's heap snapshot of `pid`, requested over the daemon's API (only the public
/// surface: the test does not depend on the library's modules).
fn ours(api: &Api<'_>, dir: &Path, pid: u32) -> Ours {
    let snap = api.wait_finished(&api.request(pid));
    assert_eq!(snap["status"], "done", "{snap}\n{}", api.d.log_text());
    assert_eq!(snap["files"]["heap"]["source"], "proc-mem", "{snap}");
    let file = dir.join(snap["files"]["heap"]["file"].as_str().unwrap());
    Ours { profile_gz: std::fs::read(&file).unwrap(), summary: snap }
}

/// A daemon for heap snapshots on request, its snapshots in `dir`.
fn heap_daemon(tag: &str, dir: &TempDir, extra: &str) -> Daemon {
    Daemon::start(tag, &format!("[snapshot]\ndir = \"{}\"\nmax_per_target_per_hour = 1000\nmax_snapshots = 1000\n{extra}", dir.0.display()))
}

fn api(d: &Daemon) -> Api<'_> {
    Api { d, http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap() }
}

fn theirs(app: &mut GoProgram, dir: &TempDir, name: &str) -> (Prof, PathBuf) {
    let path = dir.0.join(name);
    app.cmd(&format!("write {}", path.display()));
    (parse(&std::fs::read(&path).unwrap()), path)
}

fn within(ours: i64, theirs: i64, pct: f64) -> bool {
    (ours - theirs).abs() as f64 <= theirs.abs() as f64 * pct / 100.0
}

// ---- tests ----

#[test]
fn out_of_process_profile_matches_the_process_own_heap_profile() {
    let _g = serial();
    let dir = TempDir::new("heap-compare");
    let snaps = TempDir::new("heap-compare-snaps");
    let d = heap_daemon("heap-compare", &snaps, "");
    let api = api(&d);
    let mut report = Vec::new();
    for version in VERSIONS {
        for variant in VARIANTS {
            let ctx = format!("go{version} {variant}");
            let t0 = Instant::now();
            let mut app = GoProgram::start(&ctx, &heapprof(version, variant));
            api.wait_tracked(app.pid);
            assert_eq!(app.cmd("retain"), vec![48 * MIB, 8 * MIB, 16 * MIB], "{ctx}");
            app.cmd("gc");
            // chainprobe's profile, then the process's own, a few ms apart.
            let c = ours(&api, &snaps.0, app.pid);
            let info = &c.summary["heap_profile"];
            let (go, go_path) = theirs(&mut app, &dir, &format!("{version}-{variant}-go.pb.gz"));
            let our_path = dir.0.join(format!("{version}-{variant}-ours.pb.gz"));
            std::fs::write(&our_path, &c.profile_gz).unwrap();
            let me = parse(&c.profile_gz);
            // The same sample types, period and scaling.
            assert_eq!(me.types, go.types, "{ctx}");
            assert_eq!(me.period, go.period, "{ctx}: period (MemProfileRate)");
            assert_eq!(me.period, 512 * 1024, "{ctx}");
            assert_eq!(info["buckets"].as_u64().unwrap() as usize, me.samples.len(), "{ctx}: one sample per bucket");
            assert!(info.get("inline_frames").is_none(), "{ctx}: {info}");
            // In use per function: within 10% of what the process reports itself.
            let (mine, gos) = (me.flat("inuse_space"), go.flat("inuse_space"));
            for (f, truth) in [("main.retainBig", 48 * MIB), ("main.retainSmall", 8 * MIB), ("main.newChunk", 16 * MIB)] {
                let (a, b) = (mine.get(f).copied().unwrap_or(0), gos.get(f).copied().unwrap_or(0));
                assert!(within(a, b, 10.0), "{ctx}: {f} in use: ours {a}, Go's own {b}\nours {mine:?}\nGo's {gos:?}");
                report.push(format!("{ctx}: {f} inuse_space ours {a} Go's {b} (retained {truth})"));
            }
            // Three 16 MiB objects are sampled for sure: the truth.
            assert!(within(mine["main.retainBig"], 48 * MIB, 10.0), "{ctx}: {mine:?}");
            assert_eq!(me.top("inuse_space", 3), go.top("inuse_space", 3), "{ctx}: top functions\nours {mine:?}\nGo's {gos:?}");
            // File and line of the allocation sites, inlined allocator included, as the process
            // symbolizes them itself.
            for f in ["main.retainBig", "main.retainSmall", "main.newChunk"] {
                let (a, b) = (me.sites(f), go.sites(f));
                assert!(!a.is_empty() && a == b, "{ctx}: {f} sites\nours {a:?}\nGo's {b:?}");
            }
            let inl = me.sites("main.newChunk").into_iter().next().unwrap();
            assert!(inl.len() >= 2 && inl[1].0 == "main.retainInlined", "{ctx}: inlined call expanded in one location: {inl:?}");
            assert!(inl[0].1.ends_with("main.go") && inl[0].2 > 0, "{ctx}: {inl:?}");
            // The mapping of the executable carries its build ID.
            let exe = std::fs::read_link(format!("/proc/{}/exe", app.pid)).unwrap().display().to_string();
            assert!(me.mappings.iter().any(|m| m.2 == exe && !m.3.is_empty()), "{ctx}: mappings {:?}", me.mappings);
            // `go tool pprof` reads it like Go's own.
            let top = pprof_tool(&["-sample_index=inuse_space", "-top"], &our_path);
            assert!(top.contains("main.retainBig") && top.contains("main.newChunk"), "{ctx}:\n{top}");
            let list = pprof_tool(&["-sample_index=inuse_space", "-traces"], &our_path);
            let golist = pprof_tool(&["-sample_index=inuse_space", "-traces"], &go_path);
            for needle in ["main.retainInlined", "main.newChunk"] {
                assert!(list.contains(needle) && golist.contains(needle), "{ctx}: {needle}\n{list}");
            }
            // `go tool pprof -lines` prints the same file:line for every retaining frame.
            let lines = |text: &str| -> BTreeSet<String> {
                text.lines().map(str::trim).filter(|l| l.contains("main.retain") || l.contains("main.newChunk")).map(|l| l.split_whitespace().filter(|w| w.starts_with("main.") || w.contains(".go:")).collect::<Vec<_>>().join(" ")).collect()
            };
            let (ours_lines, go_lines) = (lines(&pprof_tool(&["-lines", "-traces", "-sample_index=inuse_space"], &our_path)), lines(&pprof_tool(&["-lines", "-traces", "-sample_index=inuse_space"], &go_path)));
            assert!(ours_lines.len() >= 4 && ours_lines == go_lines, "{ctx}: go tool pprof -lines\nours {ours_lines:#?}\nGo's {go_lines:#?}");
            // alloc_space only grows between two snapshots (a profile shows allocations up to
            // the last completed GC cycle: one runs between them).
            app.cmd("churn 8");
            app.cmd("gc");
            let again = parse(&ours(&api, &snaps.0, app.pid).profile_gz);
            let (before, after) = (me.flat("alloc_space"), again.flat("alloc_space"));
            for (f, v) in &before {
                let now = after.get(f).copied().unwrap_or(0);
                assert!(now >= *v, "{ctx}: alloc_space of {f} went from {v} to {now}");
            }
            let total = |m: &BTreeMap<String, i64>| m.values().sum::<i64>();
            assert!(total(&after) > total(&before), "{ctx}: churn shows in alloc_space");
            report.push(format!("{ctx}: checked in {:.1} s", t0.elapsed().as_secs_f64()));
            report.push(format!(
                "{ctx}: {} buckets, read {:.1} ms ({} bytes), written {:.1} ms",
                info["buckets"],
                info["read_seconds"].as_f64().unwrap_or(0.0) * 1e3,
                info["bytes_read"],
                info["write_seconds"].as_f64().unwrap_or(0.0) * 1e3
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// The daemon's API, as the tests use it.
struct Api<'d> {
    d: &'d Daemon,
    http: reqwest::blocking::Client,
}

impl Api<'_> {
    fn json(&self, method: &str, path: &str, body: Option<String>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.d.addr);
        let req = match method {
            "POST" => self.http.post(&url).header("content-type", "application/json").body(body.unwrap_or_default()),
            _ => self.http.get(&url),
        };
        let resp = req.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().unwrap()).unwrap_or(Value::Null))
    }

    fn wait_tracked(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self.json("GET", "/api/v1/targets", None);
            if v["targets"].as_array().into_iter().flatten().any(|t| t["pid"] == pid && t["runtime_reads"] == "ok") {
                return;
            }
            assert!(Instant::now() < deadline, "process {pid} not tracked within 20 s: {v}\n{}", self.d.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn request(&self, pid: u32) -> String {
        let (s, v) = self.json("POST", "/api/v1/snapshots", Some(serde_json::json!({ "pid": pid, "kinds": ["heap"] }).to_string()));
        assert_eq!(s, 202, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn wait_finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = self.json("GET", &format!("/api/v1/snapshots/{id}"), None);
            assert_eq!(s, 200, "{v}");
            if v["status"] == "done" || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "snapshot {id} still {} after 30 s", v["status"]);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        matches!(self.d.get("/readyz"), Ok((200, _)))
    }
}

fn heap_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| p.to_string_lossy().ends_with(".heap.pb.gz"));
    v.sort();
    v
}

#[test]
fn daemon_writes_proc_mem_heap_profiles_and_refuses_cleanly() {
    let _g = serial();
    let snaps = TempDir::new("heap-snaps");
    let d = heap_daemon("heap-daemon", &snaps, "heap_max_buckets = 20000\n");
    let api = api(&d);
    let newest = VERSIONS[VERSIONS.len() - 1];

    // A stripped PIE without any endpoint: the heap profile comes from its memory.
    let mut app = GoProgram::start("heapprof", &heapprof(newest, "pie-stripped"));
    api.wait_tracked(app.pid);
    app.cmd("retain");
    app.cmd("gc");
    let snap = api.wait_finished(&api.request(app.pid));
    assert_eq!(snap["status"], "done", "{snap}");
    assert_eq!(snap["files"]["heap"]["source"], "proc-mem", "{snap}");
    let buckets = snap["heap_profile"]["buckets"].as_u64().unwrap();
    assert!(buckets > 3, "{snap}");
    let file = snaps.0.join(snap["files"]["heap"]["file"].as_str().unwrap());
    let p = parse(&std::fs::read(&file).unwrap());
    assert_eq!(p.samples.len() as u64, buckets);
    assert!(within(p.flat("inuse_space")["main.retainBig"], 48 * MIB, 10.0), "{:?}", p.flat("inuse_space"));
    assert!(pprof_tool(&["-top"], &file).contains("main.retainBig"));

    // More buckets than the cap: a clean error, no file, the daemon keeps running.
    app.cmd("buckets 30000");
    let before = heap_files(&snaps.0);
    let snap = api.wait_finished(&api.request(app.pid));
    let why = snap["errors"]["heap"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("more than 20000 memory-profile buckets"), "{snap}");
    assert!(snap["files"].get("heap").is_none(), "{snap}");
    assert_eq!(heap_files(&snaps.0), before, "nothing partial on disk");
    assert!(api.alive());
    drop(app);

    // MemProfileRate = 0: said so, and nothing else.
    let mut off = GoProgram::spawn("heapprof-rate0", {
        let mut c = Command::new(heapprof(newest, "stripped"));
        c.env("HEAPPROF_RATE", "0");
        c
    });
    assert_eq!(off.cmd("rate"), vec![0]);
    off.cmd("retain");
    api.wait_tracked(off.pid);
    let snap = api.wait_finished(&api.request(off.pid));
    let why = snap["errors"]["heap"].as_str().unwrap_or_default();
    assert!(why.contains("profiling disabled in this process"), "{snap}");
    assert!(snap["files"].get("heap").is_none(), "{snap}");
    assert_eq!(heap_files(&snaps.0), before, "nothing on disk");
    drop(off);

    // A process that exits while it is read: a clean outcome either way, never a partial file.
    let mut outcomes = Vec::new();
    for delay_ms in [0u64, 5, 10, 15, 20, 30, 50] {
        let mut gone = GoProgram::start("heapprof-exit", &heapprof(newest, "default"));
        gone.cmd("buckets 15000");
        api.wait_tracked(gone.pid);
        let id = api.request(gone.pid);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = gone.child.kill();
        let _ = gone.child.wait();
        let snap = api.wait_finished(&id);
        let heap_file = snap["files"]["heap"]["file"].as_str().map(|f| snaps.0.join(f));
        match (&snap["status"], heap_file) {
            (s, None) if s == "failed" => assert!(snap["reason"].as_str().unwrap_or_default().contains("exited"), "{snap}"),
            (s, Some(f)) if s == "done" => {
                // Read in full before the exit: a whole profile.
                assert_eq!(parse(&std::fs::read(&f).unwrap()).samples.len() as u64, snap["heap_profile"]["buckets"].as_u64().unwrap());
            }
            _ => panic!("unclean outcome: {snap}"),
        }
        outcomes.push(format!("{delay_ms} ms: {} {}", snap["status"], snap["reason"].as_str().unwrap_or_default()));
        assert!(api.alive(), "the daemon keeps running");
    }
    eprintln!("exit mid-read outcomes: {outcomes:?}");
    // Every heap file on disk is a whole profile named by a summary.
    for f in heap_files(&snaps.0) {
        assert!(!parse(&std::fs::read(&f).unwrap()).samples.is_empty(), "{}", f.display());
    }
    assert!(api.alive(), "the daemon keeps running:\n{}", d.log_text());
}

