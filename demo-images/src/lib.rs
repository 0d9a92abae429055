//! The programs `make demo` runs in its split Pod, std only so they build small, static
//! or against glibc alone (hack/demo-images.sh): `demo-upstream` answers requests,
//! `demo-proxy` is an Envoy-like TCP proxy sidecar in front of it, `demo-app` drives a
//! fixed number of requests through the proxy and reports latency percentiles. The
//! request format is a minimal HTTP/1.1 keep-alive exchange whose answer the app can
//! check (see [`proto`]).
#![forbid(unsafe_code)]

pub mod args;
pub mod load;
pub mod proto;
pub mod proxy;
pub mod upstream;
