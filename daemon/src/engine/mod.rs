//! The engine: events become cases, cases become deliveries, deliveries go to plugins.

pub mod clock;
