//! The telemetry recorder of `isolated-harness` next to tracing-test: inside
//! a `#[traced_test]`, `record` sees the executor's events and passes the
//! test crate's own events on to tracing-test.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use isolated_executor::{Context, Handler, defaults, execute_isolated};
use isolated_harness::fixtures::{CrashHandler, CrashMode, SuccessHandler};
use isolated_harness::recorder::record;
use tracing::Level;
use tracing_test::traced_test;

#[traced_test]
#[test]
fn record_inside_traced_test() {
    let (outcome, events) = record(|| {
        tracing::info!("starting the success fixture");
        execute_isolated(
            &SuccessHandler::default(),
            None,
            &Context::new(),
            &defaults(),
        )
    });

    assert_eq!(outcome, Ok("ok".to_owned()));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].handler, SuccessHandler::default().name());
    assert_eq!(events[0].result, "ok");
    assert_eq!(events[0].level, Level::INFO);
    assert!(events[0].pid > 0);
    assert!(events[0].peak_rss_bytes > 0);
    // The test crate's own event was forwarded to tracing-test.
    assert!(logs_contain("starting the success fixture"));
}

#[test]
fn record_collects_one_event_per_call() {
    let (_, events) = record(|| {
        for mode in [CrashMode::Abort, CrashMode::Segfault] {
            let _ = execute_isolated(&CrashHandler::new(mode), (), &Context::new(), &defaults());
        }
    });

    assert_eq!(events.len(), 2);
    assert_eq!(events[0].reason, "crashed: aborted");
    assert_eq!(events[1].reason, "crashed: signal: 11 (SIGSEGV)");
    for event in &events {
        assert_eq!(event.result, "crashed");
        assert_eq!(event.level, Level::WARN);
        assert_ne!(event.pid, 0);
    }
    assert_ne!(events[0].pid, events[1].pid, "each call runs a fresh child");
}
