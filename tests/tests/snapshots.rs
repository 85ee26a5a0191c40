//! Snapshots of the `Display` text and the serde_json form of every outcome
//! kind, and of the telemetry event of every fixture, made stable across
//! runs and machines by `isolated_harness::snapshot`.
//!
//! The snapshots live in `tests/tests/snapshots/`. After an intended change,
//! regenerate them with `INSTA_UPDATE=always cargo test -p isolated-tests
//! --test snapshots` and review the diff.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use std::time::Duration;

use isolated_executor::{
    Context, Handler, IsolationError, Options, Supervisor, SupervisorConfig, defaults,
    execute_isolated,
};
use isolated_harness::fixtures::{
    AllocPattern, ContextHandler, CrashHandler, CrashMode, ErrorHandler, MemoryHogHandler,
    SlowHandler, SuccessHandler,
};
use isolated_harness::recorder::{IsolationEvent, record};
use isolated_harness::snapshot::{normalize_text, settings};
use serde::Serialize;

/// Heap budget of the memory snapshots: 4 MiB.
const BUDGET: u64 = 4 << 20;

/// Options for the snapshots: a 10 s timeout, as a safety limit, and stderr
/// tails large enough that no backtrace cuts a message off, so the text
/// is the same with and without `RUST_BACKTRACE`.
fn options() -> Options {
    defaults()
        .timeout(Duration::from_secs(10))
        .output_tail(256 << 10)
}

/// Runs `handler` and returns its outcome and its single telemetry event.
fn run<H: Handler>(
    handler: &H,
    args: H::Args,
    context: &Context,
    options: &Options,
) -> (Result<H::Output, IsolationError<H::Error>>, IsolationEvent) {
    let (outcome, mut events) = record(|| execute_isolated(handler, args, context, options));
    assert_eq!(events.len(), 1, "one telemetry event per execution");
    (outcome, events.remove(0))
}

/// Snapshots the `Display` text of an error outcome as
/// `outcome_display_<name>` and the serde_json form of any outcome as
/// `outcome_json_<name>`.
fn assert_outcome_snapshots<T: Serialize, E: Serialize>(
    name: &str,
    outcome: &Result<T, IsolationError<E>>,
) {
    let json = serde_json::to_value(outcome).expect("outcomes serialize to JSON");
    settings().bind(|| {
        if let Err(error) = outcome {
            insta::assert_snapshot!(
                format!("outcome_display_{name}"),
                normalize_text(&error.to_string())
            );
        }
        insta::assert_json_snapshot!(format!("outcome_json_{name}"), json);
    });
}

/// Snapshots a telemetry event as `event_<name>`.
fn assert_event_snapshot(name: &str, event: &IsolationEvent) {
    settings().bind(|| {
        insta::assert_json_snapshot!(format!("event_{name}"), event);
    });
}

#[test]
fn ok_outcome() {
    let (outcome, event) = run(
        &SuccessHandler::default(),
        Some("value".into()),
        &Context::new(),
        &options(),
    );
    assert_outcome_snapshots("ok", &outcome);
    assert_event_snapshot("success", &event);
}

#[test]
fn ok_outcome_with_default() {
    let (outcome, event) = run(
        &SuccessHandler::default(),
        None,
        &Context::new(),
        &options(),
    );
    assert_eq!(outcome, Ok("ok".to_owned()));
    assert_event_snapshot("success_default", &event);
}

#[test]
fn handler_error_outcome() {
    let (outcome, event) = run(
        &ErrorHandler::new(7, "bad input"),
        (),
        &Context::new(),
        &options(),
    );
    assert_outcome_snapshots("handler_error", &outcome);
    assert_event_snapshot("error", &event);
}

#[test]
fn timeout_outcome() {
    let options = options().timeout(Duration::from_millis(200));
    let (outcome, event) = run(
        &SlowHandler::new(Duration::from_secs(60)),
        (),
        &Context::new(),
        &options,
    );
    assert_outcome_snapshots("timeout", &outcome);
    assert_event_snapshot("slow_timeout", &event);
}

#[test]
fn slow_within_timeout_event() {
    let (outcome, event) = run(
        &SlowHandler::new(Duration::from_millis(20)),
        (),
        &Context::new(),
        &options(),
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_event_snapshot("slow_ok", &event);
}

#[test]
fn killed_outcome() {
    let options = options().max_heap_size(BUDGET);
    let handler = MemoryHogHandler::new(AllocPattern::OneBlock, 16 * BUDGET);
    let (outcome, _) = run(&handler, (), &Context::new(), &options);
    assert_outcome_snapshots("killed", &outcome);
}

#[test]
fn memory_hog_events() {
    let options = options().max_heap_size(BUDGET);
    for pattern in AllocPattern::ALL {
        let handler = MemoryHogHandler::new(pattern, 16 * BUDGET);
        let (_, event) = run(&handler, (), &Context::new(), &options);
        assert_event_snapshot(&format!("memory_hog_{}_killed", pattern.label()), &event);
    }
    let handler = MemoryHogHandler::new(AllocPattern::OneBlock, BUDGET / 4);
    let (outcome, event) = run(&handler, (), &Context::new(), &options);
    assert_eq!(outcome, Ok(BUDGET / 4));
    assert_event_snapshot("memory_hog_within_budget", &event);
}

#[test]
fn crashed_outcomes() {
    for mode in CrashMode::all() {
        let (outcome, event) = run(
            &CrashHandler::new(mode.clone()),
            (),
            &Context::new(),
            &options(),
        );
        assert_outcome_snapshots(&format!("crashed_{}", mode.label()), &outcome);
        assert_event_snapshot(&format!("crash_{}", mode.label()), &event);
    }
}

#[test]
fn protocol_outcome() {
    let options = options().max_result_size(100);
    let (outcome, event) = run(
        &SuccessHandler::default(),
        Some("x".repeat(1000)),
        &Context::new(),
        &options,
    );
    assert_outcome_snapshots("crashed_protocol", &outcome);
    assert_event_snapshot("success_oversized_result", &event);
}

#[test]
fn unavailable_outcome() {
    let supervisor = Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..Default::default()
    })
    .expect("a supervisor without prestarted shepherds starts");
    supervisor.shutdown();
    let options = options().supervisor(supervisor);
    let (outcome, event) = run(&SuccessHandler::default(), None, &Context::new(), &options);
    assert_outcome_snapshots("unavailable", &outcome);
    assert_event_snapshot("success_unavailable", &event);
}

#[test]
fn context_events() {
    let context = Context::new().with("session_id", "abc-123");
    let (outcome, event) = run(&ContextHandler::new("session_id"), (), &context, &options());
    assert_eq!(outcome, Ok("abc-123".to_owned()));
    assert_event_snapshot("context_found", &event);

    let (outcome, event) = run(
        &ContextHandler::new("session_id"),
        (),
        &Context::new(),
        &options(),
    );
    assert_outcome_snapshots("handler_error_missing_key", &outcome);
    assert_event_snapshot("context_missing", &event);
}
