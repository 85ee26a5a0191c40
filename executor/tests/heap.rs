//! The heap budget: counted from handler start, enforced in every thread,
//! and reported as `Killed(MaxHeapSize)`, never as a crash.

isolated_executor::enable_test_support!();

use std::time::Duration;

use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, KillReason, Options, defaults, execute_isolated,
    execute_isolated_report,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Growth {
    /// One allocation of this many bytes, touched page by page.
    Single(u64),
    /// One allocation of this many bytes, not touched.
    Reserve(u64),
    /// `Vec::push` without bound.
    Push,
    /// Small boxes without bound.
    Boxes,
    /// `Vec::push` without bound in a spawned thread.
    PushInThread,
    /// A small allocation, then `process::abort`.
    AbortAfterSmall,
    /// Unbounded recursion.
    Overflow,
}

#[derive(Serialize, Deserialize)]
struct Grow;

fn touch(buffer: &mut [u8]) {
    for page in buffer.chunks_mut(4096) {
        page[0] = 1;
    }
}

fn push_forever() -> usize {
    let mut values: Vec<u64> = Vec::new();
    loop {
        values.push(values.len() as u64);
        if values.len() == usize::MAX {
            return values.len();
        }
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 32];
    std::hint::black_box(&frame);
    recurse(depth + 1) + frame[2]
}

impl Handler for Grow {
    type Args = Growth;
    type Output = u64;
    type Error = String;

    fn execute(&self, growth: Growth, _: &Context) -> Result<u64, String> {
        match growth {
            Growth::Single(bytes) => {
                let mut buffer = vec![0u8; bytes as usize];
                touch(&mut buffer);
                Ok(std::hint::black_box(buffer).len() as u64)
            }
            Growth::Reserve(bytes) => {
                Ok(std::hint::black_box(vec![0u8; bytes as usize]).len() as u64)
            }
            Growth::Push => Ok(push_forever() as u64),
            Growth::Boxes => {
                let mut boxes = Vec::new();
                loop {
                    boxes.push(Box::new(boxes.len() as u64));
                    if boxes.len() == usize::MAX {
                        return Ok(0);
                    }
                }
            }
            Growth::PushInThread => {
                let worker = std::thread::spawn(push_forever);
                worker
                    .join()
                    .map(|n| n as u64)
                    .map_err(|_| "worker panicked".to_string())
            }
            Growth::AbortAfterSmall => {
                std::hint::black_box(vec![1u8; 4096]);
                std::process::abort()
            }
            Growth::Overflow => Ok(recurse(0)),
        }
    }
}

fn run(growth: Growth, options: &Options) -> Result<u64, IsolationError<String>> {
    execute_isolated(&Grow, growth, &Context::new(), options)
}

fn assert_heap_kill(result: Result<u64, IsolationError<String>>, budget: u64) {
    match result {
        Err(IsolationError::Killed(KillReason::MaxHeapSize { limit, .. })) => {
            assert_eq!(limit, budget)
        }
        other => panic!("expected a heap kill with limit {budget}, got {other:?}"),
    }
}

#[test]
fn single_large_allocation_is_killed() {
    let result = run(Growth::Single(100 * 1_000_000), &defaults());
    let Err(IsolationError::Killed(KillReason::MaxHeapSize {
        limit, requested, ..
    })) = result
    else {
        panic!("expected a heap kill, got {result:?}");
    };
    assert_eq!(limit, 8_000_000);
    assert_eq!(requested, Some(100_000_000));
}

#[test]
fn unbounded_push_is_killed() {
    assert_heap_kill(run(Growth::Push, &defaults()), 8_000_000);
}

#[test]
fn millions_of_small_boxes_are_killed() {
    assert_heap_kill(run(Growth::Boxes, &defaults()), 8_000_000);
}

#[test]
fn growth_in_spawned_thread_is_killed() {
    assert_heap_kill(run(Growth::PushInThread, &defaults()), 8_000_000);
}

#[test]
fn budget_boundary_is_sharp() {
    let options = defaults().max_heap_size(32 * MIB);
    assert_eq!(run(Growth::Single(28 * MIB), &options), Ok(28 * MIB));
    assert_heap_kill(run(Growth::Single(36 * MIB), &options), 32 * MIB);
}

#[test]
fn abort_with_little_memory_is_abort() {
    let result = run(Growth::AbortAfterSmall, &defaults());
    assert!(
        matches!(
            result,
            Err(IsolationError::Crashed(CrashReason::Abort { .. }))
        ),
        "{result:?}"
    );
}

#[test]
fn stack_overflow_under_budget_is_stack_overflow() {
    let result = run(Growth::Overflow, &defaults());
    assert!(
        matches!(
            result,
            Err(IsolationError::Crashed(CrashReason::StackOverflow { .. }))
        ),
        "{result:?}"
    );
}

#[test]
fn no_budget_allows_one_gib() {
    let options = defaults()
        .max_heap_size(None)
        .timeout(Duration::from_secs(20));
    assert_eq!(run(Growth::Reserve(1 << 30), &options), Ok(1 << 30));
}

#[test]
fn peak_memory_is_reported() {
    let options = defaults().max_heap_size(64 * MIB);
    let report =
        execute_isolated_report(&Grow, Growth::Single(20 * MIB), &Context::new(), &options);
    assert_eq!(report.outcome, Ok(20 * MIB));
    assert!(
        report.peak_rss_bytes >= 20 * MIB,
        "peak {}",
        report.peak_rss_bytes
    );
    assert!(
        report.peak_rss_bytes < 64 * MIB,
        "peak {}",
        report.peak_rss_bytes
    );

    let killed = execute_isolated_report(&Grow, Growth::Push, &Context::new(), &defaults());
    let Err(IsolationError::Killed(KillReason::MaxHeapSize { peak_rss_bytes, .. })) =
        killed.outcome
    else {
        panic!("expected a heap kill, got {:?}", killed.outcome);
    };
    assert!(peak_rss_bytes > 0);
    assert_eq!(peak_rss_bytes, killed.peak_rss_bytes);
}

#[test]
fn budget_excludes_memory_held_before_the_handler() {
    // The caller has 64 MiB allocated. The child is forked from a
    // re-executed shepherd, so the caller's size never counts against an
    // 8 MB budget.
    let held = vec![7u8; 64 << 20];
    let result = run(Growth::Single(4 * MIB), &defaults());
    assert_eq!(result, Ok(4 * MIB));
    assert_eq!(held[12345], 7);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// For any budget from 1 MiB to 256 MiB, one allocation of at most 90 %
    /// of it completes and one of at least 110 % is killed.
    #[test]
    fn budget_holds_for_any_size(budget_mib in 1u64..=256, below in 0.0f64..=0.9, above in 1.1f64..=2.0) {
        let budget = budget_mib * MIB;
        let options = defaults().max_heap_size(budget).timeout(Duration::from_secs(20));
        let small = (budget as f64 * below) as u64;
        let large = (budget as f64 * above) as u64;
        prop_assert_eq!(run(Growth::Single(small), &options), Ok(small));
        let result = run(Growth::Single(large), &options);
        let killed = matches!(
            result,
            Err(IsolationError::Killed(KillReason::MaxHeapSize { limit, .. })) if limit == budget
        );
        prop_assert!(killed, "{} of a {} budget gave {:?}", large, budget, result);
    }
}
