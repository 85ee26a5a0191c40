//! Fixture handlers and test helpers for `isolated-executor`: provoke every
//! outcome of an isolated execution on purpose, and check it.
//!
//! - [`fixtures`]: handlers that succeed, sleep, crash in every way, run out
//!   of memory in several patterns, return their own error or read the
//!   context.
//! - [`fault`]: a serializable [`Fault`](fault::Fault) plan, the
//!   [`FaultHandler`](fault::FaultHandler) that carries it out, proptest
//!   strategies for plans and options, and the oracle
//!   [`expected_outcome`](fault::expected_outcome).
//! - [`recorder`]: a `tracing` layer that collects the executor's telemetry
//!   as typed [`IsolationEvent`](recorder::IsolationEvent)s.
//! - [`snapshot`]: insta settings and a text normaliser that make outcomes
//!   and events stable across runs and machines.
//! - [`leak`]: a check that executions leave no process and no fd behind.
//!
//! # Adding the crates
//!
//! The crates are not published yet. In the `Cargo.toml` of the crate under
//! test, point at a checkout:
//!
//! ```toml
//! [dev-dependencies]
//! isolated-executor = { path = "../isolated-executor/executor" }
//! isolated-harness = { path = "../isolated-executor/harness" }
//! serde = { version = "1", features = ["derive"] }
//! proptest = "1"
//! # For `IsolationEvent::level` comparisons and snapshot tests:
//! tracing = "0.1"
//! insta = { version = "1", features = ["json", "redactions"] }
//! ```
//!
//! Every integration-test file (each file under `tests/` is its own crate)
//! that runs handlers needs the entry hook once, at the top of the file
//! (after any `//!` docs and `#![...]` attributes):
//!
//! ```ignore
//! isolated_executor::enable_test_support!();
//! ```
//!
//! Without it every execution returns `IsolationError::Unavailable` with a
//! message naming this line. A binary or example with its own `main` calls
//! `isolated_executor::init();` first in `main` instead.
//!
//! # A test per outcome
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use isolated_executor::{
//!     Context, CrashReason, IsolationError, KillReason, defaults, execute_isolated,
//! };
//! use isolated_harness::fixtures::{
//!     AllocPattern, CrashHandler, CrashMode, ErrorHandler, MemoryHogHandler, SlowHandler,
//!     SuccessHandler,
//! };
//!
//! let context = Context::new();
//!
//! // Ok: the handler's value comes back.
//! let value = execute_isolated(&SuccessHandler::default(), Some("hi".into()), &context, &defaults());
//! assert_eq!(value.unwrap(), "hi");
//!
//! // Error: the handler's own error comes back unchanged.
//! let error = execute_isolated(&ErrorHandler::new(7, "bad input"), (), &context, &defaults());
//! assert!(matches!(error, Err(IsolationError::Handler(e)) if e.code == 7));
//!
//! // Timeout: the child is stopped at the deadline.
//! let options = defaults().timeout(Duration::from_millis(200));
//! let slow = execute_isolated(&SlowHandler::new(Duration::from_secs(30)), (), &context, &options);
//! assert!(matches!(slow, Err(IsolationError::Timeout { .. })));
//!
//! // Killed: an allocation far over the heap budget.
//! let options = defaults().max_heap_size(4 << 20);
//! let hog = MemoryHogHandler::new(AllocPattern::Gradual, 64 << 20);
//! let killed = execute_isolated(&hog, (), &context, &options);
//! assert!(matches!(killed, Err(IsolationError::Killed(KillReason::MaxHeapSize { .. }))));
//!
//! // Crashed: one test per crash mode.
//! let segfault = execute_isolated(&CrashHandler::new(CrashMode::Segfault), (), &context, &defaults());
//! assert!(matches!(
//!     segfault,
//!     Err(IsolationError::Crashed(CrashReason::Signal { number: 11, .. }))
//! ));
//! ```
//!
//! # A property test over plans
//!
//! [`case_strategy`](fault::case_strategy) generates plans with options
//! under which the oracle can predict the outcome, so the property is an
//! equality.
//! [`record`](recorder::record) collects the telemetry and
//! [`LeakCheck`](leak::LeakCheck) looks for leftovers:
//!
//! ```no_run
//! use isolated_executor::{Context, Handler, execute_isolated};
//! use isolated_harness::fault::{
//!     FaultHandler, OutcomeKind, case_strategy, expected_outcome,
//! };
//! use isolated_harness::leak::LeakCheck;
//! use isolated_harness::recorder::record;
//! use proptest::prelude::*;
//!
//! proptest! {
//!     #![proptest_config(ProptestConfig::with_cases(64))]
//!     #[test]
//!     fn outcome_matches_oracle((plan, options) in case_strategy()) {
//!         let expected = expected_outcome(&plan, &options);
//!         let leaks = LeakCheck::start();
//!         let (outcome, events) =
//!             record(|| execute_isolated(&FaultHandler, plan, &Context::new(), &options));
//!         prop_assert_eq!(OutcomeKind::of(&outcome), expected);
//!         prop_assert_eq!(events.len(), 1);
//!         prop_assert_eq!(events[0].result.as_str(), expected.category());
//!         prop_assert_eq!(events[0].handler.as_str(), FaultHandler.name());
//!         prop_assert!(leaks.check().is_ok());
//!     }
//! }
//! ```
//!
//! A plan that must time out costs its timeout (0.2 or 0.5 s), and a panic
//! that prints a backtrace about 0.2 s. The other plans take milliseconds,
//! so 128 cases took about 8 s on an idle two-core machine.
//!
//! # Snapshots
//!
//! Bind [`snapshot::settings`] around `insta::assert_json_snapshot!` and
//! pass strings through [`snapshot::normalize_text`]; see [`snapshot`].
//!
//! # Fuzz-style checks
//!
//! [`check_isolated`] runs every input a proptest strategy generates in its
//! own child, treats a timeout, a heap kill and every crash as a failure,
//! and shrinks to the smallest failing input, each shrink step isolated too.
//! See [`check`] for the report, the settings and the regression files.
//!
//! # Tour
//!
//! `cargo run -p isolated-harness --example tour` sends every fixture
//! through the executor with real limits and prints a table of outcomes.
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
