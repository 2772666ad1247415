//! One run: serve a fake Kubernetes API on loopback (a node's 110 pods), list and watch them
//! (hand-written on reqwest, or kube's watcher), write a pprof profile (hand-written or prost),
//! rate-limit 1000 requests (hand-written token bucket or governor); print VmHWM.
use std::{collections::HashMap, net::IpAddr, time::{Duration, Instant}};

use axum::{extract::Query, routing::get, Router};

const PODS: usize = 110;

fn pod(i: usize) -> serde_json::Value {
    serde_json::json!({"metadata": {"name": format!("pod-{i}"), "namespace": "default", "uid": format!("00000000-0000-0000-0000-{i:012}"), "resourceVersion": "1"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "qosClass": "Burstable", "containerStatuses": [{"name": "app", "containerID": format!("containerd://{i:064}"), "ready": true, "restartCount": 0, "image": "x", "imageID": "y"}]}})
}

async fn pods(Query(q): Query<HashMap<String, String>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if q.get("watch").map(|w| w == "true" || w == "1").unwrap_or(false) {
        let ev = serde_json::json!({"type": "ADDED", "object": pod(PODS)}).to_string() + "\n";
        let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(ev)]).chain(futures_util::stream::pending());
        return axum::body::Body::from_stream(stream).into_response();
    }
    let items: Vec<_> = (0..PODS).map(pod).collect();
    axum::Json(serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})).into_response()
}
use futures_util::StreamExt;

#[cfg(not(feature = "kube"))]
async fn watch(base: String) -> usize {
    #[derive(serde::Deserialize)]
    struct List { items: Vec<serde_json::Value>, metadata: serde_json::Value }
    let c = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    let l: List = serde_json::from_slice(&c.get(format!("{base}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1")).send().await.unwrap().bytes().await.unwrap()).unwrap();
    let rv = l.metadata["resourceVersion"].as_str().unwrap_or("").to_string();
    let mut n = l.items.len();
    let mut s = c.get(format!("{base}/api/v1/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true")).send().await.unwrap().bytes_stream();
    let mut buf = Vec::new();
    while let Some(Ok(b)) = s.next().await {
        buf.extend_from_slice(&b);
        if let Some(i) = buf.iter().position(|&c| c == b'\n') {
            let ev: serde_json::Value = serde_json::from_slice(&buf[..i]).unwrap();
            if ev["type"] == "ADDED" { n += 1; }
            break;
        }
    }
    n
}

#[cfg(feature = "kube")]
async fn watch(base: String) -> usize {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher;
    let client = kube::Client::try_from(kube::Config::new(base.parse().unwrap())).unwrap();
    let api: kube::Api<Pod> = kube::Api::all(client);
    let mut s = Box::pin(watcher(api, watcher::Config::default().fields("spec.nodeName=node-1")));
    let mut n = 0;
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            watcher::Event::InitApply(_) => n += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    n
}

#[cfg(not(feature = "prost"))]
fn profile() -> Vec<u8> {
    fn varint(o: &mut Vec<u8>, mut v: u64) { while v >= 0x80 { o.push(v as u8 | 0x80); v >>= 7; } o.push(v as u8); }
    fn field(o: &mut Vec<u8>, f: u32, b: &[u8]) { varint(o, (u64::from(f) << 3) | 2); varint(o, b.len() as u64); o.extend_from_slice(b); }
    let mut out = Vec::new();
    let mut vt = Vec::new(); varint(&mut vt, 1 << 3); varint(&mut vt, 1); varint(&mut vt, 2 << 3); varint(&mut vt, 2);
    field(&mut out, 1, &vt);
    for i in 0..1000u64 {
        let mut s = Vec::new(); let mut locs = Vec::new(); varint(&mut locs, i % 50 + 1); field(&mut s, 1, &locs);
        let mut vals = Vec::new(); varint(&mut vals, 1); field(&mut s, 2, &vals); field(&mut out, 2, &s);
    }
    for s in ["", "goroutine", "count"] { field(&mut out, 6, s.as_bytes()); }
    out
}

#[cfg(feature = "prost")]
fn profile() -> Vec<u8> {
    use prost::Message;
    #[derive(Clone, PartialEq, prost::Message)]
    struct ValueType { #[prost(int64, tag = "1")] ty: i64, #[prost(int64, tag = "2")] unit: i64 }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Sample { #[prost(uint64, repeated, tag = "1")] location_id: Vec<u64>, #[prost(int64, repeated, tag = "2")] value: Vec<i64> }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Profile { #[prost(message, repeated, tag = "1")] sample_type: Vec<ValueType>, #[prost(message, repeated, tag = "2")] sample: Vec<Sample>, #[prost(string, repeated, tag = "6")] string_table: Vec<String> }
    let p = Profile {
        sample_type: vec![ValueType { ty: 1, unit: 2 }],
        sample: (0..1000u64).map(|i| Sample { location_id: vec![i % 50 + 1], value: vec![1] }).collect(),
        string_table: vec!["".into(), "goroutine".into(), "count".into()],
    };
    p.encode_to_vec()
}

#[cfg(not(feature = "governor"))]
fn limit() -> usize {
    let mut b: HashMap<IpAddr, (f64, Instant)> = HashMap::new();
    let (rate, burst) = (10.0, 50.0);
    let ip: IpAddr = [127, 0, 0, 1].into();
    (0..1000).filter(|_| {
        let now = Instant::now();
        let (t, last) = b.entry(ip).or_insert((burst, now));
        *t = (*t + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *t >= 1.0 { *t -= 1.0; true } else { false }
    }).count()
}

#[cfg(feature = "governor")]
fn limit() -> usize {
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    let l = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(10).unwrap()).allow_burst(NonZeroU32::new(50).unwrap()));
    let ip: IpAddr = [127, 0, 0, 1].into();
    (0..1000).filter(|_| l.check_key(&ip).is_ok()).count()
}

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status").unwrap().lines().find(|l| l.starts_with(field)).unwrap_or("").to_string()
}

#[tokio::main]
async fn main() {
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ln.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(ln, Router::new().route("/api/v1/pods", get(pods))).await.unwrap() });
    let t = Instant::now();
    let n = watch(format!("http://{addr}")).await;
    let p = profile();
    let l = limit();
    println!("pods {n} in {:?}; profile {} bytes; {l} of 1000 admitted; {}; {}", t.elapsed(), p.len(), status("VmHWM"), status("VmRSS"));
}
