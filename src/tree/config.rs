//! The whole tree as one document: [`TreeConfig`], read from TOML with [`TreeConfig::from_file`] or
//! [`TreeConfig::from_toml`]. Unknown keys are errors, and every error names the file, the field's path and
//! what was expected.
//!
//! ```toml
//! name = "orders"
//!
//! [root]                      # the root supervisor
//! strategy = "one_for_one"
//! max_restarts = 3
//! period = "10s"
//!
//! [pool]                      # the connection pool
//! linger = "30s"
//!
//! [connections.tunnels]       # named connections (what tunnels name in `connection`)
//! connection_string = "grpc://127.0.0.1:7700?disableTls=true"
//!
//! [[tunnels]]                 # tunnel workers started with the tree
//! connection = "tunnels"
//! subscriber = "log"          # a kind registered with the builder; "log" and "discard" are built in
//! subscriber_concurrency = "per_channel"  # "one" (the default), "per_channel", or a pool of N batches
//! [tunnels.options]
//! tunnel_id = "t-1234"
//! heartbeat_interval = "10s"
//!
//! [[tunnels]]                 # a worker consuming a Kafka topic instead (feature `kafka`)
//! source = "kafka"
//! subscriber = "log"
//! [tunnels.options]
//! tunnel_id = "orders"        # the worker's name here; the topic is kafka.topic
//! [tunnels.kafka]             # KafkaOptions: also tls, sasl, properties (any librdkafka property), revoke_wait
//! bootstrap_servers = ["127.0.0.1:9092"]
//! topic = "orders"
//! group_id = "billing"
//! ```
//!
//! Tunnels can also be named tables instead of an array (one form per document): the name is the worker's
//! `tunnel_id` unless `options` gives one, and errors name the tunnel (`tunnels.orders.kafka.topic`).
//!
//! ```toml
//! [tunnels.orders]
//! source = "kafka"
//! subscriber = "log"
//! [tunnels.orders.kafka]
//! bootstrap_servers = ["127.0.0.1:9092"]
//! topic = "orders"
//! group_id = "billing"
//!
//! [tunnels.payments]
//! connection = "tunnels"
//! subscriber = "log"
//! [tunnels.payments.options]
//! tunnel_id = "t-1234"        # the service's id for it
//! ```
//!
//! The other sections:
//!
//! ```toml
//!
//! [activators.backend]        # "local" (the default) or etcd
//! etcd = { endpoints = ["127.0.0.1:2379"], node_id = "host-1", ttl = "10s" }
//!
//! [[activators.singletons]]   # activators started with the tree
//! name = "janitor"
//! kind = "janitor"            # a kind registered with the builder
//!
//! [[dynamic]]                 # named dynamic supervisors for your own children
//! name = "jobs"
//! max_children = 1000
//! max_restarts = 3            # within period, per child ("per_child", the default) or for the whole
//! period = "5s"               # supervisor (intensity_scope = "supervisor")
//!
//! [introspection]             # the gRPC introspection server (feature `introspection`; off without this table)
//! listen = "127.0.0.1:50052"
//! token_file = "inspect.tokens"
//! [introspection.prometheus]  # and the Prometheus exporter
//! listen = "127.0.0.1:9464"
//! [introspection.connections] # bounds on both listeners (ConnectionLimits; every key optional)
//! max_connections = 1024
//! request_timeout = "60s"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arbor_actors::connection::{ConnectionConfig, PoolOptions};
use arbor_actors::supervisor::{DynamicSupervisorOptions, IntensityScope, SupervisorOptions};
use arbor_actors::tunnel::{SubscriberConcurrency, TunnelOptions};
use serde::{Deserialize, Deserializer};

/// The whole tree. Every section is optional; missing fields take the defaults their types document.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TreeConfig {
    /// The tree's name: the root supervisor's label in snapshots and events (default `arbor`).
    pub name: String,
    /// The root supervisor's flags (default one_for_one, 3 restarts in 5 s).
    pub root: SupervisorOptions,
    /// The connection pool.
    pub pool: PoolOptions,
    /// The dynamic supervisor of tunnel workers.
    pub tunnel_supervisor: DynamicSupervisorOptions,
    /// The dynamic supervisor of activators.
    pub activator_supervisor: DynamicSupervisorOptions,
    /// Named connections: what tunnels refer to.
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Tunnel workers started with the tree: `[[tunnels]]` entries, or `[tunnels.NAME]` tables (in name order).
    #[serde(deserialize_with = "tunnels")]
    pub tunnels: Vec<TunnelConfig>,
    /// Activators (cluster singletons).
    pub activators: ActivatorsConfig,
    /// Named dynamic supervisors for the application's own children.
    pub dynamic: Vec<DynamicConfig>,
    /// The introspection server, started with the tree when set (default none).
    #[cfg(feature = "introspection")]
    pub introspection: Option<crate::introspect::IntrospectionOptions>,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            name: "arbor".into(),
            root: SupervisorOptions::default(),
            pool: PoolOptions::default(),
            tunnel_supervisor: DynamicSupervisorOptions::default().intensity(10, Duration::from_secs(60)),
            activator_supervisor: DynamicSupervisorOptions::default(),
            connections: BTreeMap::new(),
            tunnels: Vec::new(),
            activators: ActivatorsConfig::default(),
            dynamic: Vec::new(),
            #[cfg(feature = "introspection")]
            introspection: None,
        }
    }
}

/// A tunnel worker started with the tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TunnelConfig {
    /// Where the worker reads: arbor's tunnel service (`"service"`, the default) or a Kafka topic
    /// (`"kafka"`, feature `kafka`).
    #[serde(default)]
    pub source: TunnelSourceKind,
    /// The named connection to the tunnel service (a key of `connections`); source `"service"` only.
    #[serde(default)]
    pub connection: Option<String>,
    /// The brokers, topic and consumer group (the `[tunnels.kafka]` table); source `"kafka"` only.
    #[cfg(feature = "kafka")]
    #[serde(default)]
    pub kafka: Option<arbor_actors::tunnel::kafka::KafkaOptions>,
    /// Accepted so that the check can say which feature is missing, rather than "unknown field".
    #[cfg(not(feature = "kafka"))]
    #[serde(default)]
    kafka: Option<serde::de::IgnoredAny>,
    /// The subscriber kind: `log`, `discard`, or one registered with
    /// [`TreeBuilder::subscriber_kind`](super::TreeBuilder::subscriber_kind).
    pub subscriber: String,
    /// How many batches the subscriber processes at once: `"one"` (one batch at a time across all channels),
    /// `"per_channel"` (each channel's batch as soon as it is read), or a number N (a pool of N). Unset: what
    /// the kind says (`one` for `log` and `discard`). Whatever the choice, a channel never has two batches in
    /// flight. Only for kinds that run a [`Subscriber`](arbor_actors::tunnel::Subscriber); a kind that hands
    /// the records to an actor of its own fails the start naming this key.
    #[serde(default, deserialize_with = "subscriber_concurrency")]
    pub subscriber_concurrency: Option<SubscriberConcurrency>,
    /// The worker's options (`tunnel_id` is required, but for a named tunnel, whose name it defaults to).
    #[serde(default)]
    pub options: TunnelOptions,
    /// The name of a `[tunnels.NAME]` table: where errors point.
    #[serde(skip)]
    name: Option<String>,
}

impl TunnelConfig {
    pub(crate) fn service(connection: String, subscriber: String, options: TunnelOptions) -> Self {
        TunnelConfig {
            source: TunnelSourceKind::Service,
            connection: Some(connection),
            kafka: None,
            subscriber,
            subscriber_concurrency: None,
            options,
            name: None,
        }
    }

    #[cfg(feature = "kafka")]
    pub(crate) fn kafka(
        kafka: arbor_actors::tunnel::kafka::KafkaOptions,
        subscriber: String,
        options: TunnelOptions,
    ) -> Self {
        TunnelConfig {
            source: TunnelSourceKind::Kafka,
            connection: None,
            kafka: Some(kafka),
            subscriber,
            subscriber_concurrency: None,
            options,
            name: None,
        }
    }

    /// Where a field of this tunnel is in the document: `tunnels.NAME.field`, or `tunnels[index].field`.
    pub(crate) fn path(&self, index: usize, field: &str) -> String {
        match &self.name {
            Some(name) => format!("tunnels.{name}.{field}"),
            None => format!("tunnels[{index}].{field}"),
        }
    }

    /// Where the worker reads, once the config was checked.
    pub(crate) fn target(&self, tree: &super::TreeHandle) -> Result<super::TunnelTarget, super::TreeError> {
        #[cfg(feature = "kafka")]
        if let (TunnelSourceKind::Kafka, Some(kafka)) = (self.source, &self.kafka) {
            return Ok(kafka.clone().into());
        }
        let name = self.connection.as_deref().unwrap_or_default();
        Ok(tree.named_connection(name)?.into())
    }

    /// The source and what it needs agree: a known `connection` for the service, a valid `[tunnels.kafka]`
    /// table (and the feature) for Kafka, never both.
    fn check_source(
        &self,
        connections: &BTreeMap<String, ConnectionConfig>,
        file: &str,
        index: usize,
    ) -> Result<(), ConfigError> {
        let refuse = |field: &str, message: String| {
            Err(ConfigError::Inconsistent {
                file: file.to_string(),
                path: self.path(index, field),
                message,
            })
        };
        match (self.source, &self.connection) {
            (TunnelSourceKind::Service, None) => refuse(
                "connection",
                "is required (the named connection to the tunnel service)".into(),
            ),
            (TunnelSourceKind::Service, Some(_)) if self.kafka.is_some() => refuse(
                "kafka",
                "is for source = \"kafka\" (this tunnel's source is the tunnel service)".into(),
            ),
            (TunnelSourceKind::Service, Some(name)) if !connections.contains_key(name) => refuse(
                "connection",
                format!(
                    "names connection {name:?}, which is not under [connections] (have: {:?})",
                    connections.keys().collect::<Vec<_>>()
                ),
            ),
            (TunnelSourceKind::Service, Some(_)) => Ok(()),
            (TunnelSourceKind::Kafka, Some(_)) => refuse(
                "connection",
                "is for the tunnel service (this tunnel's source is kafka: brokers go in [tunnels.kafka])"
                    .into(),
            ),
            (TunnelSourceKind::Kafka, None) => self.check_kafka(&refuse),
        }
    }

    #[cfg(feature = "kafka")]
    fn check_kafka(
        &self,
        refuse: &dyn Fn(&str, String) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        match &self.kafka {
            None => refuse(
                "kafka",
                "is required for source = \"kafka\" (bootstrap_servers, topic, group_id)".into(),
            ),
            Some(kafka) => kafka.validate().or_else(|e| refuse("kafka", e.to_string())),
        }
    }

    #[cfg(not(feature = "kafka"))]
    fn check_kafka(
        &self,
        refuse: &dyn Fn(&str, String) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        refuse(
            "source",
            "\"kafka\" needs arbor built with the `kafka` feature".into(),
        )
    }
}

/// `tunnels`: an array of tables (`[[tunnels]]`), or a table of named tables (`[tunnels.NAME]`).
fn tunnels<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<TunnelConfig>, D::Error> {
    struct Tunnels;
    impl<'de> serde::de::Visitor<'de> for Tunnels {
        type Value = Vec<TunnelConfig>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("[[tunnels]] entries, or [tunnels.NAME] tables")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut tunnels = Vec::new();
            while let Some(tunnel) = seq.next_element()? {
                tunnels.push(tunnel);
            }
            Ok(tunnels)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut tunnels = Vec::new();
            while let Some((name, mut tunnel)) = map.next_entry::<String, TunnelConfig>()? {
                if tunnel.options.tunnel_id.is_empty() {
                    tunnel.options.tunnel_id.clone_from(&name);
                }
                tunnel.name = Some(name);
                tunnels.push(tunnel);
            }
            Ok(tunnels)
        }
    }
    deserializer.deserialize_any(Tunnels)
}

/// The TOML parser's message and where it points, without the source line its Display quotes: that line may
/// hold a secret (a misspelt `password` key, an api key in a connection string), and errors get logged.
fn toml_message(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim();
    match err.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
            format!("TOML parse error at line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// Where a configured tunnel worker reads (`source` of a tunnel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TunnelSourceKind {
    /// arbor's tunnel service, through the named `connection`.
    #[default]
    Service,
    /// A Kafka topic, as the `[tunnels.kafka]` table says (feature `kafka`).
    Kafka,
}

/// `subscriber_concurrency`: `"one"`, `"per_channel"`, or a positive number (a pool).
fn subscriber_concurrency<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SubscriberConcurrency>, D::Error> {
    struct Concurrency;
    impl serde::de::Visitor<'_> for Concurrency {
        type Value = SubscriberConcurrency;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(r#""one", "per_channel", or a number of batches at once (a pool, at least 1)"#)
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<SubscriberConcurrency, E> {
            match value {
                "one" => Ok(SubscriberConcurrency::One),
                "per_channel" => Ok(SubscriberConcurrency::PerChannel),
                other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
            }
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<SubscriberConcurrency, E> {
            match u64::try_from(value) {
                Ok(value) => self.visit_u64(value),
                Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(value), &self)),
            }
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<SubscriberConcurrency, E> {
            usize::try_from(value)
                .ok()
                .and_then(std::num::NonZeroUsize::new)
                .map(SubscriberConcurrency::Pool)
                .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
        }
    }
    deserializer.deserialize_any(Concurrency).map(Some)
}

/// Where activators elect their leaders, and which ones start with the tree.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ActivatorsConfig {
    /// The election backend (default `local`: within this process).
    pub backend: BackendConfig,
    /// Activators started with the tree.
    pub singletons: Vec<SingletonConfig>,
}

/// An election backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum BackendConfig {
    /// Within this process (the registry is the mutex).
    #[default]
    Local,
    /// etcd (feature `etcd`).
    Etcd(EtcdConfig),
}

/// The etcd backend's settings (see `EtcdOptions` in the activator module).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// `http://host:port` or `host:port`.
    pub endpoints: Vec<String>,
    /// This process's name in the cluster (unique among the processes running these activators).
    pub node_id: String,
    /// The leadership lease's TTL (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// The key prefix (default `arbor/activator`).
    #[serde(default)]
    pub prefix: Option<String>,
}

impl EtcdConfig {
    /// etcd at `endpoints`, this process named `node_id`; the default TTL and prefix (set the fields to change
    /// them).
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>, node_id: impl Into<String>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            node_id: node_id.into(),
            ttl: None,
            prefix: None,
        }
    }
}

/// An activator started with the tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SingletonConfig {
    /// The singleton's name (one leader per name across the cluster).
    pub name: String,
    /// The singleton kind, registered with [`TreeBuilder::singleton_kind`](super::TreeBuilder::singleton_kind).
    pub kind: String,
    /// Deliver timers on followers too (default leader only).
    #[serde(default)]
    pub timers_on_followers: bool,
}

/// A named dynamic supervisor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DynamicConfig {
    /// Its name, unique in the tree.
    pub name: String,
    /// At most this many children (default no limit).
    #[serde(default)]
    pub max_children: Option<usize>,
    /// At most this many restarts within `period` (default 3), per child unless `intensity_scope` says
    /// otherwise.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The intensity's window (default 5 s).
    #[serde(default = "default_period", with = "humantime_serde")]
    pub period: Duration,
    /// What the intensity counts: `per_child` (the default: a pool survives unrelated crashes, one child
    /// crash-looping makes it give up) or `supervisor` (every restart against one budget, OTP's rule); see
    /// [`IntensityScope`].
    #[serde(default)]
    pub intensity_scope: IntensityScope,
}

fn default_max_restarts() -> u32 {
    3
}

fn default_period() -> Duration {
    Duration::from_secs(5)
}

impl DynamicConfig {
    /// A dynamic supervisor named `name` with the default flags.
    pub fn new(name: impl Into<String>) -> Self {
        DynamicConfig {
            name: name.into(),
            max_children: None,
            max_restarts: default_max_restarts(),
            period: default_period(),
            intensity_scope: IntensityScope::default(),
        }
    }

    /// Sets the most children it accepts (default no limit).
    pub fn max_children(mut self, max_children: usize) -> Self {
        self.max_children = Some(max_children);
        self
    }

    /// Sets the restart intensity: at most `max_restarts` within `period` (default 3 in 5 s, per child).
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Sets what the intensity counts (default [`IntensityScope::PerChild`]).
    pub fn intensity_scope(mut self, scope: IntensityScope) -> Self {
        self.intensity_scope = scope;
        self
    }

    pub(crate) fn options(&self) -> DynamicSupervisorOptions {
        let options = DynamicSupervisorOptions::default()
            .intensity(self.max_restarts, self.period)
            .intensity_scope(self.intensity_scope);
        match self.max_children {
            Some(max) => options.max_children(max),
            None => options,
        }
    }
}

/// A tree configuration that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read tree configuration {file}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The document does not fit: a syntax error, an unknown key, or a value of the wrong shape.
    #[error("{file}: {path}: {message}")]
    Invalid {
        /// The file (`<inline>` for a string).
        file: String,
        /// The field's path (`tunnels[0].options.heartbeat_timeout`), `.` for the whole document.
        path: String,
        /// What was expected, and what came (the TOML parser's words, with the line and column; never the
        /// line's text, which may hold a secret).
        message: String,
    },
    /// The document parses, but does not hold together (a tunnel naming an unknown connection, a duplicate
    /// name...).
    #[error("{file}: {path}: {message}")]
    Inconsistent {
        /// The file.
        file: String,
        /// The field's path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl TreeConfig {
    /// Reads a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TreeConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        TreeConfig::parse(&text, &path.display().to_string())
    }

    /// Reads a TOML document.
    pub fn from_toml(text: &str) -> Result<TreeConfig, ConfigError> {
        TreeConfig::parse(text, "<inline>")
    }

    fn parse(text: &str, file: &str) -> Result<TreeConfig, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|err| ConfigError::Invalid {
            file: file.to_string(),
            path: ".".into(),
            message: toml_message(&err, text),
        })?;
        let config: TreeConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            ConfigError::Invalid {
                file: file.to_string(),
                path,
                message: toml_message(&err.into_inner(), text),
            }
        })?;
        config.check(file)?;
        Ok(config)
    }

    /// Checks what the types alone cannot: references between sections, unique names, every option valid.
    pub fn check(&self, file: &str) -> Result<(), ConfigError> {
        let inconsistent = |path: String, message: String| ConfigError::Inconsistent {
            file: file.to_string(),
            path,
            message,
        };
        self.root
            .validate()
            .map_err(|e| inconsistent("root".into(), e.to_string()))?;
        self.tunnel_supervisor
            .validate()
            .map_err(|e| inconsistent("tunnel_supervisor".into(), e.to_string()))?;
        self.activator_supervisor
            .validate()
            .map_err(|e| inconsistent("activator_supervisor".into(), e.to_string()))?;
        let mut tunnel_ids = std::collections::HashSet::new();
        for (i, tunnel) in self.tunnels.iter().enumerate() {
            tunnel.check_source(&self.connections, file, i)?;
            tunnel
                .options
                .validate()
                .map_err(|e| inconsistent(tunnel.path(i, "options"), e.to_string()))?;
            if !tunnel_ids.insert(&tunnel.options.tunnel_id) {
                return Err(inconsistent(
                    tunnel.path(i, "options.tunnel_id"),
                    format!(
                        "tunnel {:?} is listed twice (one worker per tunnel)",
                        tunnel.options.tunnel_id
                    ),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.activators.singletons.iter().enumerate() {
            if !names.insert(&s.name) {
                return Err(inconsistent(
                    format!("activators.singletons[{i}].name"),
                    format!("{:?} is listed twice", s.name),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.dynamic.iter().enumerate() {
            let reserved = [
                "registry",
                "connections",
                "tunnels",
                "activators",
                "introspection",
            ];
            if reserved.contains(&d.name.as_str()) || d.name.is_empty() || d.name.contains('/') {
                return Err(inconsistent(
                    format!("dynamic[{i}].name"),
                    format!(
                        "{:?} is empty, has a '/', or is one of the tree's own {reserved:?}",
                        d.name
                    ),
                ));
            }
            if !names.insert(&d.name) {
                return Err(inconsistent(
                    format!("dynamic[{i}].name"),
                    format!("{:?} is listed twice", d.name),
                ));
            }
            d.options()
                .validate()
                .map_err(|e| inconsistent(format!("dynamic[{i}]"), e.to_string()))?;
        }
        #[cfg(feature = "introspection")]
        if let Some(introspection) = &self.introspection {
            introspection.validate().map_err(|e| {
                let e = e.within("introspection");
                inconsistent(e.field, e.reason)
            })?;
        }
        Ok(())
    }
}
