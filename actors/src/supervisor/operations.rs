//! What a supervisor does to its children on request and at its end: add, terminate, restart and delete one,
//! adopt the ones a dynamic start handed over, and stop them all.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use ractor::{ActorCell, ActorRef};
use tracing::{debug, info};

use super::actor::{ChildSelector, Mode, SupervisorMsg, SupervisorState};
use super::children::{Child, ChildState};
use super::dynamic::Pending;
use super::error::SupervisorError;
use super::events::SupervisorEvent;
use super::exit::Orphan;
use super::lifecycle::{start_one, terminate_cell};
use super::slot::{ChildHandle, ChildSlot};
use super::spec::{ChildKind, ChildSpec, Restart};

impl SupervisorState {
    pub(super) async fn add_child(
        &mut self,
        spec: ChildSpec,
        myself: &ActorCell,
    ) -> Result<ChildHandle, SupervisorError> {
        if let Mode::Dynamic(_) = self.mode {
            return Err(SupervisorError::NotASupervisor {
                actor: myself.get_id(),
                expected: "static supervisor (this one is dynamic: use DynamicSupervisorHandle)",
            });
        }
        spec.check(Some(self.auto_shutdown))?;
        if let Some(order) = self.children.order_of_id(&spec.id) {
            let id = spec.id.to_string();
            return Err(
                match &self.children.get(order).expect("indexed child exists").state {
                    ChildState::Running(cell) => SupervisorError::AlreadyStarted {
                        id,
                        actor: cell.clone(),
                    },
                    _ => SupervisorError::AlreadyPresent { id },
                },
            );
        }
        let slot = ChildSlot::new(Arc::clone(&spec.id), None);
        let cell = start_one(&spec, myself, &slot, Some(&mut self.stopping)).await?;
        let order = self
            .children
            .push(Child::new(spec, cell.clone(), Arc::clone(&slot)));
        info!(child = %self.children.id_of(order), actor = %cell.get_id(), "child started");
        self.publish(|supervisor| SupervisorEvent::Started {
            supervisor,
            child: self.children.id_of(order).to_string(),
            actor: cell.get_id(),
        });
        Ok(ChildHandle::new(slot))
    }

    /// Stops a running child; its exit event, arriving later, no longer matches any child, so the exit is
    /// told here.
    pub(super) async fn stop_child(&mut self, order: u64, next: ChildState) {
        let shutdown = match self.children.get(order) {
            Some(child) => child.spec.shutdown,
            None => return,
        };
        let restart = matches!(next, ChildState::Restarting { .. });
        let incarnation = self.children.get(order).and_then(|c| c.slot.latest_incarnation());
        if let Some(cell) = self.children.set_state(order, next) {
            self.stopping.push(Orphan {
                cell: Some(cell.clone()),
                incarnation,
            });
            let reason = terminate_cell(&cell, shutdown).await;
            self.stopping.clear();
            self.stopped(order, &cell, reason, restart);
        }
    }

    /// Tells the exit of a child the supervisor stopped itself, and keeps it as the child's last exit.
    fn stopped(&mut self, order: u64, cell: &ActorCell, reason: &'static str, restart: bool) {
        let id = self.children.id_of(order);
        debug!(child = %id, actor = %cell.get_id(), reason, restart, "child stopped");
        self.publish(|supervisor| SupervisorEvent::Exited {
            supervisor,
            child: id.to_string(),
            actor: cell.get_id(),
            reason: reason.to_string(),
            normal: reason == "shutdown",
            restart,
        });
        if let Some(child) = self.children.get_mut(order) {
            child.last_exit = Some(reason.into());
        }
    }

    /// Stops every child, and `pending` ones not adopted yet. A static supervisor stops them one at a time in
    /// reverse start order (later children may depend on earlier ones); a dynamic one stops them all at once,
    /// each within its own shutdown, as OTP's `simple_one_for_one` and Elixir's `DynamicSupervisor` do.
    /// Every adopted child's exit is told; pending ones were never told started.
    pub(crate) async fn stop_all(&mut self, pending: Vec<Pending>) {
        for (order, _) in self.children.restarting() {
            self.children.set_state(order, ChildState::Terminated);
        }
        match self.mode {
            Mode::Static => {
                for order in self.children.running_from_reversed(0) {
                    self.stop_child(order, ChildState::Terminated).await;
                }
            }
            Mode::Dynamic(_) => {
                let mut stopping = Vec::new();
                for order in self.children.running_from_reversed(0) {
                    let shutdown = self.children.get(order).map(|c| c.spec.shutdown);
                    if let (Some(cell), Some(shutdown)) =
                        (self.children.set_state(order, ChildState::Terminated), shutdown)
                    {
                        stopping.push((Some(order), cell, shutdown));
                    }
                }
                for p in pending {
                    p.slot.set_removed();
                    stopping.push((None, p.cell, p.spec.shutdown));
                }
                if !stopping.is_empty() {
                    debug!(
                        children = stopping.len(),
                        "stopping dynamic children concurrently"
                    );
                }
                // Killed halfway, these would be orphans: say so (see the Drop in actor.rs).
                self.stopping = stopping
                    .iter()
                    .map(|(_, cell, _)| Orphan {
                        cell: Some(cell.clone()),
                        incarnation: None,
                    })
                    .collect();
                let reasons = join_all(
                    stopping
                        .iter()
                        .map(|(_, cell, shutdown)| terminate_cell(cell, *shutdown)),
                )
                .await;
                self.stopping.clear();
                for ((order, cell, _), reason) in stopping.iter().zip(reasons) {
                    if let Some(order) = order {
                        self.stopped(*order, cell, reason, false);
                    }
                }
            }
        }
    }

    /// Removes a child for good, giving its place back to the dynamic supervisor's `max_children`.
    pub(super) fn forget(&mut self, order: u64) {
        if self.children.remove(order).is_some() {
            if let Mode::Dynamic(shared) = &self.mode {
                shared.release();
            }
        }
    }

    /// Takes over the dynamic children that callers started; handles the exits that overtook the hand-over.
    pub(super) async fn adopt(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Mode::Dynamic(shared) = &self.mode else {
            return;
        };
        let adopted = shared.adopt_all();
        let quiet = shared.quiet();
        let mut early = Vec::new();
        for p in adopted {
            let actor = p.cell.get_id();
            let mut child = Child::new(p.spec, p.cell, p.slot);
            child.started_at = Some(p.started_at);
            self.children.push_at(p.order, child);
            debug!(child = %self.children.id_of(p.order), %actor, "child started");
            self.publish(|supervisor| SupervisorEvent::Started {
                supervisor,
                child: self.children.id_of(p.order).to_string(),
                actor,
            });
            if let Some(exit) = self.early_exits.remove(&actor) {
                early.push((actor, exit));
            }
        }
        if quiet {
            self.early_exits.clear();
        }
        for (actor, exit) in early {
            Box::pin(self.on_child_exit(myself, actor, exit)).await;
        }
    }

    /// A child by the id it is shown under (`id#n` for dynamic children).
    pub(super) fn order_of(&self, id: &str) -> Option<u64> {
        if let Some(order) = self.children.order_of_id(id) {
            return Some(order);
        }
        let (_, n) = id.rsplit_once('#')?;
        let order = n.parse().ok()?;
        (self.children.get(order).is_some() && self.children.id_of(order).to_string() == id).then_some(order)
    }

    pub(super) fn find(&self, id: &str) -> Result<u64, SupervisorError> {
        self.order_of(id)
            .ok_or_else(|| SupervisorError::UnknownChild { id: id.into() })
    }

    pub(super) fn child(&self, id: &str) -> Result<(ChildHandle, ChildKind), SupervisorError> {
        let child = self.children.get(self.find(id)?).expect("indexed child exists");
        Ok((ChildHandle::new(Arc::clone(&child.slot)), child.spec.kind))
    }

    pub(super) async fn terminate_child(&mut self, which: ChildSelector) -> Result<(), SupervisorError> {
        let order = match &which {
            ChildSelector::Id(id) => self.find(id)?,
            ChildSelector::Actor(actor) => self
                .children
                .order_of_actor(actor)
                .ok_or(SupervisorError::UnknownActor { actor: *actor })?,
        };
        self.stop_child(order, ChildState::Terminated).await;
        // A child waiting for a restart is terminated too: it must not come back.
        self.children.set_state(order, ChildState::Terminated);
        let forget = matches!(self.mode, Mode::Dynamic(_))
            || self
                .children
                .get(order)
                .is_some_and(|c| c.spec.restart == Restart::Temporary);
        if forget {
            self.forget(order);
        }
        Ok(())
    }

    pub(super) async fn restart_child(
        &mut self,
        id: &str,
        myself: &ActorCell,
    ) -> Result<ChildHandle, SupervisorError> {
        let order = self.find(id)?;
        let child = self.children.get(order).expect("indexed child exists");
        match child.state {
            ChildState::Running(_) => return Err(SupervisorError::AlreadyRunning { id: id.into() }),
            ChildState::Restarting { .. } => return Err(SupervisorError::Restarting { id: id.into() }),
            ChildState::Terminated => {}
        }
        let (spec, slot) = (child.spec.clone(), Arc::clone(&child.slot));
        let began = Instant::now();
        let cell = start_one(&spec, myself, &slot, Some(&mut self.stopping)).await?;
        info!(child = %id, actor = %cell.get_id(), "child restarted by request");
        self.publish(|supervisor| SupervisorEvent::Started {
            supervisor,
            child: id.to_string(),
            actor: cell.get_id(),
        });
        self.children.set_running(order, cell, began);
        Ok(ChildHandle::new(slot))
    }

    pub(super) fn delete_child(&mut self, id: &str) -> Result<(), SupervisorError> {
        let order = self.find(id)?;
        match self.children.get(order).map(|c| &c.state) {
            Some(ChildState::Terminated) => {
                self.forget(order);
                Ok(())
            }
            Some(ChildState::Restarting { .. }) => Err(SupervisorError::Restarting { id: id.into() }),
            _ => Err(SupervisorError::AlreadyRunning { id: id.into() }),
        }
    }
}
