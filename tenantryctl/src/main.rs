//! `tenantryctl`: see the library's documentation for the commands.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tenantryctl::Cli::parse();
    let mut stdout = std::io::stdout();
    match tenantryctl::run(cli, &mut stdout).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenantryctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
