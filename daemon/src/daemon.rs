//! Daemon wiring: start-up, reload, shutdown.
