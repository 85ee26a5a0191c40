//! Timings of 256 cases of a trivial property: through `check_isolated`,
//! one child process per case, beside proptest run in process and in its
//! fork mode, which runs all cases in one re-executed test process.
//!
//! The tests are ignored; run them one at a time in release mode:
//!
//! ```text
//! cargo test -p isolated-tests --release --test check_bench -- --ignored --nocapture --test-threads 1
//! ```
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use std::time::{Duration, Instant};

use isolated_executor::{Context, Handler, defaults, execute_isolated};
use isolated_harness::check::{CheckConfig, check_isolated};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::{Deserialize, Serialize};

const CASES: u32 = 256;

/// Timed runs after one warm-up run.
const RUNS: usize = 7;

/// Returns whether doubling `value` in `u64` and halving it gives it back.
fn property(value: u32) -> bool {
    (u64::from(value) * 2) / 2 == u64::from(value)
}

#[derive(Serialize, Deserialize)]
struct Double;

impl Handler for Double {
    type Args = u32;
    type Output = ();
    type Error = String;

    fn execute(&self, value: u32, _: &Context) -> Result<(), String> {
        assert!(property(value), "{value} doubled and halved differs");
        Ok(())
    }
}

fn proptest_config() -> Config {
    Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `run` once to warm up, then `RUNS` times, and prints the first
/// (cold) time, the minimum and the median.
fn measure(label: &str, mut run: impl FnMut()) {
    let cold = Instant::now();
    run();
    let cold = cold.elapsed();

    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .collect();
    times.sort();
    let median = times[RUNS / 2];

    println!(
        "{label}: {CASES} cases; first run {:.1} ms; min {:.1} ms; median {:.1} ms ({:.0} us per case)",
        millis(cold),
        millis(times[0]),
        millis(median),
        median.as_secs_f64() * 1e6 / f64::from(CASES),
    );
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_check_isolated() {
    let config = CheckConfig::new().cases(CASES).no_failure_persistence();

    measure("check_isolated", || {
        let report = check_isolated(&Double, any::<u32>(), &config);
        assert_eq!(report.cases, CASES);
    });
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_execute_isolated_loop() {
    let options = defaults();
    let mut runner = TestRunner::new(proptest_config());
    let strategy = any::<u32>();

    measure("execute_isolated loop", || {
        for _ in 0..CASES {
            let value = strategy
                .new_tree(&mut runner)
                .expect("u32 values")
                .current();
            execute_isolated(&Double, value, &Context::new(), &options)
                .expect("the property holds");
        }
    });
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_proptest_in_process() {
    measure("proptest in process", || {
        TestRunner::new(proptest_config())
            .run(&any::<u32>(), |value| {
                prop_assert!(property(value));
                Ok(())
            })
            .expect("the property holds");
    });
}

/// proptest's fork mode re-executes this test binary and selects this test
/// by name; in the child, `TestRunner::run` runs the cases and exits.
#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_proptest_fork() {
    let config = Config {
        fork: true,
        test_name: Some(concat!(module_path!(), "::bench_proptest_fork")),
        ..proptest_config()
    };

    measure("proptest fork mode", || {
        TestRunner::new(config.clone())
            .run(&any::<u32>(), |value| {
                if property(value) {
                    Ok(())
                } else {
                    Err(TestCaseError::fail("doubled and halved differs"))
                }
            })
            .expect("the property holds");
    });
}

/// Fork mode with proptest's per-case timeout, which makes the parent poll
/// the child's progress.
#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_proptest_fork_timeout() {
    let config = Config {
        fork: true,
        timeout: 1_000,
        test_name: Some(concat!(module_path!(), "::bench_proptest_fork_timeout")),
        ..proptest_config()
    };

    measure("proptest fork mode, timeout 1000 ms", || {
        TestRunner::new(config.clone())
            .run(&any::<u32>(), |value| {
                prop_assert!(property(value));
                Ok(())
            })
            .expect("the property holds");
    });
}
