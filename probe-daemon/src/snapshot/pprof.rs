//! The target's own net/http/pprof endpoints: found without configuration among the TCP ports the
//! process listens on, and fetched from inside the process's network namespace (so a pprof server
//! bound to 127.0.0.1 in a pod is reachable). Every fetch has a deadline and a size limit.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("cannot enter the network namespace of process {pid}: {source} (chainprobe needs CAP_SYS_ADMIN for setns)")]
    Netns { pid: u32, source: std::io::Error },
    #[error("{addr}{path}: {source}")]
    Io { addr: SocketAddr, path: String, source: std::io::Error },
    #[error("{addr}{path}: timed out after {secs:.1} s")]
    Timeout { addr: SocketAddr, path: String, secs: f64 },
    #[error("{addr}{path}: larger than the {limit}-byte limit ([snapshot] max_profile_bytes)")]
    TooLarge { addr: SocketAddr, path: String, limit: usize },
    #[error("{addr}{path}: HTTP {status}")]
    Status { addr: SocketAddr, path: String, status: u16 },
    #[error("{addr}{path}: malformed HTTP response ({what})")]
    Malformed { addr: SocketAddr, path: String, what: String },
}

/// Sockets the process listens on (TCP, IPv4 and IPv6), from its own view of /proc/net.
pub fn listening_addrs(pid: u32) -> Result<Vec<SocketAddr>, FetchError> {
    let mut inodes = std::collections::HashSet::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|_| FetchError::Gone(pid))?;
    for e in fds.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            if let Some(i) = t.to_str().and_then(|s| s.strip_prefix("socket:[")).and_then(|s| s.strip_suffix(']')) {
                inodes.insert(i.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            if let Some(a) = parse_proc_addr(f[1], v6) {
                out.push(a);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// "0100007F:1F90" (IPv4) or 32 hex digits + ":port" (IPv6), as /proc/net/tcp{,6} print them.
pub fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let ip = if v6 {
        if a.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for i in 0..4 {
            let w = u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).ok()?;
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(a, 16).ok()?.to_le_bytes()))
    };
    Some(SocketAddr::new(ip, port))
}

/// Where to connect to reach a listener: the wildcard addresses mean loopback.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(v) if v.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// Runs `f` on a thread inside the network namespace of `pid` (or directly when it is ours).
pub fn in_netns<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> Result<T, FetchError> {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).map_err(|_| FetchError::Gone(pid))?;
    let ours = std::fs::metadata("/proc/self/ns/net").ok();
    use std::os::unix::fs::MetadataExt;
    if ours.is_some_and(|o| o.ino() == theirs.ino() && o.dev() == theirs.dev()) {
        return Ok(f());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|_| FetchError::Gone(pid))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // Only this thread moves; it ends when the fetch is done.
            // SAFETY: setns on a valid namespace fd affects the calling thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(FetchError::Netns { pid, source: std::io::Error::last_os_error() });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(FetchError::Netns { pid, source: std::io::Error::other("fetch thread panicked") }))
    })
}

/// `GET path` over HTTP/1.1 with an overall deadline and a body size limit. Returns the status and
/// the body (chunked and Content-Length framing both handled).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration, limit: usize) -> Result<(u16, Vec<u8>), FetchError> {
    let deadline = Instant::now() + timeout;
    let io = |source| FetchError::Io { addr, path: path.to_string(), source };
    let timed_out = || FetchError::Timeout { addr, path: path.to_string(), secs: timeout.as_secs_f64() };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| if e.kind() == std::io::ErrorKind::TimedOut { timed_out() } else { io(e) })?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let host = match addr.ip() {
        IpAddr::V6(v) => format!("[{v}]:{}", addr.port()),
        IpAddr::V4(v) => format!("{v}:{}", addr.port()),
    };
    // One write: the request leaves in one segment.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chainprobe\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(io)?;
    // Headers are small; the body may be up to `limit`.
    let max = limit.saturating_add(64 * 1024);
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        s.set_read_timeout(Some(left)).map_err(io)?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > max {
                    return Err(FetchError::TooLarge { addr, path: path.to_string(), limit });
                }
                if complete(&raw) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Err(timed_out()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
    let bad = |what: &str| FetchError::Malformed { addr, path: path.to_string(), what: what.to_string() };
    let (status, body) = parse_response(&raw).map_err(|w| bad(&w))?;
    if body.len() > limit {
        return Err(FetchError::TooLarge { addr, path: path.to_string(), limit });
    }
    Ok((status, body))
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Whether the whole response is in `raw` (framing known and satisfied).
fn complete(raw: &[u8]) -> bool {
    let Some(he) = header_end(raw) else { return false };
    let head = String::from_utf8_lossy(&raw[..he]).to_ascii_lowercase();
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()) {
        return raw.len() >= he + len;
    }
    if head.contains("transfer-encoding: chunked") {
        return raw[he..].ends_with(b"0\r\n\r\n");
    }
    false
}

/// Status and body of a complete HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let he = header_end(raw).ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..he]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut len = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = Some(v.trim().parse::<usize>().map_err(|_| "bad Content-Length")?),
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let rest = &raw[he..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let nl = rest[i..].windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
            let size_s = std::str::from_utf8(&rest[i..i + nl]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk size")?;
            i += nl + 2;
            if size == 0 {
                break;
            }
            let end = i.checked_add(size).filter(|e| *e + 2 <= rest.len()).ok_or("truncated chunk")?;
            out.extend_from_slice(&rest[i..end]);
            i = end + 2;
        }
        out
    } else if let Some(n) = len {
        rest.get(..n).ok_or("truncated body")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Finds the pprof endpoint of `pid`: the listening ports (`preferred` first), each asked for
/// `/debug/pprof/` from inside the process's network namespace.
pub fn discover(pid: u32, preferred: &[u16], timeout: Duration) -> Result<Option<SocketAddr>, FetchError> {
    let mut addrs: Vec<SocketAddr> = listening_addrs(pid)?.into_iter().map(connect_addr).collect();
    addrs.sort_by_key(|a| (!preferred.contains(&a.port()), a.port()));
    addrs.dedup();
    if addrs.is_empty() {
        return Ok(None);
    }
    in_netns(pid, move || {
        addrs.into_iter().find(|a| {
            matches!(http_get(*a, "/debug/pprof/", timeout, 1 << 20), Ok((200, body)) if body.windows(9).any(|w| w == b"goroutine"))
        })
    })
}

/// Fetches a gzipped profile (`/debug/pprof/heap`, `/debug/pprof/goroutine`) from the endpoint.
pub fn fetch_profile(pid: u32, addr: SocketAddr, path: &str, timeout: Duration, limit: usize) -> Result<Vec<u8>, FetchError> {
    let path_owned = path.to_string();
    let (status, body) = in_netns(pid, move || http_get(addr, &path_owned, timeout, limit))??;
    if status != 200 {
        return Err(FetchError::Status { addr, path: path.to_string(), status });
    }
    if body.len() < 2 || body[..2] != [0x1f, 0x8b] {
        return Err(FetchError::Malformed { addr, path: path.to_string(), what: "not a gzipped profile".into() });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(parse_proc_addr("0100007F:1F90", false), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0050", true), Some("[::1]:80".parse().unwrap()));
        assert_eq!(connect_addr("0.0.0.0:9".parse().unwrap()), "127.0.0.1:9".parse().unwrap());
        assert_eq!(connect_addr("[::]:9".parse().unwrap()), "[::1]:9".parse().unwrap());
        assert_eq!(parse_proc_addr("zz:1", false), None);
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert!(complete(r));
        assert_eq!(parse_response(r).unwrap(), (200, b"abcde".to_vec()));
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(parse_response(r).unwrap(), (404, b"no".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn fetch_from_a_local_server_with_limits() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            for body in [&b"hello"[..], &[b'x'; 5000][..]] {
                let (mut c, _) = l.accept().unwrap();
                // Read the whole request: closing with unread bytes would send a reset, and the
                // client would see that instead of the response.
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = c.write_all(body);
            }
            // A server that never answers.
            let (_c, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        assert_eq!(http_get(addr, "/", Duration::from_secs(2), 100).unwrap(), (200, b"hello".to_vec()));
        assert!(matches!(http_get(addr, "/", Duration::from_secs(2), 100), Err(FetchError::TooLarge { .. })));
        assert!(matches!(http_get(addr, "/", Duration::from_millis(200), 100), Err(FetchError::Timeout { .. })));
        t.join().unwrap();
    }
}
