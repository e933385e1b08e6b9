//! tenantry's shared library: everything the dispatcher and the workers agree on.
//!
//! # Layout
//! - [`config`]: every environment variable, its default and parsing.
//! - [`tenancy`]: tenant and database ids, and the ONLY code that turns a tenant into a
//!   collection name, a payload partition or a point id.
//! - [`tenant`]: tenant status and `TenantConfiguration`.
//! - [`api_key`]: prefixed keys, hashed at rest, redacted `Debug`.
//! - [`job`]: job states and the versioned, signed wire message.
//! - [`quota`]: resource kinds and atomic reservations.
//! - [`broker`]: exchange and queue names, topology, publishing with confirms.
//! - [`db`]: Postgres pool, migrations, one module per table family.
//! - [`chunk`], [`embed`], [`ingest`]: text → chunks → vectors → points.
//! - [`vector`]: the `VectorStore` trait and its back-ends.
//! - [`error_code`]: every error code once, with its HTTP status and meaning.
//! - [`telemetry`]: logging setup.
//! - [`metrics`]: metric names, the process registry, the text exposition.
//! - [`fleet`]: queues, per-tenant backlog, live workers: what operators watch.
//! - [`webhook`]: notification events, their signature, the SSRF rule, the sender.
//! - [`failpoint`]: named crash points for the crash tests.
//! - [`batch`]: group commit (many callers' items through one transaction).
//! - [`checkpoint`]: the embedded store's durability: checkpoints, and recovery of what
//!   the last one did not cover, re-derived from Postgres.

pub mod api_key;
pub mod batch;
pub mod broker;
pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod db;
pub mod embed;
pub mod error_code;
pub mod failpoint;
pub mod fleet;
pub mod ingest;
pub mod job;
pub mod metrics;
pub mod quota;
pub mod telemetry;
pub mod tenancy;
pub mod tenant;
pub mod tls;
pub mod vector;
pub mod webhook;
