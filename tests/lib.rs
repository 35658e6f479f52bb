//! Shared helpers for felix-rs integration tests.
