//! The `worker` program, built inside the tests package so end-to-end tests can start
//! real worker processes (`env!("CARGO_BIN_EXE_e2e-worker")`): Cargo builds a
//! package's own binaries for its integration tests, not other packages'.

fn main() -> std::process::ExitCode {
    tenantry_worker::cli::main()
}
