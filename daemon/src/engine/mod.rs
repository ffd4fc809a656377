//! The engine: events become cases, cases become deliveries, deliveries go
//! to plugins.
//!
//! - [`core`]: `Engine`, the front door: ingest planning, case actions, the
//!   workflow versions cases run on.
//! - `group_commit`: concurrent ingest calls committed in shared transactions.
//! - [`policy`]: the sending policy, a pure function of a delivery's facts.
//! - `scheduler`: the run loop that claims due deliveries and dispatches them.
//! - [`clock`]: the one source of business time.

pub mod clock;
pub mod core;
mod group_commit;
pub mod policy;
pub mod scheduler;

pub use self::core::{Engine, EngineError};
