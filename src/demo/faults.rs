//! The faults the demo injects, on a schedule a seed replays.

use std::fmt;
use std::time::Duration;

use arbor_actors::activator::Role;
use rand::rngs::StdRng;
use rand::Rng;

use super::node::{Node, JANITOR};
use super::service::ServiceHost;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Kill one channel actor of a worker (its worker starts it again, from the last checkpoint).
    Channel,
    /// Kill a tunnel worker (its tree restarts it; its channels move when its session expires).
    Worker,
    /// Kill a subscriber (its tree restarts it; it attaches itself again and delivery resumes).
    Subscriber,
    /// Restart the tunnel service (stop, close the store, reopen it from disk, serve again).
    Service,
    /// Kill the activator that leads (the other node takes over).
    Leader,
}

impl FaultKind {
    /// Every kind, in the order the schedule cycles through them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Channel,
        FaultKind::Worker,
        FaultKind::Subscriber,
        FaultKind::Service,
        FaultKind::Leader,
    ];

    /// A short name for the view and the ledger.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Channel => "channel",
            FaultKind::Worker => "worker",
            FaultKind::Subscriber => "subscriber",
            FaultKind::Service => "service",
            FaultKind::Leader => "leader",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// When the faults come: every kind in turn, `every` apart (each moved by up to a quarter of `every`, from
/// the seed), none in the first three quarters of an interval (the nodes settle) and none after `duration`.
pub fn schedule(
    duration: Duration,
    every: Duration,
    kinds: &[FaultKind],
    rng: &mut StdRng,
) -> Vec<(Duration, FaultKind)> {
    let every = every.max(Duration::from_millis(100));
    let mut at = every;
    let mut faults = Vec::new();
    for kind in kinds.iter().cycle() {
        let jittered = (at + every.mul_f64(rng.random_range(0.0..0.5))).saturating_sub(every / 4);
        if jittered >= duration {
            break;
        }
        faults.push((jittered, *kind));
        at += every;
    }
    faults
}

/// The default gap between faults: each kind twice in the run, at most one fault per second, at least one
/// every five.
pub fn default_every(duration: Duration) -> Duration {
    (duration / (2 * FaultKind::ALL.len() as u32 + 1)).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// What an injection did, for the view.
#[derive(Debug, Clone)]
pub struct Injected {
    pub kind: FaultKind,
    /// The node it hit (none for the service).
    pub node: Option<usize>,
    /// The channel whose actor was killed (channel faults only): only its own reassignment recovers it.
    pub channel: Option<u32>,
    pub what: String,
}

/// Injects `kind` on a node picked with `rng` (or the service). `None` when there was nothing to hit (e.g. the
/// picked node owns no channel at the moment): the demo tries another node, then skips.
pub async fn inject(
    kind: FaultKind,
    nodes: &[Node],
    service: Option<&mut ServiceHost>,
    rng: &mut StdRng,
) -> Option<Injected> {
    if kind == FaultKind::Service {
        return match service?.restart().await {
            Ok(took) => Some(Injected {
                kind,
                node: None,
                channel: None,
                what: format!(
                    "restarted the tunnel service (down {})",
                    super::observe::millis(took)
                ),
            }),
            Err(err) => Some(Injected {
                kind,
                node: None,
                channel: None,
                what: format!(
                    "service restart failed: {}",
                    crate::tunnel_service::error::chain(&err)
                ),
            }),
        };
    }
    let first = rng.random_range(0..nodes.len());
    for offset in 0..nodes.len() {
        let index = (first + offset) % nodes.len();
        if let Some((what, channel)) = hit(kind, &nodes[index], rng).await {
            return Some(Injected {
                kind,
                node: Some(index),
                channel,
                what,
            });
        }
    }
    None
}

/// What was hit, in words, and the channel for a channel fault.
async fn hit(kind: FaultKind, node: &Node, rng: &mut StdRng) -> Option<(String, Option<u32>)> {
    match kind {
        FaultKind::Channel => {
            let prefix = format!("tunnel/{}/channel/", node.tunnel.tunnel_id());
            let channels = node.tree.tunnel_registry().select_prefix(&prefix);
            if channels.is_empty() {
                return None;
            }
            let victim = &channels[rng.random_range(0..channels.len())];
            let channel: u32 = victim.key.rsplit('/').next()?.parse().ok()?;
            victim.actor.kill();
            Some((
                format!("killed the actor of channel {channel} on {}", node.name),
                Some(channel),
            ))
        }
        FaultKind::Worker => {
            let worker = node.tunnel.current().ok()?;
            worker.kill();
            Some((format!("killed the tunnel worker of {}", node.name), None))
        }
        FaultKind::Subscriber => {
            node.subscriber.kill().ok()?;
            Some((format!("killed the subscriber of {}", node.name), None))
        }
        FaultKind::Leader => {
            let activator = node.tree.activator(JANITOR)?;
            if activator.role().await.ok()? != Role::Leader {
                return None;
            }
            activator.actor().kill();
            Some((format!("killed the leading activator on {}", node.name), None))
        }
        FaultKind::Service => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_schedule_cycles_through_every_kind_within_the_run() {
        let mut rng = StdRng::seed_from_u64(7);
        let faults = schedule(
            Duration::from_secs(10),
            default_every(Duration::from_secs(10)),
            &FaultKind::ALL,
            &mut rng,
        );
        assert!(faults.len() >= FaultKind::ALL.len(), "{faults:?}");
        for kind in FaultKind::ALL {
            assert!(
                faults.iter().any(|(_, k)| *k == kind),
                "{kind} missing from {faults:?}"
            );
        }
        assert!(faults.iter().all(|(at, _)| *at < Duration::from_secs(10)));
        assert!(
            faults.windows(2).all(|w| w[0].0 < w[1].0),
            "in time order: {faults:?}"
        );
    }

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let run = |seed| {
            schedule(
                Duration::from_secs(30),
                Duration::from_secs(3),
                &FaultKind::ALL,
                &mut StdRng::seed_from_u64(seed),
            )
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn a_short_run_has_no_fault_after_its_end() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!(schedule(
            Duration::from_millis(500),
            Duration::from_secs(1),
            &FaultKind::ALL,
            &mut rng
        )
        .is_empty());
    }

    #[test]
    fn a_schedule_holds_only_the_kinds_it_is_given() {
        let mut rng = StdRng::seed_from_u64(3);
        let kinds = [FaultKind::Channel, FaultKind::Leader];
        let faults = schedule(Duration::from_secs(10), Duration::from_secs(1), &kinds, &mut rng);
        assert!(!faults.is_empty());
        assert!(faults.iter().all(|(_, k)| kinds.contains(k)), "{faults:?}");
    }

    #[test]
    fn the_default_gap_stays_between_one_and_five_seconds() {
        assert_eq!(default_every(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(default_every(Duration::from_secs(33)), Duration::from_secs(3));
        assert_eq!(default_every(Duration::from_secs(600)), Duration::from_secs(5));
    }
}
