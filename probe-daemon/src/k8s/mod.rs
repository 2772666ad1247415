//! Kubernetes: which container and pod a process belongs to, and cardinality control of the
//! labels that adds.
//!
//! - [`cgroup`] reads container id, pod UID and QoS class from `/proc/PID/cgroup` (cgroup v1 and
//!   v2; containerd, CRI-O, Docker; systemd and cgroupfs drivers). Needs nothing but procfs.
//! - [`api`] keeps a cache of this node's pods from a node-scoped list+watch on the API server,
//!   which turns ids into names (namespace, pod, container, owning workload).
//! - [`PodResolver`] puts both together: `resolve(pid)` gives a [`PodMeta`] with the cgroup
//!   fields always, and the names once the API cache knows the pod.
//! - [`policy`] drops or keeps labels and caps the number of series.
//!
//! Outside a cluster (no `KUBERNETES_SERVICE_HOST` or no service-account token) the resolver
//! works from cgroups alone.

pub mod api;
pub mod cgroup;
pub mod policy;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::Deserialize;
use tracing::{info, warn};

pub use api::{ApiConfig, PodCache, PodInfo, Watcher};
pub use cgroup::{parse_proc_cgroup, CgroupIdentity, QosClass, Runtime};
pub use policy::{LabelPolicy, LabelPolicyConfig, PolicyError, SeriesLimiter};

/// Errors of the Kubernetes integration; each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("not running in a Kubernetes pod ({missing} is missing): pod names come from cgroups only; set kubernetes.api = \"off\" to silence this, or run as the DaemonSet in deploy/")]
    NotInCluster { missing: String },
    #[error("the node name is unknown: set NODE_NAME from the downward API (fieldRef spec.nodeName, as deploy/daemonset.yaml does) or kubernetes.node_name")]
    NoNodeName,
    #[error("cannot read {path}: {source} (is the service account token mounted? automountServiceAccountToken must not be false)")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("the Kubernetes API CA bundle (service account ca.crt) is not usable: {reason}")]
    InvalidCa { reason: String },
    #[error("cannot build the HTTPS client for the Kubernetes API: {source}")]
    Client { source: reqwest::Error },
    #[error("Kubernetes API request failed ({what}): {source}; check that the API server is reachable from the node (egress NetworkPolicy, KUBERNETES_SERVICE_HOST)")]
    Http { what: &'static str, source: reqwest::Error },
    #[error("Kubernetes API answered {code} on {url}: {message}{}", hint(*code))]
    Status { url: String, code: u16, message: String },
    #[error("cannot decode the Kubernetes API's {what}: {source}")]
    Decode { what: &'static str, source: serde_json::Error },
}

fn hint(code: u16) -> &'static str {
    match code {
        401 => " (the service-account token was rejected: is it expired or from another cluster?)",
        403 => " (RBAC: the chainprobe ServiceAccount needs get/list/watch on pods; apply deploy/rbac.yaml)",
        _ => "",
    }
}

/// When to use the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiMode {
    /// Use it when running in a pod (service host and token present), else cgroups only.
    #[default]
    Auto,
    /// Require it: [`PodResolver::start`] fails when it cannot be configured.
    On,
    /// Never: cgroup labels only.
    Off,
}

/// The `[kubernetes]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    pub api: ApiMode,
    /// This node's name; empty = `$NODE_NAME`, then the host name.
    pub node_name: String,
    /// Where the host's procfs is (the DaemonSet runs with hostPID, so `/proc`).
    pub proc_root: String,
    /// API server URL override (e.g. `http://127.0.0.1:8001` for `kubectl proxy`); empty = in-cluster.
    pub api_server: String,
    /// Server-side timeout of one watch request before it is re-opened.
    pub watch_timeout_seconds: u64,
    /// Upper bound of the retry backoff after API errors.
    pub max_backoff_seconds: u64,
    /// With the API in use, the series of a process in a pod the API has not named yet (a new
    /// pod, or the container's status not yet posted) are held out of /metrics until the names
    /// arrive or this many seconds have passed since the process was first seen; then they are
    /// exposed with the names, else with the pod UID and container id. Labels never change
    /// afterwards. 0 = never wait.
    pub pod_name_wait_seconds: u64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            api: ApiMode::Auto,
            node_name: String::new(),
            proc_root: "/proc".into(),
            api_server: String::new(),
            watch_timeout_seconds: 290,
            max_backoff_seconds: 30,
            pod_name_wait_seconds: 10,
        }
    }
}

impl KubernetesConfig {
    /// `node_name`, else `$NODE_NAME`, else the kernel's host name.
    pub fn effective_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        if let Ok(n) = std::env::var("NODE_NAME") {
            if !n.is_empty() {
                return n;
            }
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    }
}

/// Everything known about the container/pod of a process. Names are `None` until the API cache
/// knows the pod (or always, without the API).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
    pub runtime: Option<Runtime>,
    /// From the pod annotation `chainprobe.io/pprof-port`.
    pub pprof_port: Option<u16>,
}

/// Values of the `namespace`, `pod`, `container` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl PodMeta {
    /// True when the API supplied the names.
    pub fn has_names(&self) -> bool {
        self.pod.is_some()
    }

    /// True when every label is final: the pod is named and, for a process in a container, so is
    /// the container (the kubelet posts a container's id in the pod status after it started).
    pub fn names_complete(&self) -> bool {
        self.pod.is_some() && (self.container_id.is_none() || self.container.is_some())
    }

    /// Label values: names when known; otherwise `pod` is the pod UID and `container` the first
    /// 12 characters of the container id (as `crictl ps` shows them), `namespace` is empty.
    pub fn labels(&self) -> PodLabels {
        PodLabels {
            namespace: self.namespace.clone().unwrap_or_default(),
            pod: self.pod.clone().or_else(|| self.pod_uid.clone()).unwrap_or_default(),
            container: self
                .container
                .clone()
                .or_else(|| self.container_id.as_ref().map(|id| id.chars().take(12).collect()))
                .unwrap_or_default(),
        }
    }

    fn from_identity(id: CgroupIdentity) -> PodMeta {
        PodMeta { container_id: id.container_id, pod_uid: id.pod_uid, qos: id.qos, runtime: id.runtime, ..PodMeta::default() }
    }

    fn fill(&mut self, pod: &PodInfo, container: Option<String>) {
        self.namespace = Some(pod.namespace.clone());
        self.pod = Some(pod.name.clone());
        self.container = container;
        self.pod_uid = Some(pod.uid.clone());
        self.qos = pod.qos.or(self.qos);
        self.owner_kind = pod.owner_kind.clone();
        self.owner_name = pod.owner_name.clone();
        self.pprof_port = pod.pprof_port;
    }
}

/// Where the aggregate learns which pod a process is in: a cgroup read when the process is first
/// seen (I/O, cached by cgroup path), then names from the API cache as often as needed (no I/O).
pub trait PodSource: Send + Sync {
    /// The cgroup identity of `pid` (`None`: not in a container, or gone).
    fn cgroup(&self, pid: u32) -> Option<CgroupIdentity>;
    /// The cgroup identity of the cgroup v2 directory with kernfs id `id` (what the kernel
    /// reports with an exec); for processes gone before their /proc could be read.
    fn cgroup_by_id(&self, _id: u64) -> Option<CgroupIdentity> {
        None
    }
    /// The cgroup identity of a process at its exec, with the ids the kernel gave (0: none): its
    /// cgroup v2 id and the kernfs id of its cgroup in one cgroup v1 hierarchy. By default its
    /// /proc, else the v2 id.
    fn exec_cgroup(&self, pid: u32, id: u64, _v1_id: u64) -> Option<CgroupIdentity> {
        self.cgroup(pid).or_else(|| (id != 0).then(|| self.cgroup_by_id(id)).flatten())
    }
    /// The pod metadata of a cgroup identity with whatever names the API cache has now.
    fn meta(&self, id: &CgroupIdentity) -> PodMeta;
    /// True when names come from an API (so a pod without names may still get them).
    fn names_expected(&self) -> bool;
}

/// Parsed `/proc/PID/cgroup` contents are cached by the contents (every process of a container
/// has the same); bounded.
const CGROUP_CACHE_MAX: usize = 4096;

/// Maps processes to pods. Create once (inside the tokio runtime when the API is used); cheap
/// to share behind an `Arc`. Dropping it stops the watch.
pub struct PodResolver {
    proc_root: PathBuf,
    cache: Option<PodCache>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// `/proc/PID/cgroup` contents → parsed identity.
    parsed: Mutex<HashMap<String, Option<CgroupIdentity>>>,
    /// cgroup v2 id → parsed identity of its path (`None`: the path could not be found, e.g.
    /// outside this cgroup namespace, or the cgroup is gone); ids are never reused.
    by_id: Mutex<HashMap<u64, Option<Option<CgroupIdentity>>>>,
    /// (cgroup v2 id, cgroup v1 kernfs id) at exec → the identity /proc/PID/cgroup gave, on nodes
    /// that mount both versions (see [`PodSource::exec_cgroup`]).
    by_ids: Mutex<HashMap<(u64, u64), Option<CgroupIdentity>>>,
    /// The cgroup v2 hierarchy's root directory and mount point, opened on first use, and
    /// whether it is the only one (no cgroup v1 hierarchy mounted).
    cgroup2: std::sync::OnceLock<Option<(std::fs::File, PathBuf, bool)>>,
}

impl Drop for PodResolver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl PodResolver {
    /// cgroup labels only.
    pub fn cgroup_only(proc_root: impl Into<PathBuf>) -> PodResolver {
        PodResolver { proc_root: proc_root.into(), cache: None, task: None, parsed: Mutex::default(), by_id: Mutex::default(), by_ids: Mutex::default(), cgroup2: std::sync::OnceLock::new() }
    }

    /// With a cache someone else fills (tests, or a caller that runs its own [`Watcher`]).
    pub fn with_cache(proc_root: impl Into<PathBuf>, cache: PodCache) -> PodResolver {
        PodResolver { proc_root: proc_root.into(), cache: Some(cache), task: None, parsed: Mutex::default(), by_id: Mutex::default(), by_ids: Mutex::default(), cgroup2: std::sync::OnceLock::new() }
    }

    /// From the `[kubernetes]` section: starts the node-scoped watch on the current tokio
    /// runtime when the API is to be used. In `auto` mode a missing in-cluster setup is logged
    /// and the resolver works from cgroups; in `on` mode it is an error.
    pub fn start(cfg: &KubernetesConfig) -> Result<PodResolver, K8sError> {
        if cfg.api == ApiMode::Off {
            info!("kubernetes: API disabled; pod labels come from cgroups only");
            return Ok(Self::cgroup_only(&cfg.proc_root));
        }
        let node = cfg.effective_node_name();
        let api = if cfg.api_server.is_empty() {
            ApiConfig::in_cluster(&node)
        } else if node.is_empty() {
            Err(K8sError::NoNodeName)
        } else {
            Ok(ApiConfig::new(cfg.api_server.clone(), node.clone()))
        };
        let mut api = match (api, cfg.api) {
            (Ok(a), _) => a,
            (Err(e @ K8sError::NotInCluster { .. }), ApiMode::Auto) => {
                info!("kubernetes: {e}");
                return Ok(Self::cgroup_only(&cfg.proc_root));
            }
            (Err(e), ApiMode::Auto) => {
                warn!("kubernetes: {e}");
                return Ok(Self::cgroup_only(&cfg.proc_root));
            }
            (Err(e), _) => return Err(e),
        };
        api.watch_timeout = std::time::Duration::from_secs(cfg.watch_timeout_seconds.max(1));
        api.max_backoff = std::time::Duration::from_secs(cfg.max_backoff_seconds.max(1));
        info!(api = %api.base_url, node = %api.node_name, "kubernetes: watching the pods of this node");
        let cache = PodCache::new();
        let watcher = Watcher::new(api, cache.clone())?;
        let task = tokio::spawn(watcher.run());
        Ok(PodResolver { proc_root: cfg.proc_root.clone().into(), cache: Some(cache), task: Some(task), parsed: Mutex::default(), by_id: Mutex::default(), by_ids: Mutex::default(), cgroup2: std::sync::OnceLock::new() })
    }

    pub fn cache(&self) -> Option<&PodCache> {
        self.cache.as_ref()
    }

    /// True when the API is used and its first list has loaded.
    pub fn api_synced(&self) -> bool {
        self.cache.as_ref().is_some_and(PodCache::is_synced)
    }

    /// The pod/container of `pid`, or `None` for processes outside containers (or gone).
    /// Reads `/proc/PID/cgroup` on every call: call it once per new process and again while
    /// `!meta.has_names()` if names matter (a new pod may reach the cache after its process).
    pub fn resolve(&self, pid: u32) -> Option<PodMeta> {
        let contents = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        self.resolve_cgroup(&contents)
    }

    /// [`PodResolver::resolve`] on given `/proc/PID/cgroup` contents.
    pub fn resolve_cgroup(&self, contents: &str) -> Option<PodMeta> {
        let id = self.parse_cached(contents)?;
        Some(self.names(&id))
    }

    /// Parses `/proc/PID/cgroup` contents, from the cache when seen before.
    fn parse_cached(&self, contents: &str) -> Option<CgroupIdentity> {
        let mut parsed = crate::sync::lock(&self.parsed);
        if let Some(id) = parsed.get(contents) {
            return id.clone();
        }
        let id = parse_proc_cgroup(contents);
        if parsed.len() >= CGROUP_CACHE_MAX {
            parsed.clear();
        }
        parsed.insert(contents.to_string(), id.clone());
        id
    }

    /// The metadata of `id` with the names the API cache has now.
    fn names(&self, id: &CgroupIdentity) -> PodMeta {
        let mut meta = PodMeta::from_identity(id.clone());
        if let Some(cache) = &self.cache {
            let by_container = meta.container_id.as_deref().and_then(|cid| cache.container(cid));
            if let Some((pod, name)) = by_container {
                meta.fill(&pod, Some(name));
            } else if let Some(pod) = meta.pod_uid.as_deref().and_then(|uid| cache.pod(uid)) {
                meta.fill(&pod, None);
            }
        }
        meta
    }

    /// PIDs of the processes in pod `namespace/pod` (and `container`, when given), for
    /// `POST /api/v1/snapshots {"namespace","pod","container"}`. Needs the API cache for names.
    pub fn pids_of(&self, namespace: &str, pod: &str, container: Option<&str>) -> Vec<u32> {
        let Some(info) = self.cache.as_ref().and_then(|c| c.find(namespace, pod)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pid in list_pids(&self.proc_root) {
            let Some(meta) = self.resolve(pid) else { continue };
            if meta.pod_uid.as_deref() != Some(info.uid.as_str()) {
                continue;
            }
            if let Some(c) = container {
                if meta.container.as_deref() != Some(c) {
                    continue;
                }
            }
            out.push(pid);
        }
        out
    }
}

impl PodSource for PodResolver {
    fn cgroup(&self, pid: u32) -> Option<CgroupIdentity> {
        self.read_cgroup(pid).flatten()
    }

    fn meta(&self, id: &CgroupIdentity) -> PodMeta {
        self.names(id)
    }

    fn names_expected(&self) -> bool {
        self.cache.is_some()
    }

    fn cgroup_by_id(&self, id: u64) -> Option<CgroupIdentity> {
        self.by_id(id).flatten()
    }

    /// From the exec's cgroup ids, without reading /proc when they tell: a cgroup v2 path that
    /// names a container is that container's in any layout (runtimes place a container in every
    /// hierarchy), and on a node with cgroup v2 alone a path that names none is outside
    /// containers. Otherwise (cgroup v1 hierarchies mounted: the container may show only there)
    /// /proc/PID/cgroup is read once per pair of ids (v2 cgroup, cgroup in the chosen v1
    /// hierarchy) and its identity kept for that pair: a runtime places each container in a
    /// cgroup of its own in every hierarchy, so processes that share both cgroups share their
    /// container (or are outside containers alike). The ids' paths and pairs are cached, so the
    /// hundred execs a second of a crash-looping pod, or of a host's cron jobs, cost no I/O each.
    fn exec_cgroup(&self, pid: u32, id: u64, v1_id: u64) -> Option<CgroupIdentity> {
        if id != 0 {
            match self.by_id(id) {
                Some(Some(ident)) => return Some(ident),
                Some(None) if self.cgroup2_root().is_some_and(|r| r.2) => return None,
                // The id names no container here: only /proc can tell.
                _ => {}
            }
        }
        let pair = (id != 0 && v1_id != 0).then_some((id, v1_id));
        if let Some(known) = pair.and_then(|k| crate::sync::lock(&self.by_ids).get(&k).cloned()) {
            return known;
        }
        let read = self.read_cgroup(pid)?;
        if let Some(k) = pair {
            let mut by_ids = crate::sync::lock(&self.by_ids);
            if by_ids.len() >= CGROUP_CACHE_MAX {
                by_ids.clear();
            }
            by_ids.insert(k, read.clone());
        }
        read
    }
}

impl PodResolver {
    /// `pid`'s parsed /proc/PID/cgroup (`None`: unreadable, the process is gone; `Some(None)`:
    /// outside containers).
    fn read_cgroup(&self, pid: u32) -> Option<Option<CgroupIdentity>> {
        let contents = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        Some(self.parse_cached(&contents))
    }

    fn cgroup2_root(&self) -> Option<&(std::fs::File, PathBuf, bool)> {
        self.cgroup2
            .get_or_init(|| {
                let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
                let mp = cgroup::cgroup2_mount_in(&mi)?;
                let v1 = cgroup::has_cgroup1_mount(&mi);
                std::fs::File::open(&mp).ok().map(|f| (f, mp, !v1))
            })
            .as_ref()
    }

    /// The parsed identity of cgroup v2 id `id`'s path (`Some(None)`: a path outside
    /// containers; `None`: no path found).
    fn by_id(&self, id: u64) -> Option<Option<CgroupIdentity>> {
        if let Some(known) = crate::sync::lock(&self.by_id).get(&id) {
            return known.clone();
        }
        let (dir, mp, _) = self.cgroup2_root()?;
        let ident = cgroup::cgroup_path_by_id(dir, mp, id).map(|p| cgroup::parse_cgroup_path(&p));
        let mut by_id = crate::sync::lock(&self.by_id);
        if by_id.len() >= CGROUP_CACHE_MAX {
            by_id.clear();
        }
        by_id.insert(id, ident.clone());
        ident
    }
}

fn list_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let mut v: Vec<u32> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c6e8a4c-6a7e-4b8e-9e5c-3f1a2b3c4d5e";
    const CID: &str = "8f3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";

    #[test]
    fn an_exec_whose_cgroup_ids_were_read_before_needs_no_proc() {
        // A /proc of its own: pid 100 in a v1 cgroupfs pod, pid 101 outside containers, other
        // pids gone. Ids far above any real cgroup's, so the v2 lookup finds no path.
        let root = std::env::temp_dir().join(format!("chainprobe-exec-cgroups-{}", std::process::id()));
        for (pid, text) in [(100, format!("4:memory:/kubepods/burstable/pod{UID}/{CID}\n0::/\n")), (101, "4:memory:/\n0::/\n".to_string())] {
            std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
            std::fs::write(root.join(pid.to_string()).join("cgroup"), text).unwrap();
        }
        let r = PodResolver::cgroup_only(&root);
        let (v2, in_pod, outside) = (u64::MAX - 7, u64::MAX - 8, u64::MAX - 9);
        let pod = r.exec_cgroup(100, v2, in_pod).expect("read from its /proc");
        assert_eq!(pod.pod_uid.as_deref(), Some(UID));
        assert_eq!(r.exec_cgroup(101, v2, outside), None);
        // Gone before their /proc is read: the pair of ids tells.
        assert_eq!(r.exec_cgroup(200, v2, in_pod), Some(pod.clone()));
        assert_eq!(r.exec_cgroup(201, v2, outside), None);
        // A pair never read, or no v1 id from the kernel: only /proc can tell, and it is gone.
        assert_eq!(r.exec_cgroup(202, v2, u64::MAX - 10), None);
        assert_eq!(r.exec_cgroup(203, v2, 0), None);
        // The pair's identity is the one read, not what a later process's /proc says (ids of
        // cgroups are never reused; a process in the same two cgroups is in the same container).
        assert_eq!(r.exec_cgroup(101, v2, in_pod), Some(pod));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn cgroup_only_labels() {
        let r = PodResolver::cgroup_only("/proc");
        let m = r.resolve_cgroup(&format!("0::/kubepods/burstable/pod{UID}/{CID}\n")).unwrap();
        assert!(!m.has_names());
        let l = m.labels();
        assert_eq!(l.pod, UID);
        assert_eq!(l.container, &CID[..12]);
        assert_eq!(l.namespace, "");
    }

    #[test]
    fn names_are_complete_only_with_the_container_named() {
        let cache = PodCache::new();
        let r = PodResolver::with_cache("/proc", cache.clone());
        assert!(r.names_expected());
        assert!(!PodResolver::cgroup_only("/proc").names_expected());
        let contents = format!("0::/kubepods/burstable/pod{UID}/{CID}\n");
        let id = r.parse_cached(&contents).expect("a pod cgroup");
        assert_eq!(r.parse_cached(&contents).as_ref(), Some(&id), "cached by contents");
        let meta = r.meta(&id);
        assert!(!meta.names_complete() && meta.pod_uid.as_deref() == Some(UID));
        let pod = |containers: Vec<(String, String)>| PodInfo {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: UID.into(),
            qos: None,
            owner_kind: None,
            owner_name: None,
            containers,
            pprof_port: None,
        };
        // The pod is known before its container's status is posted: not complete yet.
        cache.replace_all(vec![pod(vec![])], "1".into());
        let m = r.meta(&id);
        assert!(m.has_names() && !m.names_complete(), "{m:?}");
        cache.replace_all(vec![pod(vec![("app".into(), CID.into())])], "2".into());
        let m = r.meta(&id);
        assert!(m.names_complete());
        assert_eq!(m.labels(), PodLabels { namespace: "shop".into(), pod: "web-0".into(), container: "app".into() });
    }

    #[test]
    fn resolve_own_process_outside_containers() {
        // The test runner is not in a pod cgroup.
        let r = PodResolver::cgroup_only("/proc");
        let m = r.resolve(std::process::id());
        assert!(m.as_ref().is_none_or(|m| m.pod_uid.is_none()), "{m:?}");
        assert_eq!(r.resolve(u32::MAX), None);
    }

    #[test]
    fn config_defaults_and_toml() {
        let c: KubernetesConfig = toml::from_str("").unwrap();
        assert_eq!(c, KubernetesConfig::default());
        let c: KubernetesConfig = toml::from_str("api = \"off\"\nnode_name = \"n1\"").unwrap();
        assert_eq!(c.api, ApiMode::Off);
        assert_eq!(c.effective_node_name(), "n1");
        assert!(toml::from_str::<KubernetesConfig>("api = \"maybe\"").is_err());
    }

    #[tokio::test]
    async fn start_off_and_auto_outside_cluster() {
        let mut c = KubernetesConfig { api: ApiMode::Off, ..KubernetesConfig::default() };
        assert!(PodResolver::start(&c).unwrap().cache().is_none());
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            c.api = ApiMode::Auto;
            assert!(PodResolver::start(&c).unwrap().cache().is_none());
            c.api = ApiMode::On;
            let e = PodResolver::start(&c).err().expect("on without a cluster fails");
            assert!(e.to_string().contains("KUBERNETES_SERVICE_HOST"), "{e}");
        }
    }
}
