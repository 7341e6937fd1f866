//! Supervisors with Erlang/OTP semantics, on ractor's linking.
//!
//! A [`Supervisor`] starts a list of [`ChildSpec`]s in order, restarts them as its [`Strategy`] and each
//! child's [`Restart`] type say, and stops them in reverse order within each child's [`Shutdown`]. A
//! [`DynamicSupervisor`] does the same for children started at runtime, and stops them all at once. Both are
//! driven through cloneable handles ([`SupervisorHandle`], [`DynamicSupervisorHandle`]) and can describe
//! themselves as a [`TreeSnapshot`].
//!
//! # Which supervisor for which job
//!
//! - The fixed parts of a service — a registry, a pool, the subsystems that live as long as the service —
//!   go under a [`Supervisor`], in the order they depend on each other; pick the [`Strategy`] by how they
//!   depend on each other (its variants say when each fits).
//! - Children that come and go at runtime (per connection, job, tenant, tunnel) go under a
//!   [`DynamicSupervisor`], itself a child of a `Supervisor`; a [`ChildTemplate`] makes the per-start
//!   argument the only thing a caller passes.
//! - A child that fails because of something outside (a server down) wants a [`RestartBackoff`] rather than
//!   a higher intensity; how to choose intensities is on [`SupervisorOptions::intensity`].
//!
//! # Handles that survive restarts
//!
//! `start_child`, `restart_child` and [`SupervisorHandle::child`] give a stable handle ([`ChildHandle`], or a
//! typed [`ChildRef<M>`] when the spec knows the actor's message type, as [`ChildSpec::actor`]'s does). It
//! resolves the incarnation running at each call, like a registered name in OTP: `cast`, `call`, `stop` and
//! `kill` reach the current incarnation, and answer [`SupervisorError::ChildNotRunning`] while the child is
//! down, [`SupervisorError::ChildRemoved`] once its supervisor forgot it. [`SupervisorHandle::child_supervisor`]
//! and [`SupervisorHandle::child_dynamic_supervisor`] give supervisor handles that follow a child supervisor
//! the same way. A new incarnation never overlaps the old one: a restart happens on the exit event, which
//! ractor sends after the old incarnation's `post_stop`.
//!
//! # Semantics
//!
//! | OTP | here |
//! |---|---|
//! | `one_for_one`, `one_for_all`, `rest_for_one` | [`Strategy`]; the group is stopped in reverse start order and *waited for* before anything is re-spawned; every non-temporary member of the group is restarted, including one that had been terminated (as OTP's `start_children` over the group); when a member fails to restart, one_for_all stops the members already restarted and restarts the whole group again, rest_for_one keeps those before it |
//! | `permanent`, `transient`, `temporary` | [`Restart`]; an exit is normal when the actor stopped with no reason, `"normal"`, `"shutdown"` or `"shutdown:…"`; a kill, a panic, an error or any other reason is abnormal |
//! | intensity / period (`invalid_period` for 0) | [`SupervisorOptions::intensity`] (default 3 in 5 s; a zero period is refused); one restart too many stops all children in reverse order and exits with reason `shutdown`, exactly as OTP's — a *normal* exit: a permanent parent entry restarts the supervisor, a transient one leaves it down. The cause is kept, typed: [`SupervisorExit::IntensityReached`] from [`SupervisorHandle::wait`] and in its [`SupervisorEvent::Stopped`], the log, and (`shutdown: <cause>`) `last_exit` in the parent's [`TreeSnapshot`] and its `Exited` event |
//! | `brutal_kill`, timeout, `infinity` | [`Shutdown`]; a child asked to stop by someone else first is still waited for, within its timeout |
//! | a child failing to start at init | every spec and flag is checked before any child starts ([`SupervisorError::InvalidSpec`] and [`SupervisorError::InvalidOptions`] name the field); the supervisor's start fails with the child's error (its `pre_start` error is the `source()`) after the children already started are stopped |
//! | `{already_started, Pid}`, `already_present`, `running`, `restarting` | [`SupervisorError::AlreadyStarted`] (with the running child), [`SupervisorError::AlreadyPresent`], [`SupervisorError::AlreadyRunning`], [`SupervisorError::Restarting`] |
//! | a restart that fails | counts as a restart and is retried through the mailbox, so the supervisor stays responsive |
//! | `significant`, `auto_shutdown` | [`ChildSpec::significant`] (transient or temporary only, under an `auto_shutdown` other than never), [`AutoShutdown`]; the exit is [`SupervisorExit::AutoShutdown`] |
//! | `simple_one_for_one` / Elixir `DynamicSupervisor`, `extra_arguments`, `max_children` | [`DynamicSupervisor`], [`ChildTemplate`], [`DynamicSupervisorOptions::max_children`]; the intensity counts each child's restarts on its own by default ([`IntensityScope`]: a pool survives unrelated crashes, one child crash-looping still makes it give up; `IntensityScope::Supervisor` is Elixir's one budget); children are stopped concurrently, each within its own shutdown, and every child whose `start_child` returned `Ok` is stopped gracefully however soon the shutdown follows |
//! | — | [`RestartBackoff`]: Akka-style delay before restarting a crash-looping child, off by default |
//!
//! A child's start closure must spawn it *linked* to the supervisor cell it is given; that link is how the
//! supervisor hears of its exit, and a closure whose actor is not linked is refused with
//! [`SupervisorError::NotLinked`]. Monitor events from actors that are not children are ignored.
//!
//! # When a supervisor is killed
//!
//! A supervisor killed outright (rather than stopped) cannot stop its children: ractor kills them without
//! waiting. Its parent therefore waits (up to 10 s) for the children the dead incarnation left running
//! before it starts the next one, so a restarted child never finds its name or registry key still held by
//! its predecessor.

mod actor;
mod builder;
mod children;
mod dynamic;
mod error;
mod events;
mod exit;
#[cfg(test)]
mod half_start_tests;
mod handle;
mod intensity;
mod lifecycle;
mod operations;
mod restart;
mod slot;
mod snapshot;
mod spec;
mod template;

pub use builder::{DynamicSupervisor, DynamicSupervisorBuilder, Supervisor, SupervisorBuilder};
pub use children::{ChildCounts, ChildInfo, ChildStatus};
pub use error::{BoxError, StartPanic, SupervisorError};
pub use events::{EventSink, SupervisorEvent};
pub use exit::SupervisorExit;
pub use handle::{DynamicSupervisorHandle, StartSpec, SupervisorHandle};
pub use slot::{ChildHandle, ChildRef, WeakChildHandle, WeakChildRef};
pub use snapshot::TreeSnapshot;
pub use spec::{
    AutoShutdown, ChildKind, ChildSpec, DynamicSupervisorOptions, IntensityScope, Restart, RestartBackoff,
    Shutdown, Strategy, SupervisorOptions, TypedChildSpec,
};
pub use template::{ChildTemplate, TemplatedSupervisor};
