//! Named crash points for the crash tests: when `TENANTRY_FAILPOINT` names one, the
//! process aborts there (no destructors, no flush — like a power cut at that moment).
//! Unset, a failpoint is one cached comparison.

use std::sync::OnceLock;

/// The environment variable naming the failpoint to abort at.
pub const ENV_FAILPOINT: &str = "TENANTRY_FAILPOINT";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV_FAILPOINT).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Aborts the process if `TENANTRY_FAILPOINT` is `name`.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
