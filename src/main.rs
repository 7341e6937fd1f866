//! The `arbor` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "arbor",
    version,
    about = "Erlang/OTP-grade supervision trees for tokio services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a supervision tree under random faults and show it recover.
    Demo {
        /// How long to inject faults (e.g. `20s`, `1m`).
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Mean time between two faults.
        #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
        fault_every: Duration,
        /// How often to print the tree.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        print_every: Duration,
        /// Seed of the fault schedule, to replay a run.
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Logs go to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=info` shows every exit and restart); off by
/// default so the demo's own output stays readable.
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("arbor: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Demo {
            duration,
            fault_every,
            print_every,
            seed,
        } => {
            let options = arbor::demo::DemoOptions {
                duration,
                fault_every,
                print_every,
                seed,
            };
            match runtime.block_on(arbor::demo::run(options)) {
                Ok(report) if report.missing.is_empty() => ExitCode::SUCCESS,
                Ok(_) => {
                    eprintln!("arbor demo: some permanent workers did not come back");
                    ExitCode::FAILURE
                }
                Err(err) => {
                    eprintln!("arbor demo failed: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
