//! One node of the demo: a tree as a service would embed it, with a tunnel worker, the subscriber that keeps
//! the ledger, and an activator electing the cluster's janitor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbor_actors::activator::{ActivatorEvent, ActivatorInfo, ActivatorOptions, Role, Singleton};
use arbor_actors::ractor::{Actor, ActorProcessingErr, ActorRef};
use arbor_actors::registry::Registry;
use arbor_actors::supervisor::{ChildRef, ChildSpec, SupervisorOptions};
use arbor_actors::tunnel::{Delivery, SubscriberRef, TunnelHandle, TunnelOptions};

use super::ledger::Ledger;
use super::DemoError;
use crate::introspect::IntrospectionOptions;
use crate::tree::{DynamicConfig, Tree, TreeHandle, TunnelTarget};

/// The singleton the nodes elect.
pub const JANITOR: &str = "janitor";

/// The dynamic supervisor the subscriber runs under.
const CONSUMERS: &str = "consumers";

/// A running node.
pub struct Node {
    pub name: String,
    pub tree: TreeHandle,
    pub tunnel: TunnelHandle,
    pub subscriber: ChildRef<Delivery>,
}

impl Node {
    /// Starts a tree named `name` whose worker consumes `tunnel_id` at `target`, its subscriber booking into
    /// `ledger`, and its activator electing through `election` (shared by the nodes of the demo).
    pub async fn start(
        name: &str,
        target: &TunnelTarget,
        tunnel_id: &str,
        ledger: &Arc<Mutex<Ledger>>,
        election: &Registry<ActivatorInfo>,
        terms: &Arc<LeaderTerms>,
    ) -> Result<Node, DemoError> {
        let tree = Tree::builder()
            .name(name)
            .root(SupervisorOptions::default().intensity(10, Duration::from_secs(10)))
            .activator_registry(election.clone())
            .dynamic(DynamicConfig::new(CONSUMERS))
            // on a free loopback port, so that `arbor inspect` / `arbor top` can look while the demo runs
            .introspection(IntrospectionOptions::default().listen(SocketAddr::from(([127, 0, 0, 1], 0))))
            .start()
            .await?;

        // The subscriber is an application actor supervised by the tree. It attaches itself to the worker at
        // every start after the first (the worker keeps delivering to whoever attached last).
        let tunnel_slot: Arc<OnceLock<TunnelHandle>> = Arc::new(OnceLock::new());
        let args = SubscriberArgs {
            ledger: Arc::clone(ledger),
            tunnel: Arc::clone(&tunnel_slot),
        };
        let subscriber = tree
            .start_child(
                CONSUMERS,
                ChildSpec::actor("ledger-subscriber", move || (LedgerSubscriber, args.clone())),
            )
            .await?;
        let first = SubscriberRef::actor(subscriber.current()?, |delivery| delivery);
        let tunnel = tree
            .tunnel(tunnel_options(tunnel_id, target), target.clone())
            .subscriber(first)
            .start()
            .await?;
        let _ = tunnel_slot.set(tunnel.clone());

        let janitor = Janitor {
            node: name.to_string(),
            terms: Arc::clone(terms),
        };
        tree.start_activator(janitor, ActivatorOptions::new(JANITOR))
            .await?;
        Ok(Node {
            name: name.to_string(),
            tree,
            tunnel,
            subscriber,
        })
    }

    /// This node's activator's role, if it runs.
    pub async fn role(&self) -> Option<Role> {
        self.tree.activator(JANITOR)?.role().await.ok()
    }

    /// The channels this node's worker owns, ascending.
    pub fn channels(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.tunnel.channels().iter().map(|c| c.channel_id).collect();
        ids.sort_unstable();
        ids
    }
}

/// Heartbeats and timeouts short enough that a dead consumer's channels move within seconds (on Kafka, the
/// session timeout brokers accept by default starts at 6 s).
fn tunnel_options(tunnel_id: &str, target: &TunnelTarget) -> TunnelOptions {
    let timeout = match target {
        TunnelTarget::Service(_) => Duration::from_secs(3),
        #[allow(unreachable_patterns)] // the Kafka target exists with feature `kafka` only
        _ => Duration::from_secs(6),
    };
    TunnelOptions::new(tunnel_id)
        .min_heartbeat_interval(Duration::from_millis(100))
        .heartbeat(Duration::from_millis(250), timeout)
        .read_batch_size(200)
        .read_wait(Duration::from_millis(250))
        .reconnect_delay(Duration::from_millis(50), Duration::from_secs(1))
        .subscriber_grace(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(2))
}

#[derive(Clone)]
struct SubscriberArgs {
    ledger: Arc<Mutex<Ledger>>,
    tunnel: Arc<OnceLock<TunnelHandle>>,
}

/// Books every record it is handed into the ledger, then acknowledges the batch.
struct LedgerSubscriber;

impl Actor for LedgerSubscriber {
    type Msg = Delivery;
    type State = SubscriberArgs;
    type Arguments = SubscriberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Delivery>,
        args: SubscriberArgs,
    ) -> Result<SubscriberArgs, ActorProcessingErr> {
        if let Some(tunnel) = args.tunnel.get() {
            tunnel
                .attach_subscriber(SubscriberRef::actor(&myself, |delivery| delivery))
                .await?;
        }
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        args: &mut SubscriberArgs,
    ) -> Result<(), ActorProcessingErr> {
        {
            let mut ledger = args.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for record in &delivery.batch.records {
                ledger.delivered(&record.key, &record.value);
            }
        }
        delivery.ack.ack();
        Ok(())
    }
}

/// The leadership terms seen across the nodes: fencing tokens must only grow.
#[derive(Debug, Default)]
pub struct LeaderTerms {
    last_token: AtomicU64,
    terms: AtomicU64,
    regressions: AtomicU64,
}

impl LeaderTerms {
    fn begin(&self, node: &str, token: u64) {
        let previous = self.last_token.fetch_max(token, Ordering::SeqCst);
        if token <= previous {
            self.regressions.fetch_add(1, Ordering::SeqCst);
        }
        self.terms.fetch_add(1, Ordering::SeqCst);
        tracing::info!(node, token, "janitor leadership began");
    }

    /// How many leaderships began.
    pub fn terms(&self) -> u64 {
        self.terms.load(Ordering::SeqCst)
    }

    /// Leaderships whose token was not above every earlier one (must be 0).
    pub fn regressions(&self) -> u64 {
        self.regressions.load(Ordering::SeqCst)
    }
}

/// The cluster singleton: does nothing but note its terms (a real one would compact, schedule, reconcile).
#[derive(Clone)]
struct Janitor {
    node: String,
    terms: Arc<LeaderTerms>,
}

impl Singleton for Janitor {
    type State = ();

    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        if let ActivatorEvent::NowLeader { fencing_token } = event {
            self.terms.begin(&self.node, fencing_token);
        }
        Ok(())
    }
}
