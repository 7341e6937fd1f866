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
    /// Two nodes consume a tunnel while faults are injected; a ledger shows nothing was lost.
    #[command(
        after_help = "Examples:\n  arbor demo                          30 s, a fault about every 3 s\n  arbor demo --duration 10s --seed 42  replay a run's fault schedule\n  arbor demo --source kafka --bootstrap 127.0.0.1:9092   the same on a Kafka topic (feature kafka)"
    )]
    Demo {
        /// How long records are produced and faults injected (e.g. `10s`, `1m`).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Time between two faults (default: each kind of fault twice within --duration).
        #[arg(long, value_parser = humantime::parse_duration)]
        fault_every: Option<Duration>,
        /// How often a status line is printed when the output is not a terminal.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        print_every: Duration,
        /// Seed of the fault schedule, to replay a run.
        #[arg(long)]
        seed: Option<u64>,
        /// Records produced per second.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        /// How long to wait after production for every record to be delivered.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Where the records live: arbor's tunnel service in this process, or a topic created for the run on
        /// the Kafka broker at --bootstrap (needs the `kafka` feature; the broker is not restarted).
        #[arg(
            long,
            value_enum,
            default_value = "service",
            requires_if("kafka", "bootstrap")
        )]
        source: DemoSourceArg,
        /// The Kafka broker for --source kafka (host:port).
        #[arg(long, value_name = "HOST:PORT")]
        bootstrap: Option<String>,
    },
    /// Run the tunnel service until SIGINT or SIGTERM.
    #[command(
        after_help = "Examples:\n  arbor serve                                  in memory on 127.0.0.1:50051\n  arbor serve --data /var/lib/arbor            durable: what it acknowledged survives a crash\n  arbor serve --listen 0.0.0.0:50051 --tls-cert leaf.pem --tls-key leaf.key --api-key-file keys"
    )]
    Serve(ServeArgs),
    /// Administer tunnels on a running tunnel service, and append records.
    #[command(
        after_help = "Examples:\n  arbor tunnel create orders --stream 4\n  arbor tunnel append orders --key customer-7 '{\"total\": 12}'\n  arbor tunnel describe orders --addr 10.0.0.5:50051 --ca-file ca.pem --token-file key"
    )]
    Tunnel(TunnelArgs),
    /// Look at a running tree through its introspection server: tree, node, registry, events.
    #[command(
        after_help = "Examples:\n  arbor inspect tree\n  arbor inspect node orders/tunnels --addr 127.0.0.1:50052\n  arbor inspect events --json --count 20"
    )]
    Inspect(InspectArgs),
    /// A live terminal view of a running tree (its introspection server): tree, registries, channels, events.
    #[command(
        after_help = "Examples:\n  arbor top                     the tree on 127.0.0.1:50052\n  arbor top --addr 127.0.0.1:40123 --interval 500ms"
    )]
    Top(TopArgs),
}

#[derive(clap::Args)]
struct InspectArgs {
    #[command(flatten)]
    connection: arbor::inspect::InspectConnection,
    /// Machine-readable output: one JSON document (one JSON object a line for `events`). Times are RFC 3339
    /// strings (`at`, `captured_at`...), durations whole milliseconds in fields ending `_ms`, names the
    /// lower-case words of the text form (`running`, `transient`, `exited`).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: arbor::inspect::InspectCommand,
}

#[derive(clap::Args)]
struct TopArgs {
    #[command(flatten)]
    connection: arbor::inspect::InspectConnection,
    /// How often to re-read the tree when no event comes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on, `host:port` (`localhost:50051`, `0.0.0.0:50051`); loopback by default. Beyond
    /// loopback, serve with TLS and api keys (a warning on stderr says what is missing).
    #[arg(long, default_value = arbor::tunnel_service::server::DEFAULT_LISTEN, value_parser = parse_listen)]
    listen: std::net::SocketAddr,
    /// Data directory: durable storage (survives SIGKILL). Without it, tunnels live in memory.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// File of accepted api keys: one per line as `<key> [role ...]`, roles `admin` (create, delete, seal),
    /// `produce` (append) and `consume` (connect and session calls) separated by spaces or commas; a line
    /// without roles grants every role; `#` starts a comment. Every call must then carry a key (`api-key` or
    /// Bearer), and a call outside its key's roles is refused (PERMISSION_DENIED).
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
    /// Heartbeat timeout for clients that do not ask for one.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// How long a channel being moved waits for its owner to release it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    closing_timeout: Duration,
    /// Most live sessions (connected consumers) per tunnel; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 1024)]
    max_sessions_per_tunnel: usize,
    /// Most connections open at once; more are closed as they are accepted.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most calls open at once on one connection (HTTP/2 streams).
    #[arg(long, default_value_t = 2048)]
    max_concurrent_streams: u32,
    /// Longest a call may take until its answer starts; must exceed the 30 s long-poll limit.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Longest a new connection may stay silent (and take for its TLS handshake) before it is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
}

#[derive(clap::Args)]
struct TunnelArgs {
    #[command(flatten)]
    connection: arbor::tunnel_admin::AdminConnection,
    /// Print one JSON document instead of words (numbers as numbers, statuses in lower case).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: arbor::tunnel_admin::AdminCommand,
}

/// `arbor demo --source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoSourceArg {
    /// arbor's tunnel service, in this process.
    Service,
    /// A Kafka topic on the broker at --bootstrap.
    Kafka,
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
            rate,
            settle,
            source,
            bootstrap,
        } => {
            let source = match (source, bootstrap) {
                (DemoSourceArg::Kafka, Some(bootstrap)) => arbor::demo::DemoSource::Kafka { bootstrap },
                (DemoSourceArg::Kafka, None) => unreachable!("clap requires --bootstrap with --source kafka"),
                (DemoSourceArg::Service, Some(_)) => {
                    eprintln!("arbor demo: --bootstrap is for --source kafka");
                    return ExitCode::FAILURE;
                }
                (DemoSourceArg::Service, None) => arbor::demo::DemoSource::Service,
            };
            let options = arbor::demo::DemoOptions {
                duration,
                fault_every,
                print_every,
                seed,
                rate,
                settle,
                source,
            };
            match runtime.block_on(arbor::demo::run(options)) {
                Ok(report) if report.passed() => ExitCode::SUCCESS,
                Ok(_) => {
                    eprintln!("arbor demo: a check failed (see the ledger above)");
                    ExitCode::FAILURE
                }
                Err(err) => {
                    eprintln!("arbor demo failed: {}", arbor::tunnel_service::error::chain(&err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => serve(&runtime, args),
        Command::Tunnel(args) => tunnel(&runtime, args),
        Command::Inspect(args) => inspect(&runtime, args),
        Command::Top(args) => top(&runtime, args),
    }
}

fn inspect(runtime: &tokio::runtime::Runtime, args: InspectArgs) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let run = arbor::inspect::run(&args.connection, args.command, args.json, &mut stdout);
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("arbor inspect: {err}");
            ExitCode::FAILURE
        }
    }
}

fn top(runtime: &tokio::runtime::Runtime, args: TopArgs) -> ExitCode {
    match runtime.block_on(arbor::top::run(&args.connection.options(), args.interval)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("arbor top: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_listen(value: &str) -> Result<std::net::SocketAddr, String> {
    arbor::serve::resolve_listen(value).map_err(|err| match err {
        arbor::serve::ServeError::Listen { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn serve(runtime: &tokio::runtime::Runtime, args: ServeArgs) -> ExitCode {
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(arbor::tunnel_service::TlsFiles { cert, key }),
        _ => None,
    };
    let options = arbor::serve::ServeOptions {
        listen: args.listen,
        data: args.data,
        tls,
        api_key_file: args.api_key_file,
        default_heartbeat_timeout: args.heartbeat_timeout,
        closing_timeout: args.closing_timeout,
        max_sessions_per_tunnel: args.max_sessions_per_tunnel,
        connection_limits: arbor::tunnel_service::ConnectionLimits::default()
            .max_connections(args.max_connections)
            .max_concurrent_streams(args.max_concurrent_streams)
            .request_timeout(args.request_timeout)
            .handshake_timeout(args.handshake_timeout),
    };
    match runtime.block_on(arbor::serve::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "arbor serve failed: {}",
                arbor::tunnel_service::error::chain(&err)
            );
            ExitCode::FAILURE
        }
    }
}

fn tunnel(runtime: &tokio::runtime::Runtime, args: TunnelArgs) -> ExitCode {
    match runtime.block_on(arbor::tunnel_admin::run(
        &args.connection,
        args.command,
        args.json,
    )) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("arbor tunnel: {err}");
            ExitCode::FAILURE
        }
    }
}
