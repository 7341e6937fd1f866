//! [`TreeHandle`]: everything a service does with its running tree.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_actors::activator::{
    Activator, ActivatorHandle, ActivatorInfo, ActivatorOptions, Backend, Singleton,
};
use arbor_actors::connection::{ConnectionConfig, ConnectionLease, ConnectionPool};
use arbor_actors::ractor::ActorId;
use arbor_actors::registry::Registry;
use arbor_actors::supervisor::{
    DynamicSupervisorHandle, StartSpec, SupervisorExit, SupervisorHandle, TreeSnapshot,
};
use arbor_actors::tunnel::{
    Subscriber, SubscriberRef, TunnelEntry, TunnelHandle, TunnelOptions, TunnelWorker, TunnelWorkerBuilder,
};
use serde::Serialize;
use tokio::sync::broadcast;

use super::events::{pump_tunnel, Pumps, TreeEvent};
use super::TreeError;

/// A registry entry of any of the tree's registries, for listings (`inspect registry`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistryRow {
    /// The registry's name (`app`, `connections`, `tunnels`, `activators`).
    pub registry: String,
    /// The key.
    pub key: String,
    /// The actor holding it.
    pub actor: String,
    /// Its value, as JSON.
    pub value: serde_json::Value,
}

pub(crate) struct TreeInner {
    pub(crate) name: String,
    pub(crate) root: SupervisorHandle,
    pub(crate) registry: Registry<serde_json::Value>,
    pub(crate) pool: ConnectionPool,
    pub(crate) connections: BTreeMap<String, ConnectionConfig>,
    pub(crate) tunnels: DynamicSupervisorHandle,
    pub(crate) tunnel_registry: Registry<TunnelEntry>,
    pub(crate) tunnel_handles: Mutex<HashMap<String, TunnelHandle>>,
    pub(crate) activators: DynamicSupervisorHandle,
    pub(crate) activator_registry: Registry<ActivatorInfo>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) dynamic: BTreeMap<String, DynamicSupervisorHandle>,
    pub(crate) events: broadcast::Sender<TreeEvent>,
    pub(crate) pumps: Mutex<Pumps>,
    /// Where the introspection server listens while it runs.
    #[cfg(feature = "introspection")]
    pub(crate) introspection: Arc<Mutex<Option<crate::introspect::IntrospectionAddrs>>>,
}

impl Drop for TreeInner {
    fn drop(&mut self) {
        self.pumps
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }
}

/// A running tree. Cheap to clone; every clone is the same tree.
#[derive(Clone)]
pub struct TreeHandle {
    pub(crate) inner: Arc<TreeInner>,
}

impl fmt::Debug for TreeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TreeHandle")
            .field("name", &self.inner.name)
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl TreeHandle {
    /// The tree's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The root supervisor.
    pub fn root(&self) -> &SupervisorHandle {
        &self.inner.root
    }

    /// The application's registry (register your actors with any JSON metadata; entries vanish with them).
    pub fn registry(&self) -> &Registry<serde_json::Value> {
        &self.inner.registry
    }

    /// The registry of the tree's tunnel workers and channels.
    pub fn tunnel_registry(&self) -> &Registry<TunnelEntry> {
        &self.inner.tunnel_registry
    }

    /// The registry of the tree's activators.
    pub fn activator_registry(&self) -> &Registry<ActivatorInfo> {
        &self.inner.activator_registry
    }

    /// Every entry of every registry of the tree whose key starts with `prefix`, values as JSON.
    pub fn registry_entries(&self, prefix: &str) -> Vec<RegistryRow> {
        fn rows<V: Clone + Serialize + Send + Sync + 'static>(
            out: &mut Vec<RegistryRow>,
            registry: &Registry<V>,
            prefix: &str,
        ) {
            out.extend(registry.select_prefix(prefix).into_iter().map(|e| RegistryRow {
                registry: registry.name().to_string(),
                key: e.key,
                actor: e.actor.get_id().to_string(),
                value: serde_json::to_value(&e.value).unwrap_or(serde_json::Value::Null),
            }));
        }
        let mut out = Vec::new();
        rows(&mut out, &self.inner.registry, prefix);
        rows(&mut out, self.inner.pool.registry(), prefix);
        rows(&mut out, &self.inner.tunnel_registry, prefix);
        rows(&mut out, &self.inner.activator_registry, prefix);
        out
    }

    /// A snapshot of the whole tree, its root named after the tree.
    pub async fn snapshot(&self) -> Result<TreeSnapshot, TreeError> {
        let mut snapshot = self.inner.root.snapshot().await?;
        let old = snapshot.id.clone();
        rename_root(&mut snapshot, &old, &self.inner.name);
        snapshot.id = self.inner.name.clone();
        Ok(snapshot)
    }

    /// Every start, exit, restart, escalation, reconnect, rebalance, checkpoint and leadership change from now
    /// on. A subscriber more than 4,096 events behind gets `Lagged`.
    pub fn subscribe_events(&self) -> broadcast::Receiver<TreeEvent> {
        self.inner.events.subscribe()
    }

    /// Where the tree's introspection server listens, while it runs (see
    /// [`TreeBuilder::introspection`](super::TreeBuilder::introspection)); `None` when it is not configured or
    /// not running.
    #[cfg(feature = "introspection")]
    pub fn introspection_addrs(&self) -> Option<crate::introspect::IntrospectionAddrs> {
        *self.inner.introspection.lock().unwrap_or_else(|p| p.into_inner())
    }

    // --- connections ---

    /// The tree's connection pool.
    pub fn pool(&self) -> &ConnectionPool {
        &self.inner.pool
    }

    /// A lease on a pooled connection for `config` (shared with every other lease on the same target and
    /// credentials).
    pub async fn acquire(&self, config: ConnectionConfig) -> Result<ConnectionLease, TreeError> {
        Ok(self.inner.pool.acquire(config).await?)
    }

    /// A lease on the connection named `name` in the configuration.
    pub async fn connection(&self, name: &str) -> Result<ConnectionLease, TreeError> {
        let config = self.named_connection(name)?;
        self.acquire(config).await
    }

    pub(crate) fn named_connection(&self, name: &str) -> Result<ConnectionConfig, TreeError> {
        self.inner
            .connections
            .get(name)
            .cloned()
            .ok_or_else(|| TreeError::UnknownConnection {
                name: name.to_string(),
                known: self.inner.connections.keys().cloned().collect(),
            })
    }

    // --- tunnels ---

    /// A tunnel worker to start under the tree: it reaches the service through the tree's pool (`target`, a
    /// [`ConnectionConfig`]) or, with feature `kafka`, consumes a Kafka topic (`target`, a
    /// [`KafkaOptions`](arbor_actors::tunnel::kafka::KafkaOptions)); it registers in the tree's tunnel
    /// registry, and its events join the tree's. Name its subscriber, then [`start`](TreeTunnel::start) it.
    pub fn tunnel(&self, options: TunnelOptions, target: impl Into<TunnelTarget>) -> TreeTunnel {
        let builder = TunnelWorker::builder(options.clone()).registry(self.inner.tunnel_registry.clone());
        let (builder, error) = match target.into() {
            TunnelTarget::Service(target) => (builder.pool(self.inner.pool.clone(), target), None),
            #[cfg(feature = "kafka")]
            TunnelTarget::Kafka(kafka) => {
                match arbor_actors::tunnel::kafka::KafkaSource::new(kafka, &options) {
                    Ok(source) => (builder.source(Arc::new(source)), None),
                    // Reported by `start`, where every other error of the worker is.
                    Err(err) => (builder, Some(err)),
                }
            }
        };
        TreeTunnel {
            tree: self.clone(),
            builder,
            error,
        }
    }

    /// The workers started through the tree, by tunnel id.
    pub fn tunnels(&self) -> BTreeMap<String, TunnelHandle> {
        self.lock_tunnels()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn lock_tunnels(&self) -> std::sync::MutexGuard<'_, HashMap<String, TunnelHandle>> {
        self.inner
            .tunnel_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stops a tunnel worker gracefully (checkpoints flushed, session shut down) and keeps it down.
    pub async fn stop_tunnel(&self, tunnel_id: &str, timeout: Duration) -> Result<(), TreeError> {
        let handle = self
            .lock_tunnels()
            .remove(tunnel_id)
            .ok_or_else(|| TreeError::UnknownTunnel {
                tunnel_id: tunnel_id.to_string(),
            })?;
        let stopped = handle.shutdown(timeout).await;
        self.inner
            .pumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release_tunnel(tunnel_id);
        Ok(stopped?)
    }

    // --- activators ---

    /// Starts an activator for `singleton` under the tree (permanent: restarted if it crashes), electing
    /// through the tree's backend. Returns the incarnation running now; [`activator`](Self::activator) finds
    /// the current one later.
    pub async fn start_activator<S: Singleton + Clone>(
        &self,
        singleton: S,
        options: ActivatorOptions,
    ) -> Result<ActivatorHandle, TreeError> {
        let name = options.name().to_string();
        let options = options.registry(self.inner.activator_registry.clone());
        let spec = Activator::child_spec(name.clone(), singleton, options, Arc::clone(&self.inner.backend));
        let child = self.inner.activators.start_child(spec).await?;
        let cell = child.cell()?;
        ActivatorHandle::from_cell(name.clone(), cell).ok_or(TreeError::UnknownActivator { name })
    }

    /// Stops the activator of `name` started through this tree and keeps it down: it resigns (its `Shutdown`
    /// callback runs, leadership passes to another activator of the name), within its child spec's shutdown.
    /// [`UnknownActivator`](TreeError::UnknownActivator) if none of that name runs under the tree.
    pub async fn stop_activator(&self, name: &str) -> Result<(), TreeError> {
        let ids: Vec<String> = self
            .inner
            .activators
            .which_children()
            .await?
            .into_iter()
            .filter(|child| child.id.rsplit_once('#').map(|(spec, _)| spec) == Some(name))
            .map(|child| child.id)
            .collect();
        if ids.is_empty() {
            return Err(TreeError::UnknownActivator {
                name: name.to_string(),
            });
        }
        for id in ids {
            self.inner.activators.terminate_child(&id).await?;
        }
        Ok(())
    }

    /// The running activator of `name` started through this tree, if any.
    pub fn activator(&self, name: &str) -> Option<ActivatorHandle> {
        self.inner
            .activator_registry
            .select_prefix(&format!("activator/{name}/"))
            .into_iter()
            .filter(|e| e.value.name == name && e.value.node_id == self.inner.backend.node_id())
            .find_map(|e| ActivatorHandle::from_cell(name, e.actor))
    }

    // --- the application's children ---

    /// The named dynamic supervisor (from the configuration or [`TreeBuilder::dynamic`](super::TreeBuilder::dynamic)).
    pub fn supervisor(&self, name: &str) -> Result<&DynamicSupervisorHandle, TreeError> {
        self.inner
            .dynamic
            .get(name)
            .ok_or_else(|| TreeError::UnknownSupervisor {
                name: name.to_string(),
                known: self.inner.dynamic.keys().cloned().collect(),
            })
    }

    /// Starts a child under the named dynamic supervisor; returns its stable handle (typed when the spec is).
    pub async fn start_child<S: StartSpec>(&self, supervisor: &str, spec: S) -> Result<S::Handle, TreeError> {
        Ok(self.supervisor(supervisor)?.start_child(spec).await?)
    }

    // --- the end ---

    /// Stops the tree: children in reverse start order — the application's children first, then activators
    /// (leadership resigned), tunnel workers (checkpoints flushed, sessions shut down), connections, and the
    /// registries last. Waits at most `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), TreeError> {
        self.inner.root.shutdown(deadline).await?;
        Ok(())
    }

    /// Waits until the tree has stopped and says how: a service's `main` exits non-zero when
    /// [`is_failure`](SupervisorExit::is_failure).
    pub async fn wait(&self) -> Result<SupervisorExit, TreeError> {
        Ok(self.inner.root.wait().await?)
    }

    /// The actors of the tree's own parts, for tests and tools: the root's children by id.
    pub async fn parts(&self) -> Result<BTreeMap<String, Option<ActorId>>, TreeError> {
        Ok(self
            .inner
            .root
            .which_children()
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c.actor_id()))
            .collect())
    }
}

/// Puts `name` where `old` starts every path (the root's actor id, before: ractor names are process-global,
/// so the tree's root has none).
fn rename_root(node: &mut TreeSnapshot, old: &str, name: &str) {
    if let Some(rest) = node.path.strip_prefix(old) {
        node.path = format!("{name}{rest}");
    }
    for child in &mut node.children {
        rename_root(child, old, name);
    }
}

/// What a tree's tunnel worker consumes (see [`TreeHandle::tunnel`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TunnelTarget {
    /// A tunnel service (arbor's protocol), through the tree's connection pool.
    Service(ConnectionConfig),
    /// A Kafka topic (feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(arbor_actors::tunnel::kafka::KafkaOptions),
}

impl From<ConnectionConfig> for TunnelTarget {
    fn from(target: ConnectionConfig) -> Self {
        TunnelTarget::Service(target)
    }
}

#[cfg(feature = "kafka")]
impl From<arbor_actors::tunnel::kafka::KafkaOptions> for TunnelTarget {
    fn from(kafka: arbor_actors::tunnel::kafka::KafkaOptions) -> Self {
        TunnelTarget::Kafka(kafka)
    }
}

/// A tunnel worker about to start under a tree (see [`TreeHandle::tunnel`]).
#[must_use]
pub struct TreeTunnel {
    tree: TreeHandle,
    builder: TunnelWorkerBuilder,
    /// A target refused before the start (bad Kafka options): `start` returns it.
    error: Option<arbor_actors::tunnel::TunnelError>,
}

impl fmt::Debug for TreeTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TreeTunnel")
            .field("builder", &self.builder)
            .finish()
    }
}

impl TreeTunnel {
    /// Hand the records to this actor (see [`TunnelWorkerBuilder::subscriber`]).
    pub fn subscriber(mut self, subscriber: SubscriberRef) -> Self {
        self.builder = self.builder.subscriber(subscriber);
        self
    }

    /// Run `subscriber` in an actor the worker supervises (see [`TunnelWorkerBuilder::run_subscriber`]).
    pub fn run_subscriber<S: Subscriber>(mut self, subscriber: S) -> Self {
        self.builder = self.builder.run_subscriber(subscriber);
        self
    }

    /// Applies a subscriber kind registered with the tree's builder.
    pub(crate) fn map(mut self, f: impl FnOnce(TunnelWorkerBuilder) -> TunnelWorkerBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }

    /// Starts the worker under the tree's tunnel supervisor.
    pub async fn start(self) -> Result<TunnelHandle, TreeError> {
        if let Some(err) = self.error {
            return Err(err.into());
        }
        let handle = self.builder.start_under(&self.tree.inner.tunnels).await?;
        let tunnel_id = handle.tunnel_id().to_string();
        let pump = pump_tunnel(tunnel_id.clone(), handle.events(), self.tree.inner.events.clone());
        self.tree
            .inner
            .pumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_tunnel(tunnel_id.clone(), pump);
        self.tree.lock_tunnels().insert(tunnel_id, handle.clone());
        Ok(handle)
    }
}
