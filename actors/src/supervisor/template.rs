//! Child templates: a dynamic supervisor's one spec with a per-start argument (OTP's `simple_one_for_one`
//! child spec; Elixir's `extra_arguments`, which here are whatever the template's closure captures).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use ractor::{Actor, Message};

use super::error::SupervisorError;
use super::handle::DynamicSupervisorHandle;
use super::slot::ChildRef;
use super::spec::{ChildSpec, Restart, Shutdown, TypedChildSpec};

/// How to build a child of a dynamic supervisor from one argument `A`; its actor handles `M`.
///
/// ```
/// use arbor_actors::supervisor::{ChildTemplate, Restart};
/// # use ractor::{Actor, ActorProcessingErr, ActorRef};
/// # struct Session;
/// # impl Actor for Session {
/// #     type Msg = (); type State = (); type Arguments = (String, u32);
/// #     async fn pre_start(&self, _: ActorRef<()>, _: (String, u32)) -> Result<(), ActorProcessingErr> { Ok(()) }
/// # }
/// let region = String::from("eu-1"); // shared by every child: an "extra argument"
/// let template = ChildTemplate::actor("session", move |user: u32| (Session, (region.clone(), user)))
///     .restart(Restart::Transient);
/// ```
pub struct ChildTemplate<A, M> {
    make: Arc<dyn Fn(A) -> TypedChildSpec<M> + Send + Sync>,
}

impl<A, M> Clone for ChildTemplate<A, M> {
    fn clone(&self) -> Self {
        ChildTemplate {
            make: Arc::clone(&self.make),
        }
    }
}

impl<A, M> fmt::Debug for ChildTemplate<A, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildTemplate").finish_non_exhaustive()
    }
}

impl<A: Clone + Send + Sync + 'static, M: Message> ChildTemplate<A, M> {
    /// A template of children that are plain ractor actors: `make` turns the start argument into a handler and
    /// its arguments (called again, with a clone of the argument, on every restart). Permanent, 5 s shutdown.
    pub fn actor<T, F>(id: impl Into<String>, make: F) -> Self
    where
        T: Actor<Msg = M>,
        F: Fn(A) -> (T, T::Arguments) + Send + Sync + 'static,
    {
        let id: Arc<str> = Arc::from(id.into());
        let make = Arc::new(make);
        ChildTemplate {
            make: Arc::new(move |arg: A| {
                let make = Arc::clone(&make);
                ChildSpec::actor(id.to_string(), move || make(arg.clone()))
            }),
        }
    }

    /// The spec for one start.
    pub fn spec(&self, arg: A) -> TypedChildSpec<M> {
        (self.make)(arg)
    }

    /// Sets the restart type of every child (default [`Restart::Permanent`]).
    pub fn restart(self, restart: Restart) -> Self {
        self.map(move |s| s.restart(restart))
    }

    /// Sets the shutdown of every child (default a 5 s timeout).
    pub fn shutdown(self, shutdown: Shutdown) -> Self {
        self.map(move |s| s.shutdown(shutdown))
    }

    fn map(self, f: impl Fn(TypedChildSpec<M>) -> TypedChildSpec<M> + Send + Sync + 'static) -> Self {
        let make = self.make;
        ChildTemplate {
            make: Arc::new(move |arg| f(make(arg))),
        }
    }
}

/// A [`DynamicSupervisorHandle`] with a [`ChildTemplate`]: `start_child(arg)` is the common call. Derefs to
/// the handle for everything else.
#[derive(Debug, Clone)]
pub struct TemplatedSupervisor<A, M> {
    supervisor: DynamicSupervisorHandle,
    template: ChildTemplate<A, M>,
}

impl<A, M> TemplatedSupervisor<A, M> {
    pub(crate) fn new(supervisor: DynamicSupervisorHandle, template: ChildTemplate<A, M>) -> Self {
        TemplatedSupervisor { supervisor, template }
    }
}

impl<A: Clone + Send + Sync + 'static, M: Message> TemplatedSupervisor<A, M> {
    /// Starts a child from the template with `arg` (see [`DynamicSupervisorHandle::start_child`]).
    pub async fn start_child(&self, arg: A) -> Result<ChildRef<M>, SupervisorError> {
        self.supervisor.start_child(self.template.spec(arg)).await
    }
}

impl<A, M> Deref for TemplatedSupervisor<A, M> {
    type Target = DynamicSupervisorHandle;
    fn deref(&self) -> &DynamicSupervisorHandle {
        &self.supervisor
    }
}
