//! The `dispatcher` binary itself: outside the development profile it refuses to start
//! without a signing secret, with exit code 2 and a message naming the variable.
//! (Having an integration test also makes `cargo test` build the binary, which the
//! end-to-end tests run as a child process.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn refuses_to_start_without_a_signing_secret() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TENANTRY_SIGNING_SECRET"), "{stderr}");
}
