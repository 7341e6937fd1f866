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

/// Binds 127.0.0.1:`port`, retrying for a moment (bounded) while the port is still taken: a port just given up
/// by a server may linger.
pub fn bind_loopback(port: u16) -> StdListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match StdListener::bind(("127.0.0.1", port)) {
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            bound => return bound.unwrap_or_else(|err| panic!("bind 127.0.0.1:{port}: {err}")),
        }
    }
}

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
        Self::start_opts(ServerOptions {
            max_streams: Some(max_streams),
            ..Default::default()
        })
    }

    fn start_full(
        port: u16,
        log: Option<MetadataLog>,
        tls: Option<tonic::transport::ServerTlsConfig>,
        max_streams: Option<u32>,
    ) -> InProcessServer {
        Self::start_opts(ServerOptions {
            port,
            log,
            tls,
            max_streams,
            ..Default::default()
        })
    }

    /// A server with every option.
    pub fn start_opts(opts: ServerOptions) -> InProcessServer {
        let ServerOptions {
            port,
            log,
            tls,
            max_streams,
            max_connection_age,
        } = opts;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (reporter, _) = tonic_health::server::health_reporter();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let listener = bind_loopback(port);
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
            if let Some(age) = max_connection_age {
                builder = builder.max_connection_age(age);
            }
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
            // Shut it down on a thread of its own (a runtime cannot be shut down from another's async context)
            // and wait, so that when this returns the server's listener and connections are closed: a stale
            // client then fails at once instead of waiting on a half-dead connection.
            let _ = std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(5))).join();
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Options of an [`InProcessServer`].
#[derive(Default)]
pub struct ServerOptions {
    /// Port (0: any).
    pub port: u16,
    /// Every request's metadata is appended here.
    pub log: Option<MetadataLog>,
    /// TLS.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// HTTP/2 `max_concurrent_streams`.
    pub max_streams: Option<u32>,
    /// Each connection is drained (GOAWAY NO_ERROR, in-flight streams finish) once this old: tonic's server
    /// side of gRPC's `MAX_CONNECTION_AGE`, and its way to close idle connections.
    pub max_connection_age: Option<Duration>,
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

    /// SIGSTOP, and wait until the kernel reports the process stopped (the signal is delivered
    /// asynchronously: a call made right after `kill` may still be served).
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state is the field after the parenthesised command name.
            let state = text.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            if matches!(state, Some('T' | 't')) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child {} never stopped",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
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

/// `grpc://127.0.0.1:<port>?disableTls=true`.
pub fn plain_target(port: u16) -> String {
    format!("grpc://127.0.0.1:{port}?disableTls=true")
}

/// One health `Check` through the connection's following channel, with the connection's deadline.
pub async fn check_via(
    h: &arbor_actors::connection::ConnectionHandle,
) -> Result<tonic_health::pb::HealthCheckResponse, tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(h.channel());
    let request = h.request(tonic_health::pb::HealthCheckRequest::default());
    Ok(client.check(request).await?.into_inner())
}

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

/// An HTTP/2 server written at the frame level, for what no stock server can be made to do: it answers every
/// gRPC call with a health `SERVING` response, and answers the client's first keepalive PING on each
/// connection with the exact frame a gRPC server sends when pinged too often (gRFC A8): GOAWAY
/// `ENHANCE_YOUR_CALM` with debug data `too_many_pings`, then closes the connection. (h2's server API cannot
/// put debug data in a GOAWAY.)
pub struct TooManyPingsServer {
    pub port: u16,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// PINGs received (each answered with the GOAWAY).
    pub pings: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TooManyPingsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HEADERS + DATA + trailers of a `HealthCheckResponse { status: SERVING }` on `stream`. HPACK by hand:
/// `:status: 200` is static entry 8; `content-type` (static name 31) and `grpc-status` are literals without
/// indexing.
fn serving_response(stream: u32) -> Vec<u8> {
    let mut headers = vec![0x88, 0x0f, 0x10, 16];
    headers.extend_from_slice(b"application/grpc");
    let mut out = frame(0x1, 0x4, stream, &headers);
    // gRPC message: uncompressed, length 2, protobuf field 1 (varint) = 1 (SERVING).
    out.extend(frame(0x0, 0x0, stream, &[0, 0, 0, 0, 2, 0x08, 0x01]));
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0']);
    out.extend(frame(0x1, 0x5, stream, &trailers));
    out
}

impl TooManyPingsServer {
    pub async fn start() -> TooManyPingsServer {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, p) = (connections.clone(), pings.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let pings = p.clone();
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    if tcp.read_exact(&mut preface).await.is_err() || &preface[..3] != b"PRI" {
                        return;
                    }
                    // Our SETTINGS (empty: the defaults).
                    if tcp.write_all(&frame(0x4, 0, 0, &[])).await.is_err() {
                        return;
                    }
                    let mut last_stream = 0u32;
                    loop {
                        let mut head = [0u8; 9];
                        if tcp.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let (kind, flags) = (head[3], head[4]);
                        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                        let mut payload = vec![0u8; len];
                        if tcp.read_exact(&mut payload).await.is_err() {
                            return;
                        }
                        let reply = match kind {
                            // SETTINGS (not an ack): ack it.
                            0x4 if flags & 0x1 == 0 => frame(0x4, 0x1, 0, &[]),
                            // HEADERS opening a call: answer SERVING at once (the request's DATA is ignored).
                            0x1 => {
                                last_stream = stream;
                                serving_response(stream)
                            }
                            // A PING (not an ack): too many pings.
                            0x6 if flags & 0x1 == 0 => {
                                pings.fetch_add(1, Ordering::SeqCst);
                                let mut goaway = last_stream.to_be_bytes().to_vec();
                                goaway.extend_from_slice(&0xbu32.to_be_bytes());
                                goaway.extend_from_slice(b"too_many_pings");
                                let _ = tcp.write_all(&frame(0x7, 0, 0, &goaway)).await;
                                let _ = tcp.shutdown().await;
                                return;
                            }
                            _ => continue,
                        };
                        if tcp.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TooManyPingsServer {
            port,
            connections,
            pings,
            task,
        }
    }
}
