//! One end-to-end test binary (one link, shared helpers). Every test starts its own
//! fleet with its own database, queue prefix and data directory, so they run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod delivery;
mod deploy;
mod fairness;
mod hostile;
mod ops;
mod quotas;
mod request_span;
mod skeleton;
mod tenants;
mod vectors;
mod webhooks;
