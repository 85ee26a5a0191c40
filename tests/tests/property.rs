//! For any generated fault plan and options, a real execution gives the
//! outcome the oracle predicts, emits exactly one matching telemetry event,
//! and leaves no process or fd behind.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use isolated_executor::{Context, Handler, execute_isolated_report};
use isolated_harness::fault::{FaultHandler, OutcomeKind, case_strategy, expected_outcome};
use isolated_harness::leak::LeakCheck;
use isolated_harness::recorder::record;
use proptest::prelude::*;

proptest! {
    // Most plans finish in a few milliseconds. A panic that prints a
    // backtrace (RUST_BACKTRACE set) takes about 0.2 s, and a plan that must
    // time out costs its timeout of 0.2 or 0.5 s.
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn outcome_matches_oracle((plan, options) in case_strategy()) {
        let expected = expected_outcome(&plan, &options);
        let leaks = LeakCheck::start();

        let (report, events) = record(|| {
            execute_isolated_report(&FaultHandler, plan.clone(), &Context::new(), &options)
        });

        prop_assert_eq!(
            OutcomeKind::of(&report.outcome),
            expected,
            "plan {:?} under timeout {:?} and heap budget {:?} gave {:?}",
            plan,
            options.timeout,
            options.max_heap_size,
            report.outcome
        );
        prop_assert_eq!(events.len(), 1, "events: {:?}", events);
        prop_assert_eq!(events[0].result.as_str(), expected.category());
        prop_assert_eq!(events[0].handler.as_str(), FaultHandler.name());
        prop_assert_eq!(events[0].pid, u64::from(report.pid.unwrap_or(0)));
        if let Err(leaks) = leaks.check() {
            return Err(TestCaseError::fail(format!("plan {plan:?} leaked: {leaks}")));
        }
    }
}
