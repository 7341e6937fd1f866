//! [`TreeBuilder`]: the tree in code, or from a [`TreeConfig`] — the two are the same thing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_actors::activator::{ActivatorInfo, ActivatorOptions, Backend, LocalBackend, Singleton};
use arbor_actors::connection::{ConnectionConfig, ConnectionPool, PoolOptions};
use arbor_actors::registry::Registry;
use arbor_actors::supervisor::{
    ChildSpec, DynamicSupervisor, EventSink, Supervisor, SupervisorHandle, SupervisorOptions,
};
use arbor_actors::tunnel::{Batch, Subscriber, TunnelOptions, TunnelWorkerBuilder};
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::config::{BackendConfig, DynamicConfig, SingletonConfig, TreeConfig, TunnelConfig};
use super::events::{pump_connections, pump_leadership, pump_supervisors, Pumps};
use super::handle::{TreeHandle, TreeInner};
use super::TreeError;

/// How many events a slow subscriber of [`TreeHandle::subscribe_events`] may fall behind.
const EVENT_BUFFER: usize = 4096;

type SubscriberKind = Arc<dyn Fn(TunnelWorkerBuilder) -> TunnelWorkerBuilder + Send + Sync>;
type SingletonKind =
    Arc<dyn Fn(TreeHandle, ActivatorOptions) -> BoxFuture<'static, Result<(), TreeError>> + Send + Sync>;

/// Builds a tree: a root supervisor (one_for_one by default) over, in start order, the registries, the
/// connection pool, a dynamic supervisor of tunnel workers, a dynamic supervisor of activators, the
/// application's child specs, and its named dynamic supervisors. Everything but the child specs can also
/// come from a TOML file ([`Tree::from_file`](super::Tree::from_file)).
#[must_use]
pub struct TreeBuilder {
    config: TreeConfig,
    children: Vec<ChildSpec>,
    subscriber_kinds: HashMap<String, SubscriberKind>,
    singleton_kinds: HashMap<String, SingletonKind>,
    shared_activators: Option<Registry<ActivatorInfo>>,
}

impl fmt::Debug for TreeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TreeBuilder")
            .field("config", &self.config)
            .field(
                "children",
                &self.children.iter().map(ChildSpec::id).collect::<Vec<_>>(),
            )
            .field(
                "subscriber_kinds",
                &self.subscriber_kinds.keys().collect::<Vec<_>>(),
            )
            .field(
                "singleton_kinds",
                &self.singleton_kinds.keys().collect::<Vec<_>>(),
            )
            .field("shared_activators", &self.shared_activators.is_some())
            .finish()
    }
}

/// A subscriber that logs a line per batch and acknowledges it (subscriber kind `log`).
#[derive(Debug, Clone, Copy)]
pub struct LogSubscriber;

impl Subscriber for LogSubscriber {
    async fn handle(&self, batch: &Batch) -> Result<(), arbor_actors::supervisor::BoxError> {
        tracing::info!(
            tunnel = %batch.tunnel_id,
            channel = batch.channel_id,
            records = batch.records.len(),
            first = batch.first_sequence(),
            "records delivered"
        );
        Ok(())
    }
}

/// A subscriber that acknowledges every batch and does nothing else (subscriber kind `discard`).
#[derive(Debug, Clone, Copy)]
pub struct DiscardSubscriber;

impl Subscriber for DiscardSubscriber {
    async fn handle(&self, _: &Batch) -> Result<(), arbor_actors::supervisor::BoxError> {
        Ok(())
    }
}

impl TreeBuilder {
    pub(crate) fn from_config(config: TreeConfig) -> Self {
        let mut builder = TreeBuilder {
            config,
            children: Vec::new(),
            subscriber_kinds: HashMap::new(),
            singleton_kinds: HashMap::new(),
            shared_activators: None,
        };
        builder = builder
            .subscriber_kind("log", |b| b.run_subscriber(LogSubscriber))
            .subscriber_kind("discard", |b| b.run_subscriber(DiscardSubscriber));
        builder
    }

    /// The configuration this builder stands for (what the same tree's TOML file would hold).
    pub fn config(&self) -> &TreeConfig {
        &self.config
    }

    /// Names the tree (default `arbor`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The root supervisor's flags (default one_for_one, 3 restarts in 5 s).
    pub fn root(mut self, options: SupervisorOptions) -> Self {
        self.config.root = options;
        self
    }

    /// The connection pool's options (default: no linger).
    pub fn pool(mut self, options: PoolOptions) -> Self {
        self.config.pool = options;
        self
    }

    /// Declares a named connection (what configured tunnels and [`TreeHandle::connection`] refer to).
    pub fn connection(mut self, name: impl Into<String>, config: ConnectionConfig) -> Self {
        self.config.connections.insert(name.into(), config);
        self
    }

    /// A tunnel worker started with the tree, on the named connection, with a registered subscriber kind.
    pub fn tunnel(
        mut self,
        connection: impl Into<String>,
        subscriber: impl Into<String>,
        options: TunnelOptions,
    ) -> Self {
        self.config.tunnels.push(TunnelConfig::service(
            connection.into(),
            subscriber.into(),
            options,
        ));
        self
    }

    /// A tunnel worker started with the tree, consuming the Kafka topic `kafka` names, with a registered
    /// subscriber kind (feature `kafka`).
    #[cfg(feature = "kafka")]
    pub fn kafka_tunnel(
        mut self,
        kafka: arbor_actors::tunnel::kafka::KafkaOptions,
        subscriber: impl Into<String>,
        options: TunnelOptions,
    ) -> Self {
        self.config
            .tunnels
            .push(TunnelConfig::kafka(kafka, subscriber.into(), options));
        self
    }

    /// Registers a subscriber kind for configured tunnels: `apply` gives the worker its subscriber
    /// (`|b| b.run_subscriber(MySubscriber)`). `log` and `discard` are built in.
    pub fn subscriber_kind(
        mut self,
        kind: impl Into<String>,
        apply: impl Fn(TunnelWorkerBuilder) -> TunnelWorkerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.subscriber_kinds.insert(kind.into(), Arc::new(apply));
        self
    }

    /// Elects through etcd instead of within the process (needs feature `etcd`).
    pub fn activator_backend(mut self, backend: BackendConfig) -> Self {
        self.config.activators.backend = backend;
        self
    }

    /// Elects and publishes activators through `registry` rather than a registry of the tree's own, with the
    /// local backend: trees of one process that share it elect one leader per singleton between them, as
    /// trees in separate processes do through etcd. Each tree still sees only its own activators
    /// ([`TreeHandle::activator`], leadership events).
    pub fn activator_registry(mut self, registry: Registry<ActivatorInfo>) -> Self {
        self.shared_activators = Some(registry);
        self
    }

    /// Registers a singleton kind for configured activators.
    pub fn singleton_kind<S: Singleton + Clone>(mut self, kind: impl Into<String>, singleton: S) -> Self {
        let start: SingletonKind = Arc::new(move |tree: TreeHandle, options: ActivatorOptions| {
            let singleton = singleton.clone();
            Box::pin(async move { tree.start_activator(singleton, options).await.map(|_| ()) })
        });
        self.singleton_kinds.insert(kind.into(), start);
        self
    }

    /// An activator started with the tree, of a registered singleton kind.
    pub fn activator(mut self, name: impl Into<String>, kind: impl Into<String>) -> Self {
        self.config.activators.singletons.push(SingletonConfig {
            name: name.into(),
            kind: kind.into(),
            timers_on_followers: false,
        });
        self
    }

    /// Adds a named dynamic supervisor for the application's children.
    pub fn dynamic(mut self, config: DynamicConfig) -> Self {
        self.config.dynamic.push(config);
        self
    }

    /// Runs the introspection server (gRPC `arbor.inspect.v1`, health, reflection; optional TLS, token and
    /// Prometheus exporter) as the root's last child: it starts once the tree is up and stops first. Its
    /// journal records the tree's events from before the first child starts. See [`crate::introspect`].
    #[cfg(feature = "introspection")]
    pub fn introspection(mut self, options: crate::introspect::IntrospectionOptions) -> Self {
        self.config.introspection = Some(options);
        self
    }

    /// Adds one of the application's children, started after the tree's own parts, in order.
    pub fn child(mut self, spec: impl Into<ChildSpec>) -> Self {
        self.children.push(spec.into());
        self
    }

    /// Starts the tree, then the configured tunnel workers and activators.
    pub async fn start(self) -> Result<TreeHandle, TreeError> {
        let TreeBuilder {
            config,
            children,
            subscriber_kinds,
            singleton_kinds,
            shared_activators,
        } = self;
        config.check("<builder>")?;
        for (i, t) in config.tunnels.iter().enumerate() {
            if !subscriber_kinds.contains_key(&t.subscriber) {
                return Err(TreeError::UnknownKind {
                    field: t.path(i, "subscriber"),
                    kind: t.subscriber.clone(),
                    known: subscriber_kinds.keys().cloned().collect(),
                });
            }
        }
        for (i, s) in config.activators.singletons.iter().enumerate() {
            if !singleton_kinds.contains_key(&s.kind) {
                return Err(TreeError::UnknownKind {
                    field: format!("activators.singletons[{i}].kind"),
                    kind: s.kind.clone(),
                    known: singleton_kinds.keys().cloned().collect(),
                });
            }
        }

        let (supervisor_events, supervisor_rx) = broadcast::channel(EVENT_BUFFER);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sink = EventSink::new(config.name.clone(), supervisor_events);
        let registry = Registry::new("app");
        let tunnel_registry = Registry::new("tunnels");
        let activator_registry = shared_activators.unwrap_or_else(|| Registry::new("activators"));
        let pool = ConnectionPool::new(config.pool.clone());
        let backend = backend(&config, &activator_registry)?;

        let registries = Supervisor::builder()
            .events(sink.child("registry"))
            .child(registry.child_spec("app"))
            .child(tunnel_registry.child_spec("tunnels"))
            .child(activator_registry.child_spec("activators"))
            .child_spec("registry");
        let mut root = Supervisor::builder()
            .options(config.root)
            .events(sink.clone())
            .child(registries)
            .child(pool.child_spec("connections"))
            .child(
                DynamicSupervisor::builder()
                    .options(config.tunnel_supervisor)
                    .events(sink.child("tunnels"))
                    .child_spec("tunnels"),
            )
            .child(
                DynamicSupervisor::builder()
                    .options(config.activator_supervisor)
                    .events(sink.child("activators"))
                    .child_spec("activators"),
            )
            .children(children);
        for d in &config.dynamic {
            root = root.child(
                DynamicSupervisor::builder()
                    .options(d.options())
                    .events(sink.child(&d.name))
                    .child_spec(d.name.clone()),
            );
        }
        // The pumps subscribe before anything starts, so no event of the start is missed.
        let mut pumps = vec![
            pump_supervisors(supervisor_rx, events.clone()),
            pump_connections(pool.registry().clone(), events.clone()),
            pump_leadership(
                activator_registry.clone(),
                backend.node_id().to_string(),
                events.clone(),
            ),
        ];
        #[cfg(feature = "introspection")]
        let journal = config.introspection.as_ref().map(|options| {
            let (journal, task) = crate::introspect::Journal::start(
                events.subscribe(),
                options.replay_events,
                options.history_per_node,
            );
            pumps.push(task);
            journal
        });
        let root = match root.start().await {
            Ok(root) => root,
            Err(err) => {
                pumps.drain(..).for_each(|p| p.abort());
                return Err(err.into());
            }
        };
        // From here on the root runs: a step that fails stops it (and so everything started) before the error
        // is returned, so a failed start leaves no actor, task or port behind.
        let parts = async {
            let mut dynamic = BTreeMap::new();
            for d in &config.dynamic {
                dynamic.insert(d.name.clone(), root.child_dynamic_supervisor(&d.name).await?);
            }
            let tunnels = root.child_dynamic_supervisor("tunnels").await?;
            let activators = root.child_dynamic_supervisor("activators").await?;
            Ok::<_, TreeError>((dynamic, tunnels, activators))
        }
        .await;
        let (dynamic, tunnels, activators) = match parts {
            Ok(parts) => parts,
            Err(err) => {
                pumps.drain(..).for_each(|p| p.abort());
                stop_after_failed_start(&root, &config.name, &err).await;
                return Err(err);
            }
        };
        let tree = TreeHandle {
            inner: Arc::new(TreeInner {
                name: config.name.clone(),
                tunnels,
                activators,
                root,
                registry,
                pool,
                connections: config.connections.clone(),
                tunnel_registry,
                tunnel_handles: Mutex::new(HashMap::new()),
                activator_registry,
                backend,
                dynamic,
                events,
                pumps: Mutex::new(Pumps::new(pumps)),
                #[cfg(feature = "introspection")]
                introspection: Arc::default(),
            }),
        };
        let configured = async {
            #[cfg(feature = "introspection")]
            if let (Some(options), Some(journal)) = (&config.introspection, journal) {
                let spec = crate::introspect::IntrospectionServer::child_spec(
                    tree.clone(),
                    journal,
                    options.clone(),
                    Arc::clone(&tree.inner.introspection),
                );
                tree.inner.root.start_child(spec).await?;
            }
            for t in &config.tunnels {
                let target = t.target(&tree)?;
                let apply = Arc::clone(&subscriber_kinds[&t.subscriber]);
                let concurrency = t.subscriber_concurrency;
                tree.tunnel(t.options.clone(), target)
                    .map(|b| match concurrency {
                        Some(concurrency) => apply(b).subscriber_concurrency(concurrency),
                        None => apply(b),
                    })
                    .start()
                    .await?;
            }
            for s in &config.activators.singletons {
                let options =
                    ActivatorOptions::new(s.name.clone()).timers_on_followers(s.timers_on_followers);
                singleton_kinds[&s.kind](tree.clone(), options).await?;
            }
            Ok::<_, TreeError>(())
        }
        .await;
        if let Err(err) = configured {
            stop_after_failed_start(tree.root(), &config.name, &err).await;
            return Err(err);
        }
        tracing::info!(tree = %config.name, "tree started");
        Ok(tree)
    }
}

/// How long a tree whose start failed half-way is given to stop what it had started.
const FAILED_START_SHUTDOWN: Duration = Duration::from_secs(30);

/// Stops the root of a tree whose start failed after the root started: its children (the pool, workers,
/// activators, the introspection server and its ports) stop in reverse order, as in a shutdown.
async fn stop_after_failed_start(root: &SupervisorHandle, tree: &str, err: &TreeError) {
    tracing::error!(%tree, error = %err, "tree failed to start: stopping what it started");
    if let Err(stop) = root.shutdown(FAILED_START_SHUTDOWN).await {
        tracing::error!(
            %tree,
            error = %stop,
            waited = %humantime::format_duration(FAILED_START_SHUTDOWN),
            "tree that failed to start did not stop in time"
        );
    }
}

/// The tree's election backend. A local one is named after the tree (`<tree>@local-<pid>`), so trees sharing
/// an activator registry tell their activators apart.
fn backend(config: &TreeConfig, registry: &Registry<ActivatorInfo>) -> Result<Arc<dyn Backend>, TreeError> {
    match &config.activators.backend {
        BackendConfig::Local => {
            Ok(Arc::new(LocalBackend::new(registry.clone()).with_node_id(
                format!("{}@local-{}", config.name, std::process::id()),
            )))
        }
        #[cfg(feature = "etcd")]
        BackendConfig::Etcd(etcd) => {
            let mut options =
                arbor_actors::activator::EtcdOptions::new(etcd.endpoints.clone(), etcd.node_id.clone());
            if let Some(ttl) = etcd.ttl {
                options = options.ttl(ttl);
            }
            if let Some(prefix) = &etcd.prefix {
                options = options.prefix(prefix.clone());
            }
            Ok(Arc::new(arbor_actors::activator::EtcdBackend::new(options)?))
        }
        #[cfg(not(feature = "etcd"))]
        BackendConfig::Etcd(_) => Err(TreeError::FeatureMissing {
            field: "activators.backend.etcd".into(),
            feature: "etcd",
        }),
    }
}
