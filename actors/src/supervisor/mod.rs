//! Supervisors with Erlang/OTP semantics, on ractor's linking.
//!
//! A [`Supervisor`] starts a list of [`ChildSpec`]s in order, restarts them as its [`Strategy`] and each
//! child's [`Restart`] type say, and stops them in reverse order within each child's [`Shutdown`]. A
//! [`DynamicSupervisor`] does the same for children started at runtime. Both are driven through cloneable
//! handles ([`SupervisorHandle`], [`DynamicSupervisorHandle`]) and can describe themselves as a
//! [`TreeSnapshot`].
//!
//! # Semantics
//!
//! | OTP | here |
//! |---|---|
//! | `one_for_one`, `one_for_all`, `rest_for_one` | [`Strategy`]; siblings restarted by a group restart are stopped in reverse start order and *waited for* before anything is re-spawned |
//! | `permanent`, `transient`, `temporary` | [`Restart`]; an exit is normal when the actor stopped with no reason, `"normal"`, `"shutdown"` or `"shutdown:…"`; a kill, a panic, an error or any other reason is abnormal |
//! | intensity / period | [`SupervisorOptions::intensity`] (default 3 in 5 s); one restart too many stops all children in reverse order and fails the supervisor with [`SupervisorError::IntensityExceeded`], which its own supervisor sees as a failure (escalation) |
//! | `brutal_kill`, timeout, `infinity` | [`Shutdown`] |
//! | a child failing to start at init | the supervisor's start fails with that child's error after the children already started are stopped |
//! | a restart that fails | counts as a restart and is retried through the mailbox, so the supervisor stays responsive |
//! | `significant`, `auto_shutdown` | [`ChildSpec::significant`], [`AutoShutdown`] |
//! | — | [`RestartBackoff`]: Akka-style delay before restarting a crash-looping child, off by default |
//!
//! A child's start closure must spawn it *linked* to the supervisor cell it is given; that link is how the
//! supervisor hears of its exit. Monitor events from actors that are not children are ignored.

mod actor;
mod children;
mod dynamic;
mod error;
mod exit;
mod handle;
mod intensity;
mod slot;
mod snapshot;
mod spec;
mod template;

pub use children::{ChildCounts, ChildInfo, ChildStatus};
pub use error::{BoxError, StartPanic, SupervisorError};
pub use exit::SupervisorExit;
pub use handle::{
    DynamicSupervisor, DynamicSupervisorBuilder, DynamicSupervisorHandle, StartSpec, Supervisor,
    SupervisorBuilder, SupervisorHandle,
};
pub use slot::{ChildHandle, ChildRef, WeakChildHandle, WeakChildRef};
pub use snapshot::TreeSnapshot;
pub use spec::{
    AutoShutdown, ChildKind, ChildSpec, DynamicSupervisorOptions, Restart, RestartBackoff, Shutdown,
    Strategy, SupervisorOptions, TypedChildSpec,
};
pub use template::{ChildTemplate, TemplatedSupervisor};
