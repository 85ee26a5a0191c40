//! Fixture handlers and test helpers for `isolated-executor`.
#![deny(unsafe_code)]

pub mod check;
pub mod fault;
pub mod fixtures;
pub mod leak;
pub mod misbehave;
pub mod recorder;
pub mod snapshot;
pub use check::{
    CheckConfig, CheckFailure, CheckReport, FailureKind, Replay, check_isolated, try_check_isolated,
};
