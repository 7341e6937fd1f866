//! Where the demo's records live: arbor's tunnel service in this process (the default), or a topic on the
//! user's Kafka broker (`--source kafka`). The nodes, subscribers, ledger and faults are the same for both.

use arbor_actors::connection::ConnectionConfig;
use arbor_proto::tunnel::domain::ChannelType;
use arbor_proto::tunnel::v1;
use tokio::task::JoinHandle;

use super::faults::FaultKind;
use super::service::{self, Production, ServiceHost};
use super::{DemoError, DemoSource, CHANNELS};
use crate::tree::{TreeHandle, TunnelTarget};
use crate::tunnel_service::{validate, Limits};

/// The demo's records and where the nodes read them (one per run: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// The in-process tunnel service and the run's tunnel on it.
    Service {
        host: ServiceHost,
        tunnel_id: String,
        target: ConnectionConfig,
    },
    /// The run's topic on the user's broker.
    #[cfg(feature = "kafka")]
    Kafka(super::kafka::KafkaTopic),
}

impl Backend {
    /// Starts the service and creates the tunnel, or creates the topic.
    pub async fn start(source: &DemoSource) -> Result<Backend, DemoError> {
        match source {
            DemoSource::Service => {
                let host = ServiceHost::start().await?;
                let tunnel_id = create_tunnel(&host).await?;
                let target = ConnectionConfig::parse(&format!("grpc://{}?disableTls=true", host.addr()))?;
                Ok(Backend::Service {
                    host,
                    tunnel_id,
                    target,
                })
            }
            #[cfg(feature = "kafka")]
            DemoSource::Kafka { bootstrap } => {
                Ok(Backend::Kafka(super::kafka::KafkaTopic::create(bootstrap).await?))
            }
            #[cfg(not(feature = "kafka"))]
            DemoSource::Kafka { .. } => Err(DemoError::KafkaFeatureMissing),
        }
    }

    /// One line saying where the records are.
    pub fn describe(&self) -> String {
        match self {
            Backend::Service { host, tunnel_id, .. } => format!(
                "tunnel service on {} (durable in {}), tunnel {tunnel_id} with {CHANNELS} channels",
                host.addr(),
                host.data_dir().display()
            ),
            #[cfg(feature = "kafka")]
            Backend::Kafka(topic) => topic.describe(),
        }
    }

    /// The name the nodes' workers run under (the tunnel's id, or the topic).
    pub fn tunnel_id(&self) -> &str {
        match self {
            Backend::Service { tunnel_id, .. } => tunnel_id,
            #[cfg(feature = "kafka")]
            Backend::Kafka(topic) => &topic.topic,
        }
    }

    /// Where the nodes' workers read.
    pub fn target(&self) -> TunnelTarget {
        match self {
            Backend::Service { target, .. } => target.clone().into(),
            #[cfg(feature = "kafka")]
            Backend::Kafka(topic) => topic.options().into(),
        }
    }

    /// The faults that apply: a broker that is not the demo's own is not restarted.
    pub fn fault_kinds(&self) -> Vec<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(|kind| *kind != FaultKind::Service || self.service().is_some())
            .collect()
    }

    /// The in-process service, to restart (none on Kafka).
    pub fn service(&self) -> Option<&ServiceHost> {
        match self {
            Backend::Service { host, .. } => Some(host),
            #[cfg(feature = "kafka")]
            Backend::Kafka(_) => None,
        }
    }

    pub fn service_mut(&mut self) -> Option<&mut ServiceHost> {
        match self {
            Backend::Service { host, .. } => Some(host),
            #[cfg(feature = "kafka")]
            Backend::Kafka(_) => None,
        }
    }

    /// Starts the producers (see [`service::start_producers`]); the service's go through `tree`'s pool.
    pub async fn start_producers(
        &self,
        tree: &TreeHandle,
        keys_and_producers: (usize, usize),
        rate: u32,
        max_records: u64,
        production: &Production,
    ) -> Result<Vec<JoinHandle<()>>, DemoError> {
        match self {
            Backend::Service {
                tunnel_id, target, ..
            } => {
                service::start_producers(
                    tree,
                    target,
                    tunnel_id,
                    keys_and_producers,
                    rate,
                    max_records,
                    production,
                )
                .await
            }
            #[cfg(feature = "kafka")]
            Backend::Kafka(topic) => topic.start_producers(keys_and_producers, rate, max_records, production),
        }
    }

    /// How many channels are checkpointed to their end, of how many.
    pub fn checkpointed(&self) -> (usize, usize) {
        match self {
            Backend::Service { host, tunnel_id, .. } => {
                let Some(store) = host.store() else {
                    return (0, CHANNELS);
                };
                store
                    .list()
                    .into_iter()
                    .find(|t| t.id == *tunnel_id)
                    .map_or((0, 0), |t| {
                        let done = t.channels.iter().filter(|c| c.checkpoint >= c.end).count();
                        (done, t.channels.len())
                    })
            }
            #[cfg(feature = "kafka")]
            Backend::Kafka(topic) => topic.checkpointed(),
        }
    }

    /// Stops the service (store flushed), or deletes the run's topic.
    pub async fn stop(self) -> Result<(), DemoError> {
        match self {
            Backend::Service { host, .. } => host.stop().await,
            #[cfg(feature = "kafka")]
            Backend::Kafka(topic) => topic.delete().await,
        }
    }
}

async fn create_tunnel(service: &ServiceHost) -> Result<String, DemoError> {
    let request = v1::CreateTunnelRequest {
        tunnel_name: "orders".into(),
        channels: (0..CHANNELS)
            .map(|_| v1::ChannelSpec {
                channel_type: ChannelType::Stream.into(),
                parent_channel_id: None,
            })
            .collect(),
        retention: None,
    };
    let new = validate::create(request, &Limits::default())?;
    let store = service.store().expect("a store before any restart");
    Ok(store.create_tunnel(new).await?.id)
}
