//! Calls and server streams tied to the actor they are made for (Spear's requests tracked by monitor): the
//! connection monitors the caller and cancels the call when it dies; the outcome, or a stream's items and end,
//! reach the caller as messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::AbortHandle;
use ractor::{ActorCell, ActorId, ActorRef, ActorStatus};

use super::actor::ConnectionMsg;

/// What a caller-tied server stream delivers to its subscriber.
#[derive(Debug)]
pub enum StreamEvent<T> {
    /// The next message of the stream.
    Item(T),
    /// The stream is over; nothing follows.
    End(StreamEnd),
}

/// How a caller-tied stream ended.
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// The server closed the stream with OK.
    Finished,
    /// The server failed the stream, or the connection was lost under it ([`classify`](super::classify) tells
    /// which); the subscriber resubscribes from its own checkpoint, as in Spear.
    Failed(tonic::Status),
    /// The connection was closed ([`close`](super::ConnectionHandle::close)) or shut down; the stream was
    /// cancelled.
    Closed,
}

/// A call or stream tied to a caller; [`cancel`](TiedCall::cancel) ends it early, and dropping this handle does
/// not.
#[derive(Debug, Clone)]
pub struct TiedCall {
    id: u64,
    abort: AbortHandle,
}

impl TiedCall {
    pub(crate) fn new(id: u64, abort: AbortHandle) -> TiedCall {
        TiedCall { id, abort }
    }

    /// Its id on the connection (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancel it (the server sees the call cancelled); no end message is delivered.
    pub fn cancel(&self) {
        self.abort.abort();
    }

    /// Whether it has ended (finished, failed, cancelled).
    pub fn is_finished(&self) -> bool {
        self.abort.is_aborted()
    }
}

/// Delivers a call's end exactly once, whether the call ends by itself or the connection ends it.
pub(crate) type EndOnce = Arc<Mutex<Option<Box<dyn FnOnce(StreamEnd) + Send>>>>;

pub(crate) fn deliver_end(end: &EndOnce, how: StreamEnd) {
    let f = end.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(f) = f {
        f(how);
    }
}

/// A tied call as the connection actor keeps it.
pub(crate) struct Tied {
    pub(crate) caller: ActorCell,
    pub(crate) abort: AbortHandle,
    pub(crate) end: EndOnce,
}

/// The connection actor's table of tied calls, and the callers it monitors for them.
#[derive(Default)]
pub(crate) struct TiedCalls {
    calls: HashMap<u64, Tied>,
    callers: HashMap<ActorId, usize>,
}

impl TiedCalls {
    /// Track `call`; the actor monitors its caller (once per caller).
    pub(crate) fn add(&mut self, me: &ActorRef<ConnectionMsg>, id: u64, call: Tied) {
        let caller = call.caller.clone();
        if matches!(caller.get_status(), ActorStatus::Stopping | ActorStatus::Stopped) {
            tracing::debug!(id, caller = %caller.get_id(), "caller already exiting: tied call cancelled");
            call.abort.abort();
            return;
        }
        let count = self.callers.entry(caller.get_id()).or_insert(0);
        *count += 1;
        if *count == 1 {
            me.get_cell().monitor(caller.clone());
        }
        self.calls.insert(id, call);
        // A monitor set on an actor that exited meanwhile never fires.
        if caller.get_status() == ActorStatus::Stopped {
            self.caller_died(me, caller.get_id());
        }
    }

    /// The call ended by itself.
    pub(crate) fn done(&mut self, me: &ActorRef<ConnectionMsg>, id: u64) {
        if let Some(call) = self.calls.remove(&id) {
            self.release_caller(me, &call.caller);
        }
    }

    fn release_caller(&mut self, me: &ActorRef<ConnectionMsg>, caller: &ActorCell) {
        if let Some(count) = self.callers.get_mut(&caller.get_id()) {
            *count -= 1;
            if *count == 0 {
                self.callers.remove(&caller.get_id());
                me.get_cell().unmonitor(caller.clone());
            }
        }
    }

    /// Whether `actor` is a caller this table monitors.
    pub(crate) fn is_caller(&self, actor: &ActorId) -> bool {
        self.callers.contains_key(actor)
    }

    /// The caller died: cancel its calls (the server sees a cancel); nobody is left to tell.
    pub(crate) fn caller_died(&mut self, me: &ActorRef<ConnectionMsg>, caller: ActorId) {
        let ids: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.caller.get_id() == caller)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(call) = self.calls.remove(&id) {
                tracing::info!(id, %caller, "caller exited: cancelling its tied call");
                // Disarm the end first: the aborted task must not report to a dead caller.
                call.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                call.abort.abort();
                self.release_caller(me, &call.caller);
            }
        }
    }

    /// End every call with `how` (the connection was closed or is going away).
    pub(crate) fn end_all(&mut self, me: Option<&ActorRef<ConnectionMsg>>, how: StreamEnd) {
        for (id, call) in self.calls.drain() {
            tracing::info!(id, caller = %call.caller.get_id(), ?how, "ending tied call");
            call.abort.abort();
            deliver_end(&call.end, how.clone());
            if let Some(me) = me {
                me.get_cell().unmonitor(call.caller.clone());
            }
        }
        self.callers.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }
}
