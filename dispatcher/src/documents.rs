//! Removing a document's points from the tenant's namespace.

use tenantry::db::jobs::JobView;
use tenantry::tenancy::{DatabaseName, Namespace};
use tenantry::tenant::Tenant;

use crate::state::AppState;

/// Best effort: a failure is logged, not returned, because the quota was already
/// given back and the points are unreachable by id once the document is gone.
pub async fn remove_points(state: &AppState, tenant: &Tenant, job: &JobView) {
    let Ok(database) = DatabaseName::parse(&job.database) else {
        return;
    };
    let ns = Namespace::new(
        &state.settings.queue_prefix,
        &tenant.id,
        &database,
        tenant.isolation,
    );
    if let Err(e) = state.store.delete_document(&ns, job.document_id).await {
        tracing::warn!(tenant_id = %tenant.id, document_id = %job.document_id, error = %e, "Removing points failed.");
    }
}
