//! The integration tests, one binary: real S3 backends (s3s-fs in process, moto), the
//! gateway on loopback (in process or as the `s3edge` binary), real clients.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    missing_docs,
    unreachable_pub
)]

mod common;

mod cache;
mod clients;
mod cors;
mod credentials;
mod delete;
mod delete_process;
mod demo;
mod faults;
mod fleet_edges;
mod fleet_push;
mod limits;
mod moto;
mod observability;
mod process;
mod properties;
mod push;
mod push_early;
mod push_process;
mod range;
mod routing;
mod tls;
mod upstream;
