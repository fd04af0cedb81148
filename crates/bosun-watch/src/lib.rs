//! Following the API, for every component that does: the controllers, the scheduler, the node
//! agent, cluster DNS, the node proxy, the gateway, the metrics and the CLI's CSR signer.
//!
//! - [`informer::Informer`]: one watch per kind (restarted with backoff after errors, re-listed
//!   when the API answers 410 Gone) into a reflector cache, with change notices fanned out to
//!   every subscriber, deletions included, and a [`informer::Notice::Synced`] after each
//!   complete list so a consumer that keeps derived state can drop what vanished unseen.
//! - [`reconcile::drive`]: the one controller shape (kube-runtime's `Controller` fed by
//!   informers, an idempotent reconcile, a common error policy), counted in [`metrics`].
//! - [`errors`]: how to read the API's answers (not found, conflict).
//! - [`wake::Wake`]: several informers' changes as one wake-up for a loop that re-reads its
//!   caches on every pass.
//!
//! Events are written by `bosun-events`, which needs no watch.

pub mod errors;
pub mod informer;
pub mod metrics;
pub mod reconcile;
pub mod wake;

pub use informer::{Informer, Notice};
pub use reconcile::{DEFAULT_CONCURRENCY, ReconcileError, drive};
