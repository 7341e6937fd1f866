//! Real tonic servers on 127.0.0.1 for the connection tests: in-process on their own runtime, or a child
//! process (this test binary re-run with `ARBOR_CHILD_SERVER_PORT` set) that can be SIGKILLed or SIGSTOPped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

pub const CHILD_ENV: &str = "ARBOR_CHILD_SERVER_PORT";

/// A free port on 127.0.0.1 (bound then released; loopback races are unlikely in a test).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An in-process tonic-health server on its own runtime (its own thread), so that stopping it is like a server
/// going away, independent of the test's runtime.
pub struct InProcessServer {
    pub addr: SocketAddr,
    pub reporter: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

pub type MetadataLog = Arc<std::sync::Mutex<Vec<tonic::metadata::MetadataMap>>>;

impl InProcessServer {
    /// Serve grpc.health.v1 on `port` (0: any). Every request's metadata is appended to `log` if given.
    pub fn start(port: u16, log: Option<MetadataLog>) -> InProcessServer {
        Self::start_with(port, log, None)
    }

    pub fn start_with(
        port: u16,
        log: Option<MetadataLog>,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> InProcessServer {
        Self::start_full(port, log, tls, None)
    }

    /// With an HTTP/2 `max_concurrent_streams` limit.
    pub fn start_limited(max_streams: u32) -> InProcessServer {
        Self::start_full(0, None, None, Some(max_streams))
    }

    fn start_full(
        port: u16,
        log: Option<MetadataLog>,
        tls: Option<tonic::transport::ServerTlsConfig>,
        max_streams: Option<u32>,
    ) -> InProcessServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (reporter, _) = tonic_health::server::health_reporter();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let listener = StdListener::bind(("127.0.0.1", port)).expect("bind test server port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let interceptor = move |req: tonic::Request<()>| {
                if let Some(log) = &log {
                    log.lock().unwrap().push(req.metadata().clone());
                }
                Ok(req)
            };
            let svc = tonic_health::pb::health_server::HealthServer::with_interceptor(service, interceptor);
            let mut builder = Server::builder().max_concurrent_streams(max_streams);
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).unwrap();
            }
            // Like a production server: no Nagle (else 40 ms delayed-ACK stalls on small frames).
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = builder
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        InProcessServer {
            addr,
            reporter,
            shutdown: Some(tx),
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Graceful shutdown: stop accepting, send GOAWAY; open streams may linger until [`kill`](Self::kill).
    pub fn graceful_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Drop the runtime: every socket closes at once.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process serving grpc.health.v1 on a port; SIGKILL / SIGSTOP / SIGCONT by pid.
pub struct ChildServer {
    pub child: Child,
    pub port: u16,
}

impl ChildServer {
    /// Re-run this test binary's `entry_test` with the child env var; wait for its "LISTENING" line.
    pub fn start(entry_test: &str, port: u16) -> ChildServer {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                entry_test,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("LISTENING ") => break,
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    panic!("child server exited before listening");
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ChildServer { child, port }
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Body of the child: serve until killed. Call from a `#[test]` named as passed to [`ChildServer::start`];
/// returns at once when not running as a child.
pub fn child_server_main() {
    let Ok(port) = std::env::var(CHILD_ENV) else {
        return;
    };
    let port: u16 = port.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (_reporter, svc) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        println!("LISTENING {port}");
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    std::process::exit(0);
}

/// Generous outer bound for waiting on events.
pub const LONG: Duration = Duration::from_secs(20);

/// A config for `cs` with a fast backoff (100 ms to 500 ms, 2 s connect timeout) and no health probe.
pub fn quick_config(cs: &str) -> arbor_actors::connection::ConnectionConfig {
    arbor_actors::connection::ConnectionConfig::parse(cs)
        .unwrap()
        .with_backoff(arbor_actors::connection::BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            min_connect_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .with_probe_interval(None)
}
