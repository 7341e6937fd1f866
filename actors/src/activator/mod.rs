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
//!   time inside the process. It is held by the leader's *claim*, a child actor of the leader that lives until
//!   the leader has resigned (after its `Shutdown` callback) or died, so a stopping leader is never replaced
//!   early. A killed leader is replaced as soon as the followers' monitors fire.
//! - `EtcdBackend` (feature `etcd`): leadership is an etcd election key under a lease with a TTL. A leader
//!   that cannot renew its lease steps down (`LostLeadership`) after half the TTL, before the lease can have
//!   expired on the server, so a new leader can only be elected after the old one has stopped acting, on
//!   condition that clocks run at roughly the same rate. A leader that is frozen (stopped process, long GC-like
//!   pause) cannot step down while frozen: use the fencing token. On resuming it runs no leader callback
//!   before stepping down: every leader callback first checks that the claim is still within its renew deadline
//!   ([`Candidacy::leadership_valid_until`]).
//!
//! Every leadership gets a **fencing token** that is strictly greater than the previous leader's; hand it
//! to the resources you modify so they can reject a deposed leader's late writes. A graceful stop of the
//! leader runs `Shutdown` and then resigns at once, so a follower takes over without waiting for a timeout.
//! Candidates are not queued: when the leader dies under a supervisor that restarts it, the restarted
//! activator and the followers race for the leadership, and with the local backend the restarted one often
//! wins. Either way there is one leader and its token is larger.
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
#[cfg(feature = "etcd")]
mod etcd_options;
mod handle;
mod local;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell};

use actor::{ActivatorActor, ActivatorArgs};
pub use backend::{
    Backend, BackendError, BackendEvent, BackendOperation, BoxFuture, Campaign, Candidacy, EventSink,
};
pub use callbacks::{ActivatorEvent, ClusterChange, Role, Singleton};
#[cfg(feature = "etcd")]
pub use etcd::EtcdBackend;
#[cfg(feature = "etcd")]
pub use etcd_options::EtcdOptions;
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
    check_segment(name).map_err(|reason| ActivatorError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// What names and node ids must be: one visible key segment. Control characters break logs and keys;
/// bidirectional overrides (U+202E) and invisible characters (U+200B) make two different names look alike, or
/// a name look like another, in every log and dump that shows it.
pub(crate) fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        Err("must not be empty")
    } else if segment.len() > 200 {
        Err("longer than 200 bytes")
    } else if segment.contains('/') {
        Err("must not contain '/'")
    } else if segment.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must not contain whitespace or control characters")
    } else if segment.chars().any(is_invisible_or_bidi) {
        Err("must not contain bidirectional-override or invisible characters")
    } else {
        Ok(())
    }
}

/// Unicode format characters that change how text reads without being seen: bidi marks, embeddings,
/// overrides and isolates, zero-width characters, the BOM, soft hyphen, and other invisible formatters.
fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
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

/// Starting activators. The singleton name and the backend's node id must each be one visible key segment: not
/// empty, no `/`, no whitespace or control characters, no bidirectional-override or invisible characters
/// (U+202E, U+200B, ...): [`ActivatorError::InvalidName`], [`ActivatorError::InvalidNodeId`].
#[derive(Debug)]
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
        check_segment(backend.node_id()).map_err(|reason| ActivatorError::InvalidNodeId {
            node_id: backend.node_id().to_string(),
            reason,
        })?;
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
        let (actor, _join) = spawned.map_err(|source| ActivatorError::Spawn {
            name: name.clone(),
            source,
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
