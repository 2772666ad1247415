//! chainprobe: an eBPF daemon that tells whether the Go services on a node are healthy and
//! captures evidence when they are not.
//!
//! Data flows one way (docs/ARCHITECTURE.md draws it; `tests/architecture.rs` enforces it):
//! kernel programs → `attach` (load, attach, kernel maps) → `decode` (records → events) →
//! `aggregate` (per-process state) → `health` (signals, score, rules) → `snapshot` (profiles
//! on disk), `metrics` (exposition) and the HTTP `api`. The trackers `goruntime`, `tls` (with `http2`, Go's
//! HTTP/2 control frames) and [`k8s`] find and probe Go processes, libssl files and pods (Go binaries are read by the
//! `goinspect` crate). Two threads own all mutable state: `discovery` (the trackers) and
//! `collector` (ring buffer, kernel maps, aggregate, health); each publishes an immutable view
//! and takes typed commands. `kernel` answers what the running kernel provides; `config` holds
//! the settings; `daemon` wires everything for `chainprobe run`.
// The OpenAPI document (api::openapi) is one large json! literal.
#![recursion_limit = "256"]

// Public: what the binary and the integration tests use (api::client, config, daemon::run,
// kernel checks, attach::fexit_check, k8s pod resolution). Everything else is the daemon's own.
mod aggregate;
pub mod api;
pub mod attach;
mod collector;
pub mod config;
pub mod daemon;
mod decode;
mod discovery;
mod evidence;
mod goruntime;
mod health;
mod hist;
mod http2;
pub mod k8s;
pub mod kernel;
mod metrics;
mod procfs;
mod snapshot;
mod sync;
mod tls;
