//! chainprobe: an eBPF daemon that tells whether the Go services on a node are healthy and
//! captures evidence when they are not.
//!
//! Data flows one way: kernel programs → [`attach`] (load, attach, kernel maps) → [`events`]
//! (decode ring buffer, drain per-CPU maps) → [`aggregate`] (per-process state) → [`health`]
//! (signals, score, rules) → [`metrics`], [`snapshot`] (heap and goroutine profiles, stored on
//! disk) and the HTTP [`api`]. [`goinspect`] reads Go binaries, [`goruntime`] probes and reads Go
//! processes, [`k8s`] names pods. [`kernel`] answers what the running kernel provides; [`config`]
//! holds the settings; [`daemon`] wires everything for `chainprobe run`.
// The OpenAPI document (api::openapi) is one large json! literal.
#![recursion_limit = "256"]

pub mod aggregate;
pub mod api;
pub mod attach;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod discovery;
pub mod evidence;
pub mod goruntime;
pub mod health;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod procfs;
pub mod snapshot;
pub mod tls;
