//! Channel plugins: load, call with a deadline, contain failures.
