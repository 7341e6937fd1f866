//! Cluster singletons: exactly one leader per name, the others waiting to take over.
//!
//! An *activator* runs for a singleton name in every process of the cluster (usually as a child of each
//! process's supervision tree). An election backend picks one of them as the **leader**; the others are
//! **followers** that watch the leader and campaign again as soon as it dies, resigns, or loses its claim.
//! Until the backend has answered (for example while etcd is unreachable) an activator's role is
//! **unknown**, and it does not act.
//!
//! Your code implements [`Singleton`] (modelled on Stoker's activator callbacks): `init` builds a
//! per-process state, `on_event` receives [`ActivatorEvent`]s (`NowLeader { fencing_token }`,
//! `ClusterChange`, `Timer`, `Shutdown`, `LostLeadership`), and `next_timer_in` asks for the next `Timer`
//! (timers tick on the leader only unless [`ActivatorOptions::timers_on_followers`] is set).
//!
//! # The guarantee
//!
//! At most one activator of a name believes it is the leader at a time, *as far as the backend can tell*:
//!
//! - [`LocalBackend`]: the registry entry `activator/<name>` is the mutex; there is exactly one holder at a
//!   time inside the process. A killed leader is replaced as soon as the followers' monitors fire.
//! - `EtcdBackend` (feature `etcd`): leadership is an etcd election key under a lease with a TTL. A leader
//!   that cannot renew its lease steps down (`LostLeadership`) after half the TTL, before the lease can have
//!   expired on the server, so a new leader can only be elected after the old one has stopped acting, on
//!   condition that clocks run at roughly the same rate. A leader that is frozen (stopped process, long GC-like
//!   pause) cannot step down: use the fencing token.
//!
//! Every leadership gets a **fencing token** that is strictly greater than the previous leader's; hand it
//! to the resources you modify so they can reject a deposed leader's late writes. A graceful stop of the
//! leader runs `Shutdown` and then resigns at once, so a follower takes over without waiting for a timeout.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arbor_actors::activator::{
//!     Activator, ActivatorEvent, ActivatorInfo, ActivatorOptions, LocalBackend, Role, Singleton,
//! };
//! use arbor_actors::registry::Registry;
//! use ractor::ActorProcessingErr;
//!
//! struct Janitor;
//!
//! impl Singleton for Janitor {
//!     type State = u64;
//!     fn init(&self) -> Result<u64, ActorProcessingErr> {
//!         Ok(0)
//!     }
//!     async fn on_event(&self, runs: &mut u64, event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
//!         match event {
//!             ActivatorEvent::NowLeader { fencing_token } => println!("leading with token {fencing_token}"),
//!             ActivatorEvent::Timer => *runs += 1, // sweep something, once for the whole cluster
//!             _ => {}
//!         }
//!         Ok(())
//!     }
//!     fn next_timer_in(&self, _runs: &u64) -> Option<Duration> {
//!         Some(Duration::from_secs(60))
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::<ActivatorInfo>::new("activators");
//! registry.start().await?;
//! let backend = Arc::new(LocalBackend::new(registry));
//! let handle = Activator::start(Janitor, ActivatorOptions::new("janitor"), backend).await?;
//! assert_eq!(handle.dump().await?.role, Role::Leader); // the only activator of "janitor"
//! handle.shutdown(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```

mod actor;
mod backend;
mod callbacks;
#[cfg(feature = "etcd")]
mod etcd;
mod handle;
mod local;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell};

use actor::{ActivatorActor, ActivatorArgs};
pub use backend::{Backend, BackendError, BackendEvent, BoxFuture, Campaign, Candidacy, EventSink};
pub use callbacks::{ActivatorEvent, ClusterChange, Role, Singleton};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdBackend, EtcdOptions};
pub use handle::{ActivatorError, ActivatorHandle, ActivatorInfo};
pub use local::LocalBackend;

use crate::registry::Registry;
use crate::supervisor::{ChildSpec, Shutdown as SupervisorShutdown};

/// Registry key whose holder is the leader of `name` (local backend).
pub(crate) fn leader_key(name: &str) -> String {
    format!("activator/{name}")
}

/// Registry key prefix under which every activator of `name` publishes its [`ActivatorInfo`].
pub(crate) fn member_prefix(name: &str) -> String {
    format!("activator/{name}/")
}

/// Names become registry keys and etcd key segments: keep them to one printable segment.
pub(crate) fn validate_name(name: &str) -> Result<(), ActivatorError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 200 {
        "longer than 200 bytes"
    } else if name.contains('/') {
        "must not contain '/'"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(ActivatorError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Options of one activator.
#[derive(Clone)]
pub struct ActivatorOptions {
    pub(crate) name: String,
    pub(crate) timers_on_followers: bool,
    pub(crate) registry: Option<Registry<ActivatorInfo>>,
}

impl std::fmt::Debug for ActivatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivatorOptions")
            .field("name", &self.name)
            .field("timers_on_followers", &self.timers_on_followers)
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

impl ActivatorOptions {
    /// Options for the singleton `name` (one registry / etcd key segment: no `/`, no whitespace).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            timers_on_followers: false,
            registry: None,
        }
    }

    /// Deliver `Timer` events on followers too (default: leader only).
    pub fn timers_on_followers(mut self, yes: bool) -> Self {
        self.timers_on_followers = yes;
        self
    }

    /// Publish this activator's [`ActivatorInfo`] in `registry` under `activator/<name>/<identity>`. Without
    /// it, the backend's registry is used if it has one (the local backend does).
    pub fn registry(mut self, registry: Registry<ActivatorInfo>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The singleton name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Starting activators.
pub struct Activator;

impl Activator {
    /// Starts an unlinked activator (tests, or trees you manage yourself).
    pub async fn start<S: Singleton>(
        singleton: S,
        options: ActivatorOptions,
        backend: Arc<dyn Backend>,
    ) -> Result<ActivatorHandle, ActivatorError> {
        Activator::spawn(singleton, options, backend, None).await
    }

    /// Starts an activator linked to `supervisor` (what a `ChildSpec`'s start function does).
    pub async fn start_linked<S: Singleton>(
        singleton: S,
        options: ActivatorOptions,
        backend: Arc<dyn Backend>,
        supervisor: ActorCell,
    ) -> Result<ActivatorHandle, ActivatorError> {
        Activator::spawn(singleton, options, backend, Some(supervisor)).await
    }

    async fn spawn<S: Singleton>(
        singleton: S,
        options: ActivatorOptions,
        backend: Arc<dyn Backend>,
        supervisor: Option<ActorCell>,
    ) -> Result<ActivatorHandle, ActivatorError> {
        validate_name(&options.name)?;
        let name = options.name.clone();
        let args = ActivatorArgs {
            singleton,
            options,
            backend,
        };
        let spawned = match supervisor {
            Some(supervisor) => Actor::spawn_linked(None, ActivatorActor::<S>::new(), args, supervisor).await,
            None => Actor::spawn(None, ActivatorActor::<S>::new(), args).await,
        };
        // The join handle is not needed: `ActivatorHandle::shutdown` waits for the exit.
        let (actor, _join) = spawned.map_err(|e| ActivatorError::Spawn {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        Ok(ActivatorHandle::new(name, actor))
    }

    /// A child spec running an activator under a supervisor: a permanent worker whose shutdown timeout
    /// (10 s) leaves room for the `Shutdown` callback and an etcd resignation. Every (re)start uses a clone of
    /// `singleton`. Find the running activator with [`ActivatorHandle::from_cell`] or through the registry.
    pub fn child_spec<S: Singleton + Clone>(
        id: impl Into<String>,
        singleton: S,
        options: ActivatorOptions,
        backend: Arc<dyn Backend>,
    ) -> ChildSpec {
        ChildSpec::new(id, move |supervisor| {
            let singleton = singleton.clone();
            let options = options.clone();
            let backend = backend.clone();
            async move {
                let handle = Activator::start_linked(singleton, options, backend, supervisor).await?;
                Ok(handle.cell())
            }
        })
        .shutdown(SupervisorShutdown::Timeout(Duration::from_secs(10)))
    }
}
