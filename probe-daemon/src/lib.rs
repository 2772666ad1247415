//! chainprobe: an eBPF daemon that tells whether the Go services on a node are healthy and
//! captures evidence when they are not.
//!
//! Data flows one way: kernel programs → [`attach`] (load, attach, kernel maps) → [`events`]
//! (decode ring buffer, drain per-CPU maps) → [`aggregate`] (per-process state) → [`metrics`]
//! and the HTTP [`api`]. [`kernel`] answers what the running kernel provides; [`config`] holds the
//! settings; [`daemon`] wires everything for `chainprobe run`.
pub mod aggregate;
pub mod api;
pub mod attach;
pub mod config;
pub mod daemon;
pub mod events;
pub mod goinspect;
pub mod goruntime;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod procfs;
pub mod tls;
