//! Fixture handlers and test helpers for `isolated-executor`.
#![forbid(unsafe_code)]
