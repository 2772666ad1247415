//! A client of the on-call API, for `chainprobe snapshot`: request a snapshot, wait for it, and
//! download its files.
use std::{path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach chainprobe at {url}: {source} (is the daemon running? pass --server)")]
    Connect { url: String, source: reqwest::Error },
    #[error("{url}: {error}")]
    Api { url: String, error: super::ApiError },
    #[error("{url}: unexpected answer: {0}", url = .1)]
    Decode(String, String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("snapshot {id} did not finish within {secs} s (still {status}); check later with GET /api/v1/snapshots/{id}")]
    Timeout { id: String, secs: u64, status: String },
    #[error("snapshot {id} failed: {reason}")]
    Failed { id: String, reason: String },
}

/// Which process to snapshot.
#[derive(Debug, Clone)]
pub enum Target {
    Pid(u32),
    Pod { namespace: String, pod: String, container: Option<String> },
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|source| ClientError::Connect { url: server.to_string(), source })?;
        Ok(Client { base: server.trim_end_matches('/').to_string(), token, http })
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|source| ClientError::Connect { url: url.to_string(), source })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(ClientError::Api { url: url.to_string(), error: super::ApiError::from_answer(status, &body) })
    }

    async fn json(&self, req: reqwest::RequestBuilder, url: &str) -> Result<serde_json::Value, ClientError> {
        let text = self.send(req, url).await?.text().await.map_err(|e| ClientError::Decode(e.to_string(), url.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode(e.to_string(), url.to_string()))
    }

    /// `POST /api/v1/snapshots`: the new snapshot's id.
    pub async fn request(&self, target: &Target, kinds: &[String]) -> Result<String, ClientError> {
        let url = format!("{}/api/v1/snapshots", self.base);
        let mut body = match target {
            Target::Pid(pid) => serde_json::json!({ "pid": pid }),
            Target::Pod { namespace, pod, container } => serde_json::json!({ "namespace": namespace, "pod": pod, "container": container }),
        };
        if !kinds.is_empty() {
            body["kinds"] = serde_json::json!(kinds);
        }
        let v = self.json(self.http.post(&url).header("content-type", "application/json").body(body.to_string()), &url).await?;
        v["id"].as_str().map(str::to_string).ok_or_else(|| ClientError::Decode("no id in the answer".into(), url))
    }

    /// `GET /api/v1/snapshots/{id}`.
    pub async fn get(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/api/v1/snapshots/{id}", self.base);
        self.json(self.http.get(&url), &url).await
    }

    /// `GET /api/v1/snapshots`.
    pub async fn list(&self) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/api/v1/snapshots", self.base);
        self.json(self.http.get(&url), &url).await
    }

    /// Polls until the snapshot is done (its metadata) or failed (an error).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<serde_json::Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.get(id).await?;
            match m["status"].as_str().unwrap_or("") {
                "done" => return Ok(m),
                "failed" => return Err(ClientError::Failed { id: id.into(), reason: m["reason"].as_str().unwrap_or("unknown").into() }),
                s if tokio::time::Instant::now() >= deadline => return Err(ClientError::Timeout { id: id.into(), secs: timeout.as_secs(), status: s.into() }),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Downloads every file of a finished snapshot into `dir`; returns the paths written.
    pub async fn download(&self, meta: &serde_json::Value, dir: &std::path::Path) -> Result<Vec<PathBuf>, ClientError> {
        let id = meta["id"].as_str().unwrap_or_default();
        let mut out = Vec::new();
        let mut kinds: Vec<(String, String)> = meta["files"]
            .as_object()
            .map(|f| f.iter().map(|(k, v)| (k.clone(), v["file"].as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        kinds.push(("summary".into(), String::new()));
        for (kind, file) in kinds {
            let url = format!("{}/api/v1/snapshots/{id}/{kind}", self.base);
            let bytes = self.send(self.http.get(&url), &url).await?.bytes().await.map_err(|e| ClientError::Decode(e.to_string(), url.clone()))?;
            // Only the base name the server gave: never a path.
            let name = std::path::Path::new(&file).file_name().map(|n| n.to_string_lossy().to_string()).filter(|n| !n.is_empty()).unwrap_or_else(|| format!("{id}.{kind}.json"));
            let path = dir.join(name);
            std::fs::write(&path, &bytes).map_err(|source| ClientError::Write { path: path.clone(), source })?;
            out.push(path);
        }
        Ok(out)
    }
}
