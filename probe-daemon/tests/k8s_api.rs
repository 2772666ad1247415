//! The node-scoped pod watch against a real HTTP server (axum on 127.0.0.1) that plays the
//! Kubernetes API: paged list, watch streams with ADDED/MODIFIED/DELETED/BOOKMARK events, a watch
//! `ERROR` event with 410, an HTTP 410, server errors, a malformed event, token rotation.
#![allow(dead_code)]
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use chainprobe::k8s::{ApiConfig, PodCache, PodResolver, Watcher};
use serde_json::{json, Value};
use tokio::sync::Notify;

pub const NODE: &str = "node-a";

/// A pod as the API returns it.
pub fn pod(ns: &str, name: &str, uid: &str, rv: u64, containers: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": rv.to_string(),
            "labels": {"pod-template-hash": "5f6d7c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-5f6d7c"), "uid": "rs", "controller": true}]},
        "spec": {"nodeName": NODE, "containers": containers.iter().map(|(n, _)| json!({"name": n, "image": "x"})).collect::<Vec<_>>()},
        "status": {"phase": "Running", "qosClass": "Burstable",
            "containerStatuses": containers.iter().map(|(n, id)| json!({"name": n, "containerID": format!("containerd://{id}"), "ready": true})).collect::<Vec<_>>()}
    })
}

pub fn list(items: Vec<Value>, rv: u64, cont: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv.to_string(), "continue": cont}, "items": items})
}

pub fn event(kind: &str, object: Value) -> String {
    json!({"type": kind, "object": object}).to_string()
}

pub fn bookmark(rv: u64) -> String {
    event("BOOKMARK", json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}))
}

/// One scripted answer.
pub enum Reply {
    /// Status code and JSON body.
    Json(u16, Value),
    /// A 200 watch stream: these lines, then the server closes it.
    Stream(Vec<String>),
    /// A 200 watch stream that never ends.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub query: HashMap<String, String>,
    pub auth: String,
}

#[derive(Default)]
pub struct Script {
    pub lists: VecDeque<(Option<Arc<Notify>>, Reply)>,
    pub watches: VecDeque<(Option<Arc<Notify>>, Reply)>,
    pub seen_lists: Vec<Seen>,
    pub seen_watches: Vec<Seen>,
}

pub type Shared = Arc<Mutex<Script>>;

async fn pods(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let seen = Seen { query: q.clone(), auth: headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string() };
    let is_watch = q.get("watch").is_some_and(|w| w == "1" || w == "true");
    let next = {
        let mut g = s.lock().unwrap();
        if is_watch {
            g.seen_watches.push(seen);
            g.watches.pop_front()
        } else {
            g.seen_lists.push(seen);
            g.lists.pop_front()
        }
    };
    let (gate, reply) = next.unwrap_or((
        None,
        if is_watch { Reply::Hang } else { Reply::Json(500, json!({"kind": "Status", "code": 500, "message": "script exhausted"})) },
    ));
    if let Some(g) = gate {
        g.notified().await;
    }
    match reply {
        Reply::Json(code, v) => {
            (StatusCode::from_u16(code).unwrap(), [("content-type", "application/json")], v.to_string()).into_response()
        }
        Reply::Stream(lines) => {
            // Split each event over two chunks to exercise line reassembly.
            let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> = Vec::new();
            for l in lines {
                let b = format!("{l}\n").into_bytes();
                let mid = b.len() / 2;
                chunks.push(Ok(b[..mid].to_vec()));
                chunks.push(Ok(b[mid..].to_vec()));
            }
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap()
        }
        Reply::Hang => {
            let s = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
            Response::builder().header("content-type", "application/json").body(Body::from_stream(s)).unwrap()
        }
    }
}

/// Starts the fake API server; returns its base URL.
pub async fn serve(script: Shared) -> String {
    let app = Router::new().route("/api/v1/pods", get(pods)).with_state(script);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}")
}

pub fn config(base: &str, token_file: &std::path::Path) -> ApiConfig {
    let mut c = ApiConfig::new(base, NODE);
    c.token_file = Some(token_file.to_path_buf());
    c.page_size = 2;
    c.min_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(200);
    c.watch_timeout = Duration::from_secs(60);
    c
}

pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(cache: &PodCache) -> Vec<String> {
    cache.pods().iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect()
}

fn tmp_token(tag: &str, value: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("chainprobe-k8s-token-{tag}-{}", std::process::id()));
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p
}

const C1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const C3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const C4: &str = "4444444444444444444444444444444444444444444444444444444444444444";

#[tokio::test]
async fn list_watch_bookmark_410_relist_and_node_scoping() {
    let g1 = Arc::new(Notify::new());
    let g2 = Arc::new(Notify::new());
    let g3 = Arc::new(Notify::new());
    let a = pod("shop", "web", "uid-a", 90, &[("app", C1)]);
    let b = pod("shop", "db", "uid-b", 91, &[("pg", C2)]);
    let c = pod("ops", "agent", "uid-c", 101, &[("agent", C3)]);
    let a2 = pod("shop", "web", "uid-a", 102, &[("app", C1), ("sidecar", C4)]);
    let d = pod("ops", "cron", "uid-d", 190, &[]);
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    {
        let mut s = script.lock().unwrap();
        // Paged first list (page_size 2 → limit=2; the server pages at 1 here).
        s.lists.push_back((None, Reply::Json(200, list(vec![a.clone()], 0, "c1"))));
        s.lists.push_back((None, Reply::Json(200, list(vec![b.clone()], 100, ""))));
        s.watches.push_back((
            None,
            Reply::Stream(vec![
                event("ADDED", c.clone()),
                event("MODIFIED", a2.clone()),
                String::new(),
                event("DELETED", b.clone()),
                bookmark(150),
            ]),
        ));
        // Re-watch from the bookmark, which the server says is too old.
        s.watches.push_back((Some(g1.clone()), Reply::Stream(vec![event("ERROR", json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "too old resource version: 150 (180)", "reason": "Expired", "code": 410}))])));
        s.lists.push_back((None, Reply::Json(200, list(vec![a2.clone(), d.clone()], 200, ""))));
        // The next watch is refused with HTTP 410.
        s.watches
            .push_back((Some(g2.clone()), Reply::Json(410, json!({"kind": "Status", "code": 410, "reason": "Gone", "message": "gone"}))));
        s.lists.push_back((Some(g3.clone()), Reply::Json(200, list(vec![d.clone()], 300, ""))));
    }
    let base = serve(script.clone()).await;
    let token = tmp_token("a", "tok-1");
    let cache = PodCache::new();
    let watcher = Watcher::new(config(&base, &token), cache.clone()).unwrap();
    let task = tokio::spawn(watcher.run());

    // After list + first watch stream: A with its new sidecar, C added, B deleted, at the bookmark.
    wait_for("first watch applied", Duration::from_secs(10), || cache.resource_version() == "150").await;
    assert!(cache.is_synced());
    assert_eq!(names(&cache), vec!["ops/agent", "shop/web"]);
    let (p, cname) = cache.container(C4).expect("sidecar known");
    assert_eq!((p.name.as_str(), cname.as_str()), ("web", "sidecar"));
    assert_eq!(p.owner_kind.as_deref(), Some("Deployment"));
    assert_eq!(p.owner_name.as_deref(), Some("web"));
    assert!(cache.container(C2).is_none(), "deleted pod's container forgotten");

    // Token rotation: the file is re-read for every request.
    std::fs::write(&token, "tok-2\n").unwrap();
    g1.notify_one();
    wait_for("relist after the 410 event", Duration::from_secs(10), || cache.resource_version() == "200").await;
    assert_eq!(names(&cache), vec!["ops/cron", "shop/web"]);
    assert!(cache.container(C3).is_none(), "relist replaced the cache");

    g2.notify_one();
    g3.notify_one();
    wait_for("relist after HTTP 410", Duration::from_secs(10), || cache.resource_version() == "300").await;
    assert_eq!(names(&cache), vec!["ops/cron"]);
    // The watcher is now parked on the hanging 4th watch.
    wait_for("4th watch", Duration::from_secs(10), || script.lock().unwrap().seen_watches.len() == 4).await;
    task.abort();

    let s = script.lock().unwrap();
    for seen in s.seen_lists.iter().chain(&s.seen_watches) {
        assert_eq!(seen.query.get("fieldSelector").map(String::as_str), Some("spec.nodeName=node-a"), "{seen:?}");
    }
    assert_eq!(s.seen_lists.len(), 4);
    assert_eq!(s.seen_lists[0].query.get("limit").map(String::as_str), Some("2"));
    assert_eq!(s.seen_lists[0].query.get("continue"), None);
    assert_eq!(s.seen_lists[1].query.get("continue").map(String::as_str), Some("c1"));
    assert_eq!(s.seen_lists[0].auth, "Bearer tok-1");
    assert_eq!(s.seen_lists[3].auth, "Bearer tok-2");
    let rvs: Vec<&str> = s.seen_watches.iter().map(|w| w.query.get("resourceVersion").map(String::as_str).unwrap_or("")).collect();
    assert_eq!(rvs, vec!["100", "150", "200", "300"]);
    for w in &s.seen_watches {
        assert_eq!(w.query.get("allowWatchBookmarks").map(String::as_str), Some("true"));
        assert_eq!(w.query.get("timeoutSeconds").map(String::as_str), Some("60"));
    }
    let _ = std::fs::remove_file(&token);
}

#[tokio::test]
async fn errors_back_off_and_retry_without_losing_the_version() {
    let c = pod("ops", "agent", "uid-c", 12, &[("agent", C3)]);
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    {
        let mut s = script.lock().unwrap();
        s.lists.push_back((None, Reply::Json(403, json!({"kind": "Status", "code": 403, "reason": "Forbidden", "message": "pods is forbidden: User \"system:serviceaccount:chainprobe:chainprobe\" cannot list resource \"pods\""}))));
        s.lists.push_back((None, Reply::Json(500, json!({"kind": "Status", "code": 500, "message": "etcd timeout"}))));
        // A list without items or resourceVersion (e.g. through a proxy that strips them) is an
        // empty list; the watch then starts from "" (the server's current state).
        s.lists.push_back((None, Reply::Json(200, json!({"kind": "PodList"}))));
        // A watch that dies on a malformed event, one answered 500, then a good one.
        s.watches.push_back((None, Reply::Stream(vec!["{not json".to_string()])));
        s.watches.push_back((None, Reply::Json(500, json!({"kind": "Status", "code": 500, "message": "internal"}))));
        s.watches.push_back((None, Reply::Stream(vec![event("ADDED", c.clone())])));
    }
    let base = serve(script.clone()).await;
    let token = tmp_token("b", "tok");
    let cache = PodCache::new();
    let task = tokio::spawn(Watcher::new(config(&base, &token), cache.clone()).unwrap().run());
    wait_for("pod added after the retries", Duration::from_secs(10), || cache.container(C3).is_some()).await;
    task.abort();
    let s = script.lock().unwrap();
    assert_eq!(s.seen_lists.len(), 3, "403 and 500 retried, then listed");
    let rvs: Vec<&str> = s.seen_watches.iter().take(3).map(|w| w.query.get("resourceVersion").map(String::as_str).unwrap_or("-")).collect();
    assert_eq!(rvs, vec!["", "", ""], "errors re-watch from the same version, no relist");
    assert!(cache.is_synced());
    let _ = std::fs::remove_file(&token);
}

#[tokio::test]
async fn resolver_names_come_from_the_watch() {
    // A cgroup line for a container the fake API knows → names; an unknown one → ids only.
    let uid = "2c6e8a4c-6a7e-4b8e-9e5c-3f1a2b3c4d5e";
    let p = pod("shop", "web-5f6d7c-abcde", uid, 5, &[("app", C1)]);
    let script: Shared = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().lists.push_back((None, Reply::Json(200, list(vec![p], 5, ""))));
    let base = serve(script.clone()).await;
    let token = tmp_token("c", "tok");
    let cache = PodCache::new();
    let task = tokio::spawn(Watcher::new(config(&base, &token), cache.clone()).unwrap().run());
    wait_for("synced", Duration::from_secs(10), || cache.is_synced()).await;
    let r = PodResolver::with_cache("/proc", cache.clone());
    let uid_ = uid.replace('-', "_");
    let m = r
        .resolve_cgroup(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{C1}.scope\n"
        ))
        .expect("meta");
    assert_eq!(m.namespace.as_deref(), Some("shop"));
    assert_eq!(m.pod.as_deref(), Some("web-5f6d7c-abcde"));
    assert_eq!(m.container.as_deref(), Some("app"));
    assert_eq!(m.owner_kind.as_deref(), Some("Deployment"));
    // pod() names the ReplicaSet "<pod name>-<hash>", so the Deployment has the pod's name here.
    assert_eq!(m.owner_name.as_deref(), Some("web-5f6d7c-abcde"));
    assert_eq!(m.labels().pod, "web-5f6d7c-abcde");
    // Same pod, container not (yet) in the status: pod names, no container name.
    let m = r.resolve_cgroup(&format!("0::/kubepods/burstable/pod{uid}/{C2}\n")).expect("meta");
    assert_eq!(m.pod.as_deref(), Some("web-5f6d7c-abcde"));
    assert_eq!(m.container, None);
    assert_eq!(m.labels().container, &C2[..12]);
    // Unknown pod: ids only.
    let m = r.resolve_cgroup(&format!("0::/kubepods/besteffort/pod0123456789abcdef0123456789abcdef/{C3}\n")).expect("meta");
    assert!(!m.has_names());
    task.abort();
    let _ = std::fs::remove_file(&token);
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_pki(dir: &std::path::Path, tag: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = dir.join(format!("{tag}-ca.key"));
    let ca = dir.join(format!("{tag}-ca.crt"));
    let key = dir.join(format!("{tag}-server.key"));
    let csr = dir.join(format!("{tag}-server.csr"));
    let crt = dir.join(format!("{tag}-server.crt"));
    let ext = dir.join(format!("{tag}-ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("openssl missing ({e}): apt-get install openssl"));
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
        "-days",
        "2",
        "-subj",
        &format!("/CN=test-ca-{tag}"),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
        "-subj",
        "/CN=kube-apiserver",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-out",
        &p(&crt),
        "-days",
        "2",
        "-extfile",
        &p(&ext),
    ]);
    (ca, crt, key)
}

/// A minimal HTTPS API server: answers list requests with `list_body`, holds watches open;
/// records the request lines and Authorization headers.
async fn serve_tls(crt: &std::path::Path, key: &std::path::Path, list_body: String, seen: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            let body = list_body.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let line = head.lines().next().unwrap_or("").to_string();
                let auth = head.lines().find(|l| l.to_ascii_lowercase().starts_with("authorization:")).unwrap_or("").to_string();
                seen.lock().unwrap().push(format!("{line} | {auth}"));
                if line.contains("watch=1") {
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").await;
                    tokio::time::sleep(Duration::from_secs(120)).await;
                } else {
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn in_cluster_https_trusts_the_service_account_ca_only() {
    let dir = std::env::temp_dir().join(format!("chainprobe-k8s-tls-{}", std::process::id()));
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let (ca, crt, key) = make_pki(&dir, "good");
    let (other_ca, _, _) = make_pki(&dir, "other");
    let body = list(vec![pod("kube-system", "coredns-1", "uid-dns", 3, &[("coredns", C1)])], 3, "").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = serve_tls(&crt, &key, body, seen.clone()).await;

    // The service-account layout: token + ca.crt; host/port as the env vars give them.
    std::fs::write(sa.join("token"), "sa-token\n").unwrap();
    std::fs::copy(&ca, sa.join("ca.crt")).unwrap();
    let mut cfg = ApiConfig::in_cluster_from(Some("127.0.0.1"), Some(&addr.port().to_string()), &sa, NODE).unwrap();
    assert_eq!(cfg.base_url, format!("https://127.0.0.1:{}", addr.port()));
    cfg.min_backoff = Duration::from_millis(20);
    let cache = PodCache::new();
    let task = tokio::spawn(Watcher::new(cfg, cache.clone()).unwrap().run());
    wait_for("list over HTTPS", Duration::from_secs(10), || cache.is_synced()).await;
    assert_eq!(cache.container(C1).map(|(p, c)| (p.name, c)), Some(("coredns-1".to_string(), "coredns".to_string())));
    // Then the watch, over TLS too.
    wait_for("watch over HTTPS", Duration::from_secs(10), || seen.lock().unwrap().len() == 2).await;
    task.abort();
    {
        let s = seen.lock().unwrap();
        assert!(s[0].starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&limit=500 "), "{s:?}");
        assert!(s[0].to_ascii_lowercase().ends_with("authorization: bearer sa-token"), "{s:?}");
        assert!(s[1].contains("watch=1") && s[1].contains("resourceVersion=3"), "{s:?}");
    }

    // A server whose certificate does not chain to ca.crt is never trusted.
    std::fs::copy(&other_ca, sa.join("ca.crt")).unwrap();
    let mut cfg = ApiConfig::in_cluster_from(Some("127.0.0.1"), Some(&addr.port().to_string()), &sa, NODE).unwrap();
    cfg.min_backoff = Duration::from_millis(20);
    let before = seen.lock().unwrap().len();
    let cache = PodCache::new();
    let task = tokio::spawn(Watcher::new(cfg, cache.clone()).unwrap().run());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!cache.is_synced(), "listed from a server with an untrusted certificate");
    assert_eq!(seen.lock().unwrap().len(), before, "no request got through the TLS handshake");
    task.abort();

    // A ca.crt that is not PEM is a clear error.
    std::fs::write(sa.join("ca.crt"), "not a certificate").unwrap();
    let cfg = ApiConfig::in_cluster_from(Some("127.0.0.1"), Some("1"), &sa, NODE).unwrap();
    match Watcher::new(cfg, PodCache::new()) {
        Err(e) => assert!(e.to_string().contains("CA bundle"), "{e}"),
        Ok(_) => panic!("an invalid CA bundle was accepted"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
