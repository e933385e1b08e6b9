//! tenantry's dispatcher: the HTTP API in front of the fleet.
//!
//! # Layout
//! - [`startup`]: `Application::build` and `run_until_stopped`.
//! - [`routes`]: the route table and handlers (jobs, admin, ops).
//! - [`auth`]: API key → tenant (cached briefly), admin token.
//! - [`mover`]: moves tenants' points after an isolation mode switch.
//! - [`submitter`]: group commit of submissions.
//! - [`pump`]: publishes the Postgres backlog to the broker, fairly, with confirms.
//! - [`webhooks`]: the webhook delivery loop over the Postgres outbox.
//! - [`error`]: the one API error type and its stable codes.
//! - [`request_span`]: the span of every HTTP call, and the one place errors are logged.
//! - [`extract`]: JSON, path and query extractors with our error shape.
//! - [`body`]: the rules every JSON body is read by (no NUL, objects for structs).

pub mod auth;
pub mod body;
pub mod demo;
pub mod documents;
pub mod error;
pub mod extract;
pub mod mover;
pub mod pump;
pub mod rate_limit;
pub mod request_span;
pub mod routes;
pub mod startup;
pub mod state;
pub mod submitter;
pub mod webhooks;

pub use startup::Application;
