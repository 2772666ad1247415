//! A node-scoped pod watch against the Kubernetes API: list, then watch from the list's
//! `resourceVersion`, with bookmarks, reconnects with backoff, and a relist when the server says
//! the version is too old (`410 Gone`, as an HTTP status or as a watch `ERROR` event).
//!
//! Only pods on this node are asked for (`fieldSelector=spec.nodeName=<node>`), so the cache and
//! the API server's work stay proportional to one node. RBAC cannot express that restriction
//! (a ClusterRole grants `list`/`watch` on all pods); the field selector is what keeps each
//! DaemonSet pod's view to its node (see docs/deploy.md).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::StreamExt;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{cgroup::QosClass, K8sError};

/// Where the service account's files are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// e.g. `https://10.96.0.1:443` (no trailing slash).
    pub base_url: String,
    /// Only pods with `spec.nodeName` equal to this are listed and watched.
    pub node_name: String,
    /// Bearer token file, re-read before every request (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Fixed bearer token (tests, or when no file is used).
    pub token: Option<String>,
    /// PEM CA bundle the API server's certificate must chain to (in-cluster: `ca.crt`).
    pub ca_pem: Option<Vec<u8>>,
    /// Server-side watch timeout (`timeoutSeconds`); the watch is then re-opened.
    pub watch_timeout: Duration,
    /// Timeout of one list page and of connecting.
    pub request_timeout: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Page size of the list.
    pub page_size: u32,
}

impl ApiConfig {
    pub fn new(base_url: impl Into<String>, node_name: impl Into<String>) -> ApiConfig {
        ApiConfig {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            node_name: node_name.into(),
            token_file: None,
            token: None,
            ca_pem: None,
            watch_timeout: Duration::from_secs(290),
            request_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            page_size: 500,
        }
    }

    /// In-cluster configuration: `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` and the
    /// service account's `token` and `ca.crt`.
    pub fn in_cluster(node_name: &str) -> Result<ApiConfig, K8sError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok();
        Self::in_cluster_from(host.as_deref(), port.as_deref(), Path::new(SERVICE_ACCOUNT_DIR), node_name)
    }

    /// [`ApiConfig::in_cluster`] with its inputs given (testable).
    pub fn in_cluster_from(host: Option<&str>, port: Option<&str>, sa_dir: &Path, node_name: &str) -> Result<ApiConfig, K8sError> {
        let host = host.filter(|h| !h.is_empty()).ok_or(K8sError::NotInCluster { missing: "KUBERNETES_SERVICE_HOST".into() })?;
        let port = port.filter(|p| !p.is_empty()).unwrap_or("443");
        let token_file = sa_dir.join("token");
        if !token_file.exists() {
            return Err(K8sError::NotInCluster { missing: token_file.display().to_string() });
        }
        let ca_path = sa_dir.join("ca.crt");
        let ca_pem = std::fs::read(&ca_path).map_err(|source| K8sError::ReadFile { path: ca_path.clone(), source })?;
        if node_name.is_empty() {
            return Err(K8sError::NoNodeName);
        }
        // IPv6 service addresses need brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        let mut cfg = ApiConfig::new(format!("https://{host}:{port}"), node_name);
        cfg.token_file = Some(token_file);
        cfg.ca_pem = Some(ca_pem);
        Ok(cfg)
    }

    fn bearer(&self) -> Result<Option<String>, K8sError> {
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path).map_err(|source| K8sError::ReadFile { path: path.clone(), source })?;
            return Ok(Some(t.trim().to_string()));
        }
        Ok(self.token.clone())
    }
}

/// What the cache knows about one pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub qos: Option<QosClass>,
    /// The controlling owner, with a ReplicaSet created by a Deployment reported as the
    /// Deployment (from the `pod-template-hash` label; no extra API read, no extra RBAC).
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
    /// (container name, container id without the `runtime://` prefix), including init and
    /// ephemeral containers that have started.
    pub containers: Vec<(String, String)>,
    /// The port of the pod's net/http/pprof endpoint, from the annotation [`PPROF_PORT_ANNOTATION`].
    pub pprof_port: Option<u16>,
}

/// Pod annotation naming the port of its net/http/pprof endpoint (tried first for snapshots).
pub const PPROF_PORT_ANNOTATION: &str = "chainprobe.io/pprof-port";

#[derive(Default)]
struct CacheInner {
    pods: HashMap<String, PodInfo>,
    /// container id → pod uid
    by_container: HashMap<String, String>,
    synced: bool,
    resource_version: String,
}

impl CacheInner {
    fn insert(&mut self, pod: PodInfo) {
        self.remove(&pod.uid);
        for (_, id) in &pod.containers {
            self.by_container.insert(id.clone(), pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for (_, id) in &old.containers {
                if self.by_container.get(id).map(String::as_str) == Some(uid) {
                    self.by_container.remove(id);
                }
            }
        }
    }
}

/// The pods of this node, kept current by [`Watcher`]. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct PodCache {
    inner: Arc<RwLock<CacheInner>>,
}

impl PodCache {
    pub fn new() -> PodCache {
        PodCache::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pod(&self, uid: &str) -> Option<PodInfo> {
        self.read().pods.get(uid).cloned()
    }

    /// The pod that runs container `container_id` and the container's name.
    pub fn container(&self, container_id: &str) -> Option<(PodInfo, String)> {
        let g = self.read();
        let uid = g.by_container.get(container_id)?;
        let pod = g.pods.get(uid)?;
        let name = pod.containers.iter().find(|(_, id)| id == container_id).map(|(n, _)| n.clone())?;
        Some((pod.clone(), name))
    }

    /// All pods, sorted by namespace and name.
    pub fn pods(&self) -> Vec<PodInfo> {
        let mut v: Vec<PodInfo> = self.read().pods.values().cloned().collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    pub fn find(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.read().pods.values().find(|p| p.namespace == namespace && p.name == name).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once a full list has been loaded.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// The last resourceVersion seen (list, event or bookmark).
    pub fn resource_version(&self) -> String {
        self.read().resource_version.clone()
    }

    pub(crate) fn replace_all(&self, pods: Vec<PodInfo>, rv: String) {
        let mut g = self.write();
        g.pods.clear();
        g.by_container.clear();
        for p in pods {
            g.insert(p);
        }
        g.synced = true;
        g.resource_version = rv;
    }
}

// ---- wire types (only the fields used) ----

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ObjectMeta {
    name: String,
    namespace: String,
    uid: String,
    resource_version: String,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    owner_references: Vec<OwnerRef>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OwnerRef {
    kind: String,
    name: String,
    controller: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    qos_class: String,
    container_statuses: Vec<ContainerStatus>,
    init_container_statuses: Vec<ContainerStatus>,
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID")]
    container_id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Pod {
    metadata: ObjectMeta,
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: String,
    #[serde(rename = "continue")]
    continue_: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodList {
    metadata: ListMeta,
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    code: u16,
    reason: String,
    message: String,
}

impl From<Pod> for PodInfo {
    fn from(p: Pod) -> PodInfo {
        let m = p.metadata;
        let owner = m.owner_references.iter().find(|o| o.controller == Some(true)).or(m.owner_references.first());
        let (mut owner_kind, mut owner_name) = match owner {
            Some(o) => (Some(o.kind.clone()), Some(o.name.clone())),
            None => (None, None),
        };
        if owner_kind.as_deref() == Some("ReplicaSet") {
            if let (Some(hash), Some(rs)) = (m.labels.get("pod-template-hash"), owner_name.as_deref()) {
                if let Some(dep) = rs.strip_suffix(hash.as_str()).and_then(|s| s.strip_suffix('-')) {
                    owner_kind = Some("Deployment".into());
                    owner_name = Some(dep.to_string());
                }
            }
        }
        let containers = p
            .status
            .container_statuses
            .iter()
            .chain(&p.status.init_container_statuses)
            .chain(&p.status.ephemeral_container_statuses)
            .filter_map(|c| {
                let id = c.container_id.split_once("://").map(|(_, id)| id).unwrap_or(&c.container_id);
                (!id.is_empty()).then(|| (c.name.clone(), id.to_ascii_lowercase()))
            })
            .collect();
        PodInfo {
            namespace: m.namespace,
            name: m.name,
            uid: m.uid,
            qos: QosClass::from_api(&p.status.qos_class),
            owner_kind,
            owner_name,
            containers,
            pprof_port: m.annotations.get(PPROF_PORT_ANNOTATION).and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
enum WatchEnd {
    /// The server closed the stream (timeout): re-watch from the last version.
    Closed,
    /// 410 Gone: the version is too old, relist.
    Expired,
}

/// Lists and watches the pods of one node into a [`PodCache`].
pub struct Watcher {
    cfg: ApiConfig,
    client: reqwest::Client,
    cache: PodCache,
}

impl Watcher {
    pub fn new(cfg: ApiConfig, cache: PodCache) -> Result<Watcher, K8sError> {
        let mut b =
            reqwest::Client::builder().connect_timeout(cfg.request_timeout).user_agent(concat!("chainprobe/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| K8sError::InvalidCa { reason: e.to_string() })?;
            if certs.is_empty() {
                return Err(K8sError::InvalidCa { reason: "no PEM certificate in it".into() });
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|source| K8sError::Client { source })?;
        Ok(Watcher { cfg, client, cache })
    }

    pub fn cache(&self) -> &PodCache {
        &self.cache
    }

    /// Runs until the task is dropped/aborted: list, watch, and on any failure back off and
    /// start again (re-watch when the version is still good, relist otherwise).
    pub async fn run(self) {
        let mut backoff = self.cfg.min_backoff;
        let mut need_list = true;
        loop {
            if need_list {
                match self.list().await {
                    Ok(n) => {
                        info!(pods = n, node = %self.cfg.node_name, "kubernetes: listed the pods of this node");
                        need_list = false;
                        backoff = self.cfg.min_backoff;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "kubernetes: pod list failed");
                        tokio::time::sleep(jitter(backoff)).await;
                        backoff = (backoff * 2).min(self.cfg.max_backoff);
                        continue;
                    }
                }
            }
            match self.watch().await {
                Ok(WatchEnd::Closed) => {
                    debug!("kubernetes: watch closed by the server; re-watching");
                    backoff = self.cfg.min_backoff;
                }
                Ok(WatchEnd::Expired) => {
                    info!("kubernetes: resourceVersion expired (410 Gone); relisting");
                    need_list = true;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "kubernetes: pod watch failed");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                }
            }
        }
    }

    fn request(&self, query: &[(&str, String)]) -> Result<reqwest::RequestBuilder, K8sError> {
        let url = format!("{}/api/v1/pods", self.cfg.base_url);
        let mut q: Vec<(&str, String)> = vec![("fieldSelector", format!("spec.nodeName={}", self.cfg.node_name))];
        q.extend(query.iter().cloned());
        let mut rb = self.client.get(url).query(&q).header("Accept", "application/json");
        if let Some(t) = self.cfg.bearer()? {
            rb = rb.bearer_auth(t);
        }
        Ok(rb)
    }

    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, K8sError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let url = resp.url().path().to_string();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Status>(&body).map(|s| s.message).ok().filter(|m| !m.is_empty()).unwrap_or(body);
        Err(K8sError::Status { url, code: status.as_u16(), message })
    }

    /// Lists all pages; replaces the cache. Returns the number of pods.
    async fn list(&self) -> Result<usize, K8sError> {
        let mut pods = Vec::new();
        let mut cont = String::new();
        let rv = loop {
            let mut q = vec![("limit", self.cfg.page_size.to_string())];
            if !cont.is_empty() {
                q.push(("continue", cont.clone()));
            }
            let resp = self
                .request(&q)?
                .timeout(self.cfg.request_timeout)
                .send()
                .await
                .map_err(|source| K8sError::Http { what: "list pods", source })?;
            let resp = self.check(resp).await?;
            let bytes = resp.bytes().await.map_err(|source| K8sError::Http { what: "read the pod list", source })?;
            let page: PodList = serde_json::from_slice(&bytes).map_err(|source| K8sError::Decode { what: "pod list", source })?;
            pods.extend(page.items.into_iter().map(PodInfo::from));
            if page.metadata.continue_.is_empty() {
                break page.metadata.resource_version;
            }
            cont = page.metadata.continue_;
        };
        let n = pods.len();
        self.cache.replace_all(pods, rv);
        Ok(n)
    }

    async fn watch(&self) -> Result<WatchEnd, K8sError> {
        let rv = self.cache.resource_version();
        let q = vec![
            ("watch", "1".to_string()),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true".to_string()),
            ("timeoutSeconds", self.cfg.watch_timeout.as_secs().to_string()),
        ];
        let resp = self
            .request(&q)?
            // The server ends the watch after timeoutSeconds; this is a guard against a hung connection.
            .timeout(self.cfg.watch_timeout + Duration::from_secs(30))
            .send()
            .await
            .map_err(|source| K8sError::Http { what: "watch pods", source })?;
        if resp.status() == reqwest::StatusCode::GONE {
            return Ok(WatchEnd::Expired);
        }
        let resp = self.check(resp).await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| K8sError::Http { what: "read the pod watch stream", source })?;
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Some(end) = self.handle_line(&line)? {
                    return Ok(end);
                }
            }
        }
        if !buf.is_empty() {
            let line = std::mem::take(&mut buf);
            if let Some(end) = self.handle_line(&line)? {
                return Ok(end);
            }
        }
        Ok(WatchEnd::Closed)
    }

    fn handle_line(&self, line: &[u8]) -> Result<Option<WatchEnd>, K8sError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let ev: WatchEvent = serde_json::from_slice(line).map_err(|source| K8sError::Decode { what: "watch event", source })?;
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" | "DELETED" => {
                let pod: Pod =
                    serde_json::from_value(ev.object).map_err(|source| K8sError::Decode { what: "pod in a watch event", source })?;
                let rv = pod.metadata.resource_version.clone();
                let info = PodInfo::from(pod);
                debug!(event = %ev.kind, namespace = %info.namespace, pod = %info.name, "kubernetes: pod event");
                let mut g = self.cache.write();
                if ev.kind == "DELETED" {
                    g.remove(&info.uid);
                } else {
                    g.insert(info);
                }
                if !rv.is_empty() {
                    g.resource_version = rv;
                }
            }
            "BOOKMARK" => {
                let rv = ev.object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).unwrap_or_default();
                if !rv.is_empty() {
                    self.cache.write().resource_version = rv.to_string();
                }
            }
            "ERROR" => {
                let st: Status = serde_json::from_value(ev.object).unwrap_or_default();
                if st.code == 410 || st.reason == "Expired" || st.reason == "Gone" {
                    return Ok(Some(WatchEnd::Expired));
                }
                return Err(K8sError::Status { url: "/api/v1/pods (watch)".into(), code: st.code, message: st.message });
            }
            other => debug!(event = other, "kubernetes: ignoring unknown watch event type"),
        }
        Ok(None)
    }
}

/// ±25 % so that the DaemonSet's pods do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    let f = 0.75 + (n % 1000) as f64 / 2000.0;
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_info_from_api_json() {
        let j = serde_json::json!({
            "metadata": {"name": "web-7d4b9c-x2x", "namespace": "shop", "uid": "u1", "resourceVersion": "5",
                "labels": {"pod-template-hash": "7d4b9c"},
                "annotations": {"chainprobe.io/pprof-port": "6060"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9c", "controller": true, "apiVersion": "apps/v1", "uid": "r"}]},
            "spec": {"nodeName": "n1"},
            "status": {"qosClass": "Burstable",
                "containerStatuses": [{"name": "app", "containerID": "containerd://ABCDEF"}, {"name": "waiting", "containerID": ""}],
                "initContainerStatuses": [{"name": "init", "containerID": "cri-o://1234"}]}
        });
        let p: Pod = serde_json::from_value(j).unwrap();
        let i = PodInfo::from(p);
        assert_eq!(i.owner_kind.as_deref(), Some("Deployment"));
        assert_eq!(i.owner_name.as_deref(), Some("web"));
        assert_eq!(i.qos, Some(QosClass::Burstable));
        assert_eq!(i.containers, vec![("app".to_string(), "abcdef".to_string()), ("init".to_string(), "1234".to_string())]);
        assert_eq!(i.pprof_port, Some(6060));
    }

    #[test]
    fn statefulset_owner_kept() {
        let j = serde_json::json!({"metadata": {"name": "db-0", "namespace": "d", "uid": "u",
            "ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": true}]}});
        let i = PodInfo::from(serde_json::from_value::<Pod>(j).unwrap());
        assert_eq!((i.owner_kind.as_deref(), i.owner_name.as_deref()), (Some("StatefulSet"), Some("db")));
        assert_eq!(i.qos, None);
        assert_eq!(i.pprof_port, None);
    }

    #[test]
    fn in_cluster_needs_host_token_and_node() {
        let dir = std::env::temp_dir().join(format!("k8s-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(ApiConfig::in_cluster_from(None, None, &dir, "n"), Err(K8sError::NotInCluster { .. })));
        assert!(matches!(ApiConfig::in_cluster_from(Some("10.0.0.1"), None, &dir, "n"), Err(K8sError::NotInCluster { .. })));
        std::fs::write(dir.join("token"), "tok\n").unwrap();
        assert!(matches!(ApiConfig::in_cluster_from(Some("10.0.0.1"), None, &dir, "n"), Err(K8sError::ReadFile { .. })));
        std::fs::write(dir.join("ca.crt"), "").unwrap();
        assert!(matches!(ApiConfig::in_cluster_from(Some("10.0.0.1"), None, &dir, ""), Err(K8sError::NoNodeName)));
        let c = ApiConfig::in_cluster_from(Some("fd00::1"), Some("6443"), &dir, "n").unwrap();
        assert_eq!(c.base_url, "https://[fd00::1]:6443");
        assert_eq!(c.bearer().unwrap().as_deref(), Some("tok"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
