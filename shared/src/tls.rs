//! TLS for outgoing HTTP (webhooks, remote embedders): one process-wide rustls crypto
//! provider, ring, the same one the broker and database clients use. Installing it
//! ourselves keeps a second provider (aws-lc, slow to build) out of the tree.

/// Installs ring as the process's default provider; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder with the crypto provider in place: the one way tenantry
/// builds HTTP clients.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
