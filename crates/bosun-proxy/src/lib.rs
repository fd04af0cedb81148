//! bosun's node proxy and the upstream library it shares with the gateway.
//!
//! [`upstream`] is the reusable part: an endpoint cache fed by Service and EndpointSlice
//! watchers, balancers (P2C over peak-EWMA, round robin, consistent hash), and an HTTP/1.1 +
//! HTTP/2 client with retries under a budget, timeouts, outlier ejection, `traceparent`
//! propagation and Prometheus metrics.
//!
//! [`run`] is the node proxy. No iptables, no sidecars:
//! * every Service cluster IP is put on a dummy interface ([`ProxyConfig::service_interface`])
//!   as a /32, so traffic to it from the host or from pods (routed via the bridge to the
//!   host) is delivered to local sockets;
//! * the proxy listens on every `clusterIP:port` and `nodePort` (TCP);
//! * the first bytes of a connection decide: an HTTP/1.1 request line or the HTTP/2
//!   prior-knowledge preface (h2c, gRPC) -> per-request balancing through [`upstream`];
//!   anything else, or silence for 300 ms (server-first protocols) -> per-connection
//!   balancing with a bidirectional copy. Ports named `tcp`/`tcp-*` or with
//!   `appProtocol: tcp` skip sniffing; `http*`, `grpc*`, `h2c*` or `appProtocol`
//!   `http`/`h2c`/`grpc`/`kubernetes.io/h2c` never fall back to TCP.
//!
//! # Service annotations
//!
//! | Annotation | Values (default) |
//! |---|---|
//! | `bosun.dev/load-balancer` | `p2c-ewma` (default), `round-robin`, `consistent-hash` |
//! | `bosun.dev/hash-key` | `source-ip` (default) or `header:NAME` |
//! | `bosun.dev/retries` | extra attempts 0..=10 (2) |
//! | `bosun.dev/retry-non-idempotent` | `true`/`false` (false): also retry non-GET/HEAD/OPTIONS |
//! | `bosun.dev/timeout` | whole-request deadline, e.g. `5s`; `0` = none (15s) |
//! | `bosun.dev/per-try-timeout` | per-attempt deadline (none) |
//! | `bosun.dev/outlier-consecutive-errors` | ejection threshold, 0 = off (5) |
//! | `bosun.dev/outlier-base-ejection` | first ejection time, doubling per repeat, max 5m (30s) |
//! | `bosun.dev/outlier-max-ejection-percent` | 0..=100 (50); the last endpoint is never ejected |
//! | `bosun.dev/scale-to-zero-target` | written by the scale-to-zero controller: hold requests while there is no endpoint (see [`upstream::activation`]) |
//! | `bosun.dev/activation-timeout` | how long a held request waits (30s) |
//! | `bosun.dev/activation-queue` | how many requests may wait per Service (1000) |
//!
//! A bad value is logged and the Service falls back to the defaults.
//!
//! Retried: connect failures (any method), and resets / 502 / 503 / 504 of GET, HEAD and
//! OPTIONS, while the retry budget (20% of requests + 10/s) allows; bodies above 64 KiB or
//! without a length are streamed and not retried. While a retry is possible, a response of
//! up to 64 KiB with a length is read whole before it is passed on, so one cut short (an
//! endpoint dying mid-answer) is retried too. Errors: no endpoints 503, connect
//! failure 502, timeout 504, malformed request 400.
//!
//! Draining: a removed or terminating endpoint takes no new requests; its in-flight
//! requests finish and its idle connections close. When a listener closes (Service
//! deleted, proxy stopping), HTTP/1.1 connections answer in-flight requests, and requests
//! arriving within a second, with `Connection: close` (idle ones close after that second),
//! HTTP/2 connections get GOAWAY, and open TCP relays continue until
//! [`ProxyConfig::drain_timeout`] at shutdown.
//!
//! Metrics (prefix `bosun_proxy_`): `upstream_requests_total{namespace,service,status}`,
//! `upstream_request_duration_seconds`, `upstream_connect_errors_total`,
//! `upstream_retries_total`, `upstream_retries_budget_exhausted_total`,
//! `upstream_ejections_total`, `upstream_bytes_total{direction}`,
//! `upstream_tcp_connections_total`.

pub mod handoff;
pub mod http_conn;
pub mod listen;
mod node;
pub mod sharded;
pub mod upstream;
pub mod vip;
pub mod workers;

pub use node::{ProxyConfig, run, serve};
