//! `worker`: runs workers only (see [`tenantry_worker::cli`]).

fn main() -> std::process::ExitCode {
    tenantry_worker::cli::main()
}
