//! Workflows: parse, validate, render, watch.
