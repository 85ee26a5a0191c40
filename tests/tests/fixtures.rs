//! Each fixture handler of `isolated-harness` produces its documented
//! outcome through a real child process, emits one telemetry event and
//! leaves nothing behind.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use std::time::Duration;

use isolated_executor::{
    Context, CrashReason, ExecutionReport, Handler, IsolationError, KillReason, Options, defaults,
    execute_isolated_report,
};
use isolated_harness::fixtures::{
    AllocPattern, ContextHandler, CrashHandler, CrashMode, ErrorHandler, FixtureError,
    MemoryHogHandler, SlowHandler, SuccessHandler,
};
use isolated_harness::leak::LeakCheck;
use isolated_harness::recorder::record;

/// Runs `handler` under a leak check, checks the single telemetry event
/// against the report, and returns the report.
fn run<H: Handler>(
    handler: &H,
    args: H::Args,
    context: &Context,
    options: &Options,
) -> ExecutionReport<H::Output, H::Error> {
    let leaks = LeakCheck::start();
    let (report, events) = record(|| execute_isolated_report(handler, args, context, options));
    assert_eq!(events.len(), 1, "one telemetry event per execution");
    let event = &events[0];
    assert_eq!(event.handler, handler.name());
    assert_eq!(event.result, report.category());
    assert_eq!(event.pid, u64::from(report.pid.unwrap_or(0)));
    assert_eq!(event.peak_rss_bytes, report.peak_rss_bytes);
    leaks.assert_clean();
    report
}

fn crash(mode: CrashMode) -> ExecutionReport<(), FixtureError> {
    run(&CrashHandler::new(mode), (), &Context::new(), &defaults())
}

fn crash_reason<T: std::fmt::Debug>(report: ExecutionReport<T, FixtureError>) -> CrashReason {
    match report.outcome {
        Err(IsolationError::Crashed(reason)) => reason,
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn success_returns_argument() {
    let report = run(
        &SuccessHandler::new("fallback"),
        Some("given".into()),
        &Context::new(),
        &defaults(),
    );
    assert_eq!(report.outcome, Ok("given".to_owned()));
    assert!(report.pid.is_some());
}

#[test]
fn success_returns_default_without_argument() {
    let report = run(
        &SuccessHandler::new("fallback"),
        None,
        &Context::new(),
        &defaults(),
    );
    assert_eq!(report.outcome, Ok("fallback".to_owned()));
}

#[test]
fn slow_handler_finishes_within_timeout() {
    let options = defaults().timeout(Duration::from_secs(5));
    let report = run(
        &SlowHandler::new(Duration::from_millis(50)),
        (),
        &Context::new(),
        &options,
    );
    let slept = report.outcome.expect("the sleep is far below the timeout");
    assert!(slept >= Duration::from_millis(50), "slept {slept:?}");
}

#[test]
fn slow_handler_times_out() {
    let options = defaults().timeout(Duration::from_millis(200));
    let report = run(
        &SlowHandler::new(Duration::from_secs(60)),
        (),
        &Context::new(),
        &options,
    );
    assert_eq!(
        report.outcome,
        Err(IsolationError::Timeout {
            timeout: Duration::from_millis(200),
            escalated_to_kill: false,
        })
    );
    assert!(
        report.duration < Duration::from_secs(30),
        "the call returned long after the deadline: {:?}",
        report.duration
    );
}

#[test]
fn crash_panic_reports_message_and_location() {
    let reason = crash_reason(crash(CrashMode::Panic {
        message: "fixture panic".into(),
    }));
    let CrashReason::Panic { message, location } = reason else {
        panic!("expected a panic, got {reason:?}");
    };
    assert_eq!(message, "fixture panic");
    let location = location.expect("the panic hook records the location");
    assert!(
        location.starts_with("harness/src/fixtures.rs:"),
        "{location}"
    );
}

#[test]
fn crash_panic_non_string_payload() {
    let reason = crash_reason(crash(CrashMode::PanicNonString));
    assert!(
        matches!(&reason, CrashReason::Panic { message, .. } if message == "Box<dyn Any>"),
        "{reason:?}"
    );
}

#[test]
fn crash_abort() {
    let reason = crash_reason(crash(CrashMode::Abort));
    assert!(matches!(reason, CrashReason::Abort { .. }), "{reason:?}");
}

#[test]
fn crash_exit_reports_code() {
    let reason = crash_reason(crash(CrashMode::Exit { code: 3 }));
    assert_eq!(reason, CrashReason::Exit { code: 3 });
}

#[test]
fn crash_segfault_is_sigsegv() {
    let reason = crash_reason(crash(CrashMode::Segfault));
    assert_eq!(
        reason,
        CrashReason::Signal {
            number: 11,
            name: "SIGSEGV".into(),
            core_dumped: false,
        }
    );
}

#[test]
fn crash_stack_overflow() {
    let reason = crash_reason(crash(CrashMode::StackOverflow));
    let CrashReason::StackOverflow { stderr_tail } = reason else {
        panic!("expected a stack overflow, got {reason:?}");
    };
    assert!(
        stderr_tail.contains("overflowed its stack"),
        "{stderr_tail}"
    );
}

#[test]
fn crash_panic_in_drop_aborts() {
    // Both panics print a backtrace when RUST_BACKTRACE is set, so keep
    // more than the default 8 KiB of stderr.
    let options = defaults().output_tail(256 << 10);
    let handler = CrashHandler::new(CrashMode::PanicInDrop);
    let report = run(&handler, (), &Context::new(), &options);
    let stderr = report.stderr_tail.clone();
    let reason = crash_reason(report);
    let CrashReason::Abort { stderr_tail } = reason else {
        panic!("expected an abort, got {reason:?}");
    };
    assert_eq!(stderr_tail, stderr);
    assert!(
        stderr_tail.contains("first panic, unwinding"),
        "{stderr_tail}"
    );
    assert!(
        stderr_tail.contains("second panic, in Drop during unwinding"),
        "{stderr_tail}"
    );
}

#[test]
fn crash_exec_gives_no_result() {
    let reason = crash_reason(crash(CrashMode::Exec));
    assert_eq!(reason, CrashReason::NoResult { code: 0 });
}

/// A budget of 4 MiB, and 64 MiB to allocate: 16 times the budget.
const BUDGET: u64 = 4 << 20;
const OVER_BUDGET: u64 = 64 << 20;

fn hog(
    pattern: AllocPattern,
    bytes: u64,
    budget: Option<u64>,
) -> ExecutionReport<u64, FixtureError> {
    let options = defaults().max_heap_size(budget);
    run(
        &MemoryHogHandler::new(pattern, bytes),
        (),
        &Context::new(),
        &options,
    )
}

#[test]
fn memory_hog_over_budget_is_killed() {
    for pattern in AllocPattern::ALL {
        let report = hog(pattern, OVER_BUDGET, Some(BUDGET));
        let Err(IsolationError::Killed(KillReason::MaxHeapSize {
            limit, requested, ..
        })) = report.outcome
        else {
            panic!(
                "{pattern:?}: expected a heap kill, got {:?}",
                report.outcome
            );
        };
        assert_eq!(limit, BUDGET, "{pattern:?}");
        assert!(
            requested.is_some(),
            "{pattern:?}: no allocation size reported"
        );
    }
}

#[test]
fn memory_hog_one_block_reports_requested_size() {
    let report = hog(AllocPattern::OneBlock, OVER_BUDGET, Some(BUDGET));
    assert!(
        matches!(
            report.outcome,
            Err(IsolationError::Killed(KillReason::MaxHeapSize {
                requested: Some(OVER_BUDGET),
                ..
            }))
        ),
        "{:?}",
        report.outcome
    );
}

#[test]
fn memory_hog_within_budget_succeeds() {
    for pattern in AllocPattern::ALL {
        let report = hog(pattern, BUDGET / 4, Some(BUDGET));
        let held = report
            .outcome
            .unwrap_or_else(|e| panic!("{pattern:?}: {e:?}"));
        assert!(held <= BUDGET / 4, "{pattern:?} held {held}");
        assert!(held > BUDGET / 4 - 64, "{pattern:?} held {held}");
    }
}

#[test]
fn memory_hog_without_budget_touches_its_memory() {
    let report = hog(AllocPattern::OneBlock, OVER_BUDGET, None);
    assert_eq!(report.outcome, Ok(OVER_BUDGET));
    assert!(
        report.peak_rss_bytes >= OVER_BUDGET,
        "peak RSS {} is below the {OVER_BUDGET} bytes written",
        report.peak_rss_bytes
    );
}

#[test]
fn memory_hog_small_boxes_allocate_millions() {
    let report = hog(AllocPattern::SmallBoxes, 80 << 20, None);
    let held = report.outcome.expect("no budget");
    let boxes = held / isolated_harness::fixtures::SMALL_BOX_FOOTPRINT;
    assert!(boxes >= 2_000_000, "{boxes} boxes");
}

#[test]
fn error_handler_returns_its_error() {
    let report = run(
        &ErrorHandler::new(7, "bad input"),
        (),
        &Context::new(),
        &defaults(),
    );
    assert_eq!(
        report.outcome,
        Err(IsolationError::Handler(FixtureError::new(7, "bad input")))
    );
}

#[test]
fn context_handler_returns_value() {
    let context = Context::new().with("session_id", "abc-123");
    let report = run(
        &ContextHandler::new("session_id"),
        (),
        &context,
        &defaults(),
    );
    assert_eq!(report.outcome, Ok("abc-123".to_owned()));
}

#[test]
fn context_handler_missing_key_is_error() {
    let report = run(
        &ContextHandler::new("session_id"),
        (),
        &Context::new(),
        &defaults(),
    );
    let Err(IsolationError::Handler(error)) = report.outcome else {
        panic!("expected the handler's error, got {:?}", report.outcome);
    };
    assert_eq!(error.code, 404);
    assert!(error.message.contains("session_id"), "{}", error.message);
}
