//! What a connection's actor and all its handles share: configuration, the prepared endpoint, TLS and auth,
//! and the watch every observer reads. It outlives any one actor, so handles keep working across supervisor
//! restarts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::actor::ConnectionMsg;
use super::auth::{AuthInterceptor, TokenSource};
use super::config::ConnectionConfig;
use super::error::ConnectionError;
use super::health::Health;
use super::state::{ConnectionSnapshot, ConnectivityState};
use super::tls::TlsSettings;

/// What the actor and every handle share; survives actor restarts so handles keep working.
pub(crate) struct Shared {
    pub(crate) config: Arc<ConnectionConfig>,
    /// The endpoint without keepalive (set per attempt: the interval may have been doubled).
    endpoint: Endpoint,
    pub(crate) tls: Option<TlsSettings>,
    pub(crate) interceptor: AuthInterceptor,
    pub(crate) token: Option<TokenSource>,
    pub(crate) hosts: Arc<[(String, u16)]>,
    pub(crate) tx: watch::Sender<ConnectionSnapshot>,
    pub(crate) actor: Mutex<Option<ActorRef<ConnectionMsg>>>,
    /// Set (before READY is published) the first time the connection is READY.
    pub(crate) ever_ready: AtomicBool,
    generation: AtomicU64,
    /// Bumped (under the watch's lock) when an actor starts a new life; an old life's late `Drop` must not
    /// overwrite the new life's state.
    pub(crate) life: AtomicU64,
    pub(crate) next_tied: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: Arc<ConnectionConfig>,
        endpoint: Endpoint,
        tls: Option<TlsSettings>,
        interceptor: AuthInterceptor,
        token: Option<TokenSource>,
    ) -> Arc<Shared> {
        let hosts: Arc<[(String, u16)]> = config
            .target
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.port))
            .collect();
        let (tx, _rx) = watch::channel(ConnectionSnapshot::initial(config.keepalive.map(|k| k.interval)));
        Arc::new(Shared {
            config,
            endpoint,
            tls,
            interceptor,
            token,
            hosts,
            tx,
            actor: Mutex::new(None),
            ever_ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            life: AtomicU64::new(0),
            next_tied: AtomicU64::new(0),
        })
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            interceptor: self.interceptor.clone(),
            service: self.config.health_service.clone(),
            check_timeout: self.config.health_check_timeout,
        }
    }

    /// The current actor, if one runs (a supervisor restart replaces it).
    pub(crate) fn actor(&self) -> Option<ActorRef<ConnectionMsg>> {
        self.actor.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn send(&self, msg: ConnectionMsg) {
        if let Some(a) = self.actor() {
            let _ = a.cast(msg);
        }
    }

    /// The current transport and its generation if READY.
    pub(crate) fn ready_transport(&self) -> Option<(Channel, u64)> {
        let snap = self.tx.borrow();
        match (&snap.channel, snap.state) {
            (Some(ch), ConnectivityState::Ready) => Some((ch.clone(), snap.generation)),
            _ => None,
        }
    }

    fn target(&self) -> String {
        self.config.target.to_string()
    }

    pub(crate) fn closed_error(&self) -> ConnectionError {
        ConnectionError::Closed {
            target: self.target(),
        }
    }

    /// Why a caller cannot have a transport now, given `snap`.
    pub(crate) fn not_ready(&self, snap: &ConnectionSnapshot) -> ConnectionError {
        match (snap.state, &snap.shutdown_reason) {
            (ConnectivityState::Shutdown, Some(reason)) => ConnectionError::Shutdown {
                target: self.target(),
                reason: reason.clone(),
            },
            (ConnectivityState::Shutdown, None) => ConnectionError::ActorGone {
                target: self.target(),
            },
            _ if snap.closed => self.closed_error(),
            (state, _) => ConnectionError::NotReady {
                target: self.target(),
                state,
                reason: snap.close_reason.clone(),
            },
        }
    }

    /// The endpoint with the keepalive interval in force.
    pub(crate) fn endpoint_for(&self, keepalive_interval: Option<Duration>) -> Endpoint {
        let mut ep = self.endpoint.clone();
        if let (Some(k), Some(interval)) = (self.config.keepalive, keepalive_interval) {
            ep = ep
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(k.while_idle);
        }
        ep
    }
}
