//! The OpenAPI 3.1 document of the on-call API (`GET /api/v1/openapi.json`). A test checks that
//! its paths are exactly the router's [`super::ROUTES`].
use serde_json::{json, Value};

fn error_responses(codes: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    for (code, why) in codes {
        m.insert(code.to_string(), json!({ "description": why, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
    }
    Value::Object(m)
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn common() -> Value {
    error_responses(&[
        ("401", "missing or wrong bearer token (empty body)"),
        ("429", "too many requests from this client ([api] rate_limit_per_second)"),
    ])
}

pub fn document() -> Value {
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{16}$" } });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "chainprobe on-call API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Tracked Go processes with their health, and heap/goroutine snapshots. Every route needs `Authorization: Bearer <token>` (CHAINPROBE_API_TOKEN or [api] token_file)."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/v1/targets": { "get": {
                "summary": "Tracked Go processes: build, probes, runtime reads and health (score and signals)",
                "responses": merge(json!({ "200": { "description": "targets", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Targets" } } } } }), common())
            }},
            "/api/v1/targets/{pid}/creation-probes": { "post": {
                "summary": "Switch a process's goroutine-creation probes on or off",
                "parameters": [{ "name": "pid", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 1 } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false, "required": ["enabled"],
                    "properties": { "enabled": { "type": "boolean" }, "seconds": { "type": "number", "exclusiveMinimum": 0, "maximum": 3600 } }
                }}}},
                "responses": merge(json!({ "200": { "description": "new state" } }), merge(common(), error_responses(&[
                    ("400", "bad pid or body"), ("404", "not a tracked Go process"), ("409", "Go tracking disabled"), ("413", "body too large"), ("422", "probes cannot be attached")
                ])))
            }},
            "/api/v1/snapshots": {
                "post": {
                    "summary": "Take a snapshot of a process (by pid, or by namespace/pod[/container])",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SnapshotRequest" } } } },
                    "responses": merge(json!({ "202": { "description": "queued", "content": { "application/json": { "schema": {
                        "type": "object", "properties": { "id": { "type": "string" }, "status": { "const": "pending" }, "pid": { "type": "integer" } }
                    }}}}}), merge(common(), error_responses(&[
                        ("400", "malformed body or unknown kind"), ("404", "no such process or pod"), ("409", "snapshots disabled, or the pod has several Go processes"),
                        ("413", "body too large ([api] max_body_bytes)"), ("422", "not a Go process"),
                        ("429", "cooldown or hourly cap of the target"), ("503", "circuit breaker open or queue full")
                    ])))
                },
                "get": {
                    "summary": "Every snapshot, newest first, and the circuit breaker's state",
                    "responses": merge(json!({ "200": { "description": "snapshots", "content": { "application/json": { "schema": {
                        "type": "object", "properties": {
                            "snapshots": { "type": "array", "items": { "$ref": "#/components/schemas/Snapshot" } },
                            "circuit": { "type": "object", "properties": { "open": { "type": "boolean" }, "reason": { "type": ["string", "null"] } } },
                            "crashes": { "type": ["object", "null"], "description": "crash capsules: capsules stored, suppressed (crash loop), dropped (queue full); pauses: paused, resumed_done/bound/limit/aborted/orphans, held_max_seconds, held_at_once_max" }
                        }
                    }}}}}), common())
                }
            },
            "/api/v1/snapshots/{id}": { "get": {
                "summary": "One snapshot's metadata and status (pending, running, done, failed)",
                "parameters": [id],
                "responses": merge(json!({ "200": { "description": "snapshot", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Snapshot" } } } } }),
                    merge(common(), error_responses(&[("400", "malformed id"), ("404", "no such snapshot")])))
            }},
            "/api/v1/snapshots/{id}/{kind}": { "get": {
                "summary": "A snapshot's file: heap or goroutine (gzipped pprof, `go tool pprof FILE`), or summary (JSON)",
                "parameters": [id, { "name": "kind", "in": "path", "required": true, "schema": { "enum": ["heap", "goroutine", "summary"] } }],
                "responses": merge(json!({ "200": { "description": "the file", "content": {
                    "application/octet-stream": { "schema": { "type": "string", "format": "binary" } },
                    "application/json": { "schema": { "type": "object" } }
                }}}), merge(common(), error_responses(&[("400", "malformed id or kind"), ("404", "no such snapshot or file (the error says why)")])))
            }},
            "/api/v1/openapi.json": { "get": {
                "summary": "This document",
                "responses": merge(json!({ "200": { "description": "OpenAPI 3.1" } }), common())
            }}
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "string" } } },
                "Signal": { "type": "object", "properties": {
                    "name": { "type": "string" }, "value": { "type": "number" },
                    "threshold": { "type": ["number", "null"] }, "state": { "enum": ["ok", "warn", "critical"] }
                }},
                "Health": { "type": "object", "properties": {
                    "score": { "type": "integer", "minimum": 0, "maximum": 100 },
                    "signals": { "type": "array", "items": { "$ref": "#/components/schemas/Signal" } }
                }},
                "Targets": { "type": "object", "properties": { "targets": { "type": "array", "items": { "type": "object", "properties": {
                    "pid": { "type": "integer" }, "comm": { "type": "string" }, "go_version": { "type": "string" },
                    "health": { "oneOf": [{ "$ref": "#/components/schemas/Health" }, { "type": "null" }] },
                    "debug": { "type": "object", "description": "present while a tracer (debugger) is attached or the process is stopped", "properties": {
                        "tracer_pid": { "type": "integer" }, "tracer_comm": { "type": "string" },
                        "traced_seconds": { "type": "number" }, "stopped_seconds": { "type": "number" } } },
                    "runtime_reads": { "type": "string", "description": "ok, or why the runtime is not read (offsets pending their check, rejected, unknown)" },
                    "http2": { "type": ["object", "null"], "description": "HTTP/2 GOAWAY and RST_STREAM frames the process sent and received (null before the first)", "properties": {
                        "frames": { "type": "array", "items": { "type": "object", "properties": {
                            "frame": { "enum": ["goaway", "rst_stream"] }, "direction": { "enum": ["sent", "received"] }, "code": { "type": "string" }, "count": { "type": "integer" }
                        }}},
                        "recent_goaways": { "type": "array", "description": "the latest GOAWAYs, oldest first, with the first bytes of their debug data", "items": { "type": "object", "properties": {
                            "direction": { "type": "string" }, "code": { "type": "string" }, "code_value": { "type": "integer" }, "last_stream_id": { "type": "integer" },
                            "debug_len": { "type": "integer" }, "debug_data": { "type": "string" }, "monotonic_seconds": { "type": "number" }
                        }}}
                    }},
                    "offsets": { "type": "object", "description": "where the struct offsets come from and whether they were checked on a live process", "properties": {
                        "source": { "enum": ["dwarf", "table", "nearest", "none"] },
                        "table": { "type": "string", "description": "e.g. 1.27/amd64" },
                        "generated_from": { "type": "string", "description": "the toolchain the table was generated from" },
                        "validation": { "type": "string", "description": "not needed (DWARF) | pending: … | accepted on pid N: … | rejected on pid N: … | no offsets: …" }
                    }},
                    "runtime": { "type": "object", "description": "the latest runtime read (every [go] read_interval_seconds)", "properties": {
                        "goroutines": { "type": ["integer", "null"], "description": "as runtime.NumGoroutine counts" },
                        "read_age_seconds": { "type": ["number", "null"], "description": "seconds since the runtime counters were read" },
                        "read_interval_seconds": { "type": ["number", "null"], "description": "seconds between two reads as scheduled now: [go] read_interval_seconds, stretched (up to 6x) when the node's Go processes would take more than half of [go] read_cpu_budget" },
                        "goroutines_counted_by": { "type": "string", "description": "the runtime's counters (O(GOMAXPROCS) per read), or every g read (O(goroutines)) and why" },
                        "goroutines_by_state": { "type": ["array", "null"], "description": "the last breakdown (system goroutines included), read less often for big processes ([go] read_cpu_budget)", "items": { "type": "object", "properties": {
                            "state": { "type": "string" }, "wait_reason": { "type": "string" }, "goroutines": { "type": "integer" }
                        }}},
                        "goroutines_by_state_age_seconds": { "type": ["number", "null"], "description": "seconds since the breakdown was read" },
                        "goroutines_by_state_period_seconds": { "type": ["number", "null"], "description": "seconds between two breakdown reads of this process, as scheduled now" },
                        "goroutines_by_state_read_cpu_seconds": { "type": ["number", "null"], "description": "CPU time the last breakdown read took" },
                        "goroutines_created": { "type": ["integer", "null"] }, "gc_cycles_probed": { "type": ["integer", "null"] },
                        "gc_cycles_memstats": { "type": ["integer", "null"] }, "stw_pauses_probed": { "type": ["integer", "null"] },
                        "heap_live_bytes": { "type": ["integer", "null"] }, "heap_goal_bytes": { "type": ["integer", "null"] },
                        "stw_pauses_by_reason": { "type": "object", "description": "stop-the-world pauses by reason (the metrics have one histogram of all)", "additionalProperties": { "type": "object", "properties": {
                            "count": { "type": "integer" }, "seconds": { "type": "number" }
                        }}}
                    }},
                    "tls": { "type": ["object", "null"], "description": "TLS handshakes with every label (the metrics sum over version and ALPN and time the successful handshakes only); null before the first", "properties": {
                        "handshakes": { "type": "array", "items": { "type": "object", "properties": {
                            "library": { "type": "string" }, "role": { "type": "string" }, "result": { "type": "string" },
                            "version": { "type": "string" }, "alpn": { "type": "string" }, "count": { "type": "integer" }
                        }}},
                        "durations": { "type": "array", "items": { "type": "object", "properties": {
                            "library": { "type": "string" }, "role": { "type": "string" }, "result": { "type": "string" },
                            "count": { "type": "integer" }, "sum_seconds": { "type": "number" },
                            "buckets": { "type": "array", "description": "[upper bound in seconds (\"+Inf\" last), handshakes at or below it]", "items": { "type": "array" } }
                        }}},
                        "failures": { "type": "array", "items": { "type": "object", "properties": {
                            "library": { "type": "string" }, "reason": { "type": "string" }, "count": { "type": "integer" }
                        }}}
                    }}
                }}}}},
                "SnapshotRequest": { "type": "object", "additionalProperties": false, "properties": {
                    "pid": { "type": "integer" }, "namespace": { "type": "string" }, "pod": { "type": "string" }, "container": { "type": "string" },
                    "kinds": { "type": "array", "items": { "enum": ["heap", "goroutine"] } }
                }},
                "Snapshot": { "type": "object", "properties": {
                    "id": { "type": "string" }, "pid": { "type": "integer" }, "comm": { "type": "string" },
                    "namespace": { "type": "string" }, "pod": { "type": "string" }, "container": { "type": "string" },
                    "trigger": { "enum": ["rule", "api", "crash", "memory-limit"] }, "rule": { "type": "string", "description": "the rule (trigger rule), or the crash kind (trigger crash)" },
                    "capsule": { "type": "object", "description": "trigger crash: what the process knew (kind, message, goid, top_frame, stack, system_stack, exit_code, exit, paused, held_seconds, seconds_to_capsule, partial, suppressed_before; OOM kills: heap_profile_snapshot and its age)" },
                    "kinds": { "type": "array", "items": { "enum": ["heap", "goroutine"] } },
                    "status": { "enum": ["pending", "running", "done", "failed"] }, "reason": { "type": "string" },
                    "created": { "type": "string", "format": "date-time" }, "finished": { "type": "string", "format": "date-time" },
                    "goroutines": { "type": "integer" }, "go_version": { "type": "string" },
                    "heap": { "type": "object" }, "health": { "$ref": "#/components/schemas/Health" },
                    "heap_profile": { "type": "object", "description": "the heap profile read out of process (source proc-mem)", "properties": {
                        "buckets": { "type": "integer" }, "memprofile_rate": { "type": "integer" },
                        "inuse_space_bytes": { "type": "integer" }, "bytes_read": { "type": "integer" },
                        "read_seconds": { "type": "number" }, "write_seconds": { "type": "number" },
                        "inline_frames": { "type": "string", "description": "why inlined frames are not expanded, when they are not" }
                    }},
                    "files": { "type": "object", "additionalProperties": { "type": "object", "properties": {
                        "file": { "type": "string" }, "bytes": { "type": "integer" }, "source": { "type": "string" }
                    }}},
                    "errors": { "type": "object", "additionalProperties": { "type": "string" } }
                }}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_exactly_the_routes() {
        let doc = document();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = super::super::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        routes.sort();
        assert_eq!(documented, routes);
        // Every $ref resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
        }
    }
}
