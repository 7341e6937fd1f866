//! The metrics a tree's events stand for, through the `metrics` facade (a no-op unless the application
//! installs a recorder, e.g. the introspection server's Prometheus exporter):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `arbor_child_starts_total` | counter | `supervisor` |
//! | `arbor_restarts_total` | counter | `supervisor`, `child` |
//! | `arbor_escalations_total` | counter | `supervisor` |
//! | `arbor_connection_ready` | gauge (1 when READY) | `connection` |
//! | `arbor_connection_transitions_total` | counter | `connection`, `state` |
//! | `arbor_tunnel_checkpoint` | gauge (position) | `tunnel`, `channel` |
//! | `arbor_tunnel_delivered_total`, `arbor_tunnel_lag` | counter, gauge | `tunnel`, `channel` (from the registry, see [`record_channel_metrics`]) |
//! | `arbor_leader` | gauge (1 while this process leads) | `singleton` |
//!
//! A recorder keeps every series it was given for as long as the process runs, so labels whose values come
//! and go at runtime are bounded: a dynamic child's `child` is its spec's id without the `#n`, and the first
//! [`LABEL_BUDGET`] distinct values of `child` (with their supervisor) and of `connection` in the process get
//! series of their own; later ones are counted under `other`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use arbor_actors::activator::Role;
use arbor_actors::connection::ConnectivityState;
use arbor_actors::registry::Registry;
use arbor_actors::supervisor::{SupervisorEvent, SupervisorExit};
use arbor_actors::tunnel::{TunnelEntry, TunnelEvent};

use super::events::TreeEvent;

/// How many distinct values a runtime label (`child`, `connection`) gets in one process before the rest are
/// counted under [`OTHER`].
pub const LABEL_BUDGET: usize = 256;

/// The label value of everything past the budget.
pub const OTHER: &str = "other";

/// The label values a metric family has used, up to a budget: pure, so the bound is tested on its own.
#[derive(Debug)]
pub(crate) struct LabelBudget {
    budget: usize,
    used: BTreeSet<String>,
}

impl LabelBudget {
    pub(crate) const fn new(budget: usize) -> Self {
        LabelBudget {
            budget,
            used: BTreeSet::new(),
        }
    }

    /// `value` if it has a series already or the budget allows one more; [`OTHER`] otherwise.
    pub(crate) fn label(&mut self, value: &str) -> String {
        if self.used.contains(value) {
            return value.to_string();
        }
        if self.used.len() < self.budget {
            self.used.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

static CHILD_LABELS: Mutex<LabelBudget> = Mutex::new(LabelBudget::new(LABEL_BUDGET));
static CONNECTION_LABELS: Mutex<LabelBudget> = Mutex::new(LabelBudget::new(LABEL_BUDGET));

fn bounded(budget: &Mutex<LabelBudget>, value: &str) -> String {
    // A panic elsewhere cannot leave the set inconsistent: it only ever grows by whole entries.
    budget.lock().unwrap_or_else(|p| p.into_inner()).label(value)
}

/// Records the metrics an event stands for.
pub(crate) fn record_metrics(event: &TreeEvent) {
    match event {
        TreeEvent::Supervisor(SupervisorEvent::Started { supervisor, .. }) => {
            metrics::counter!("arbor_child_starts_total", "supervisor" => supervisor.to_string())
                .increment(1);
        }
        TreeEvent::Supervisor(SupervisorEvent::Restarted {
            supervisor, child, ..
        }) => {
            let child = child.split('#').next().unwrap_or(child);
            // The pair is the series: the same child id under two supervisors is two values.
            let (supervisor, child) = match bounded(&CHILD_LABELS, &format!("{supervisor}\u{0}{child}")) {
                pair if pair == OTHER => (supervisor.to_string(), OTHER.to_string()),
                _ => (supervisor.to_string(), child.to_string()),
            };
            metrics::counter!("arbor_restarts_total", "supervisor" => supervisor, "child" => child)
                .increment(1);
        }
        TreeEvent::Supervisor(SupervisorEvent::Stopped {
            supervisor,
            exit: SupervisorExit::IntensityReached { .. },
        }) => {
            metrics::counter!("arbor_escalations_total", "supervisor" => supervisor.to_string()).increment(1);
        }
        TreeEvent::Connection { key, state, .. } => {
            let ready = f64::from(u8::from(*state == ConnectivityState::Ready));
            let connection = bounded(&CONNECTION_LABELS, key);
            metrics::gauge!("arbor_connection_ready", "connection" => connection.clone()).set(ready);
            metrics::counter!("arbor_connection_transitions_total", "connection" => connection, "state" => state.as_str())
                .increment(1);
        }
        TreeEvent::Tunnel {
            tunnel_id,
            event: TunnelEvent::Checkpointed { channel_id, position },
        } => {
            metrics::gauge!("arbor_tunnel_checkpoint", "tunnel" => tunnel_id.clone(), "channel" => channel_id.to_string())
                .set(*position as f64);
        }
        TreeEvent::Leadership { name, role, .. } => {
            let leads = f64::from(u8::from(*role == Role::Leader));
            metrics::gauge!("arbor_leader", "singleton" => name.clone()).set(leads);
        }
        _ => {}
    }
}

/// Per-channel delivery metrics from the tunnel registry (delivered count and lag are kept there, current).
pub fn record_channel_metrics(registry: &Registry<TunnelEntry>) {
    for entry in registry.select_prefix("tunnel/") {
        if let TunnelEntry::Channel(info) = entry.value {
            let labels = [
                ("tunnel", info.tunnel_id.clone()),
                ("channel", info.channel_id.to_string()),
            ];
            metrics::gauge!("arbor_tunnel_delivered", &labels).set(info.delivered as f64);
            if let Some(lag) = info.lag {
                metrics::gauge!("arbor_tunnel_lag", &labels).set(lag as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_budget_keeps_the_first_values_and_counts_the_rest_as_other() {
        let mut budget = LabelBudget::new(3);
        let labels: Vec<String> = (0..1_000).map(|i| budget.label(&format!("job-{i}"))).collect();
        assert_eq!(&labels[..3], ["job-0", "job-1", "job-2"]);
        assert!(labels[3..].iter().all(|l| l == OTHER));
        assert_eq!(budget.label("job-1"), "job-1", "a value with a series keeps it");
        assert_eq!(budget.used.len(), 3);
    }
}
