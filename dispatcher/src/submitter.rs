//! Group commit of submissions: every call's documents (and the call's own count
//! against API_CALLS_PER_HOUR) are handed to one batcher, which records whatever has
//! queued up meanwhile in one transaction (`db::jobs::submit_group`). Each caller is
//! answered only after the commit that holds its documents; a busy dispatcher pays one
//! commit per group, not per document or per call.

use tenantry::batch::{Batcher, all_or_each};
use tenantry::db::jobs::{self as job_db, Request, RequestOutcome};

use sqlx::PgPool;

/// Most calls recorded in one transaction.
const MAX_CALLS: usize = 256;

type Recorded = Result<RequestOutcome, sqlx::Error>;

pub struct Submitter {
    batcher: Batcher<Request, Recorded>,
}

impl Submitter {
    /// Spawns the batching task (needs a running Tokio runtime).
    pub fn spawn(pool: PgPool) -> Self {
        let batcher = Batcher::spawn(MAX_CALLS, move |requests: Vec<Request>| {
            let pool = pool.clone();
            all_or_each(requests, move |requests| {
                let pool = pool.clone();
                async move { job_db::submit_group(&pool, &requests).await }
            })
        });
        Self { batcher }
    }

    /// Records one call's documents with whatever else is waiting.
    pub async fn submit(&self, request: Request) -> Recorded {
        self.batcher
            .call(vec![request])
            .await
            .and_then(|mut answers| answers.pop())
            .unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}
