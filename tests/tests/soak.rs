//! A soak run: thousands of mixed executions from two caller threads, each
//! classified as its plan requires, with the caller's fds, descendants and
//! memory back at the baseline afterwards.
//!
//! The default run has 2,000 executions. Set `ISOLATED_SOAK` to another
//! count for a longer run, for example `ISOLATED_SOAK=20000 cargo test -p
//! isolated-tests --test soak -- --nocapture`, which also prints the
//! figures recorded in docs/soak.md.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{Baseline, rss_bytes, serial};
use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, KillReason, Options, defaults, execute_isolated,
};
use serde::{Deserialize, Serialize};

/// Executions in a run unless `ISOLATED_SOAK` sets another count.
const DEFAULT_EXECUTIONS: usize = 2_000;
/// Caller threads that share the executions.
const THREADS: usize = 2;
/// Warm-up executions per thread, one of each plan, before the baseline.
const WARM_UP: usize = Plan::ALL.len();
/// Allowed growth of the caller's resident memory over the run.
const MAX_RSS_GROWTH: u64 = 5 << 20;
/// Timeout of the `Timeout` plan.
const SHORT_TIMEOUT: Duration = Duration::from_millis(20);

/// What one soak execution does, and so which outcome it must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Plan {
    Ok,
    HandlerError,
    Panic,
    Timeout,
    HeapKill,
}

impl Plan {
    const ALL: [Plan; 5] = [
        Plan::Ok,
        Plan::HandlerError,
        Plan::Panic,
        Plan::Timeout,
        Plan::HeapKill,
    ];

    fn for_index(index: usize) -> Plan {
        Plan::ALL[index % Plan::ALL.len()]
    }
}

#[derive(Serialize, Deserialize)]
struct Planned;

impl Handler for Planned {
    type Args = (Plan, u64);
    type Output = u64;
    type Error = String;

    fn execute(&self, (plan, index): (Plan, u64), _context: &Context) -> Result<u64, String> {
        match plan {
            Plan::Ok => Ok(index),
            Plan::HandlerError => Err(format!("planned error {index}")),
            Plan::Panic => panic!("planned panic {index}"),
            Plan::Timeout => {
                std::thread::sleep(Duration::from_secs(60));
                Ok(index)
            }
            Plan::HeapKill => {
                // 64 MiB against the default budget of 8,000,000 bytes.
                let buffer = vec![1u8; 64 << 20];
                Ok(std::hint::black_box(buffer).len() as u64)
            }
        }
    }
}

fn options_for(plan: Plan) -> Options {
    match plan {
        Plan::Timeout => defaults().timeout(SHORT_TIMEOUT),
        _ => defaults().timeout(Duration::from_secs(10)),
    }
}

/// Runs one execution and checks its outcome against the plan.
fn run_planned(index: usize) -> Result<(), String> {
    let plan = Plan::for_index(index);
    let tag = index as u64;
    let outcome = execute_isolated(&Planned, (plan, tag), &Context::new(), &options_for(plan));
    let matches = match (&outcome, plan) {
        (Ok(value), Plan::Ok) => *value == tag,
        (Err(IsolationError::Handler(message)), Plan::HandlerError) => {
            *message == format!("planned error {index}")
        }
        (Err(IsolationError::Crashed(CrashReason::Panic { message, .. })), Plan::Panic) => {
            *message == format!("planned panic {index}")
        }
        (Err(IsolationError::Timeout { timeout, .. }), Plan::Timeout) => *timeout == SHORT_TIMEOUT,
        (Err(IsolationError::Killed(KillReason::MaxHeapSize { .. })), Plan::HeapKill) => true,
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(format!(
            "execution {index} planned {plan:?} gave {outcome:?}"
        ))
    }
}

fn executions() -> usize {
    match std::env::var("ISOLATED_SOAK") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("ISOLATED_SOAK={text:?} is not a count of executions")),
        Err(_) => DEFAULT_EXECUTIONS,
    }
}

#[test]
fn mixed_executions_leave_nothing_behind() {
    let _serial = serial();
    let total = executions();

    // Each thread warms up (starting its shepherd, growing its allocator
    // arena), then waits while the main thread takes the baseline.
    let warmed = Arc::new(Barrier::new(THREADS + 1));
    let measured = Arc::new(Barrier::new(THREADS + 1));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for thread in 0..THREADS {
        let (warmed, measured, failures) = (
            Arc::clone(&warmed),
            Arc::clone(&measured),
            Arc::clone(&failures),
        );
        threads.push(std::thread::spawn(move || {
            for index in 0..WARM_UP {
                if let Err(failure) = run_planned(index) {
                    failures.lock().unwrap().push(format!("warm-up: {failure}"));
                }
            }
            warmed.wait();
            measured.wait();
            for index in (thread..total).step_by(THREADS) {
                if let Err(failure) = run_planned(index) {
                    failures.lock().unwrap().push(failure);
                }
            }
        }));
    }

    warmed.wait();
    let baseline = Baseline::capture(&[]);
    let rss_before = rss_bytes();
    let start = Instant::now();
    measured.wait();
    for thread in threads {
        thread.join().expect("a soak thread panicked");
    }
    let elapsed = start.elapsed();
    let rss_after = rss_bytes();

    println!(
        "soak: {total} executions on {THREADS} threads in {:.1} s ({:.0} executions/s); \
         RSS {rss_before} -> {rss_after} bytes; {} fds and {} descendants at the baseline",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        baseline.fd_count(),
        baseline.descendant_count(),
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} executions were misclassified, the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    baseline.assert_clean();
    assert!(
        rss_after <= rss_before + MAX_RSS_GROWTH,
        "caller RSS grew by {} bytes, from {rss_before} to {rss_after}",
        rss_after.saturating_sub(rss_before)
    );
}
