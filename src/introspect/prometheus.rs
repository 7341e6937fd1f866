//! The Prometheus exporter: the process's `metrics` recorder (metrics-exporter-prometheus, installed once per
//! process and shared by every tree in it), served as Prometheus text at `GET /metrics` on a listener of its
//! own — plain HTTP/1.1, or HTTPS with the introspection server's certificate — with the same tokens.
//!
//! A second listener rather than the gRPC one: scrapers speak HTTP/1.1, which a gRPC listener over TLS does not
//! offer (its ALPN is `h2` only).
//!
//! Gauges that reflect current state rather than events are refreshed at each scrape: per-channel delivered
//! and lag from the tunnel registry ([`record_channel_metrics`]), and `arbor_supervisor_children` (children
//! per supervisor, by path) from the tree's snapshot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use arbor_actors::supervisor::{ChildKind, TreeSnapshot};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::IntrospectionError;
use crate::connection_limits::ConnectionLimits;
use crate::serving::ApiKeys;
use crate::tree::{record_channel_metrics, TreeHandle};

/// The Prometheus text exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALLING: Mutex<()> = Mutex::new(());

/// The handle of the recorder this module installed, installing it on first use.
///
/// # Errors
/// [`IntrospectionError::RecorderTaken`] when another recorder was installed first.
fn recorder() -> Result<PrometheusHandle, IntrospectionError> {
    let _installing = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = RECORDER.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| IntrospectionError::RecorderTaken)?;
    let _ = RECORDER.set(handle.clone());
    Ok(handle)
}

/// The exporter's listener; stopped (its connections closed) when dropped or [`stop`](Self::stop)ped.
#[derive(Debug)]
pub(crate) struct PrometheusServer {
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl PrometheusServer {
    /// Installs the recorder if needed, binds `listen` and serves.
    pub(crate) async fn start(
        tree: TreeHandle,
        listen: SocketAddr,
        tls: Option<rustls::ServerConfig>,
        tokens: Option<ApiKeys>,
        limits: ConnectionLimits,
    ) -> Result<PrometheusServer, IntrospectionError> {
        let handle = recorder()?;
        let bind = |source| IntrospectionError::Bind {
            what: "prometheus",
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        crate::serving::warn_if_exposed("prometheus exporter", local_addr, tls.is_some());
        let scrape = Arc::new(Scrape { tree, handle, tokens });
        let acceptor = tls.map(|config| TlsAcceptor::from(Arc::new(config)));
        let accept = tokio::spawn(accept_loop(listener, acceptor, scrape, limits));
        tracing::info!(addr = %local_addr, "prometheus exporter listening");
        Ok(PrometheusServer { local_addr, accept })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection.
    pub(crate) fn stop(self) {
        self.accept.abort();
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves scrapes, one task per connection, at most `limits.max_connections` at once (one more is closed at
/// once); a connection gets `limits.handshake_timeout` for its TLS handshake, then again for each request's
/// headers, and `limits.request_timeout` for the whole connection (a scrape is one short request or a few).
async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    scrape: Arc<Scrape>,
    limits: ConnectionLimits,
) {
    // Dropped with this task: aborting the accept loop closes every connection.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "prometheus exporter: accept failed");
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        if connections.len() >= limits.max_connections {
            tracing::debug!(%peer, max_connections = limits.max_connections, "prometheus exporter: connection refused");
            continue;
        }
        let (acceptor, scrape) = (acceptor.clone(), Arc::clone(&scrape));
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let scrape = Arc::clone(&scrape);
                async move { Ok::<_, Infallible>(scrape.answer(request).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout);
            let serve = async {
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await
                            }
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "prometheus exporter: TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "prometheus exporter: TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                }
            };
            match tokio::time::timeout(limits.request_timeout, serve).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "prometheus exporter: connection failed");
                }
                Err(_) => tracing::debug!(%peer, "prometheus exporter: connection closed at the request timeout"),
            }
        });
    }
}

struct Scrape {
    tree: TreeHandle,
    handle: PrometheusHandle,
    tokens: Option<ApiKeys>,
}

impl Scrape {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
        };
        if let Some(tokens) = &self.tokens {
            if let Err(why) = tokens.verify(request.headers()) {
                let mut response = reply(StatusCode::UNAUTHORIZED, format!("{why}\n"));
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
        if request.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into());
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
        }
        self.refresh_gauges().await;
        self.handle.run_upkeep();
        let mut response = reply(StatusCode::OK, self.handle.render());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        response
    }

    /// The gauges of current state, read now.
    async fn refresh_gauges(&self) {
        record_channel_metrics(self.tree.tunnel_registry());
        if let Ok(snapshot) = self.tree.snapshot().await {
            record_children(&snapshot);
        }
    }
}

/// `arbor_supervisor_children{supervisor}` and `arbor_supervisor_children_running{supervisor}` for every
/// supervisor of the tree.
fn record_children(node: &TreeSnapshot) {
    if node.kind != ChildKind::Worker {
        let running = node
            .children
            .iter()
            .filter(|c| c.status == arbor_actors::supervisor::ChildStatus::Running)
            .count();
        metrics::gauge!("arbor_supervisor_children", "supervisor" => node.path.clone())
            .set(node.children.len() as f64);
        metrics::gauge!("arbor_supervisor_children_running", "supervisor" => node.path.clone())
            .set(running as f64);
    }
    for child in &node.children {
        record_children(child);
    }
}
