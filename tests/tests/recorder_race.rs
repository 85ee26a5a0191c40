//! `record` on one thread while other threads of the same test binary run
//! executions without any subscriber. Every recorded call still gets its
//! event, whichever thread emits the telemetry event first.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use isolated_executor::{Context, defaults, execute_isolated};
use isolated_harness::fixtures::SuccessHandler;
use isolated_harness::recorder::record;

#[test]
fn unrecorded_executions_elsewhere() {
    for _ in 0..50 {
        let outcome = execute_isolated(
            &SuccessHandler::default(),
            None,
            &Context::new(),
            &defaults(),
        );
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

#[test]
fn recorded_executions_see_every_event() {
    let mut missed = Vec::new();
    for call in 0..50 {
        let (outcome, events) = record(|| {
            execute_isolated(
                &SuccessHandler::default(),
                None,
                &Context::new(),
                &defaults(),
            )
        });
        assert!(outcome.is_ok(), "{outcome:?}");
        if events.len() != 1 {
            missed.push((call, events.len()));
        }
    }
    assert!(
        missed.is_empty(),
        "calls with a wrong event count (call, events): {missed:?}"
    );
}
