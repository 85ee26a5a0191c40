//! Fault plans, the handler that carries them out, proptest strategies that
//! generate them, and an oracle that predicts their outcome.
//!
//! A [`Fault`] describes what a handler should do: return a value, sleep, return
//! an error, crash in a given way or allocate a given amount.
//! [`FaultHandler`] takes the plan as its argument and does it in the child.
//! [`expected_outcome`] returns the [`OutcomeKind`] that a plan must give
//! under some [`Options`], and [`OutcomeKind::of`] reads the kind of a real
//! outcome, so a property test compares the two.
//!
//! The oracle only returns an outcome where the outcome does not depend on timing or on
//! allocator details: a plan finishes well before the deadline or sleeps far
//! past it, and allocates at most half of the heap budget or at least twice
//! it. [`fault_strategy`] and [`options_strategy`] generate only plans and
//! options that meet these rules. [`case_strategy`] pairs each plan with
//! options and gives a plan that must time out a short timeout, so it costs
//! little.

use std::fmt;
use std::time::Duration;

use isolated_executor::{Context, CrashReason, Handler, IsolationError, Options, defaults};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fixtures::{AllocPattern, CrashMode, FixtureError, crash, hog};

/// A plan for [`FaultHandler`]: the one thing the handler does in the child.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fault {
    /// Return `Ok(value)`.
    Succeed {
        /// The value returned.
        value: u64,
    },
    /// Sleep for `millis` milliseconds, then return `Ok(value)`.
    Sleep {
        /// Sleep time in milliseconds.
        millis: u64,
        /// The value returned after the sleep.
        value: u64,
    },
    /// Return `Err(FixtureError { code, message })`.
    Fail {
        /// The error code.
        code: u32,
        /// The error message.
        message: String,
    },
    /// Crash in the way `mode` chooses.
    Crash {
        /// How to crash.
        mode: CrashMode,
    },
    /// Allocate `bytes` in the way `pattern` chooses and hold them all at
    /// once, then return `Ok(bytes held)`.
    Allocate {
        /// How to allocate.
        pattern: AllocPattern,
        /// How many bytes to allocate.
        bytes: u64,
    },
}

/// Carries out the [`Fault`] plan it gets as its argument.
///
/// ```
/// use isolated_executor::{Context, Handler};
/// use isolated_harness::fault::{Fault, FaultHandler};
///
/// // In-process, for illustration; tests send it through execute_isolated.
/// let value = FaultHandler.execute(Fault::Succeed { value: 7 }, &Context::new());
/// assert_eq!(value, Ok(7));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultHandler;

impl Handler for FaultHandler {
    type Args = Fault;
    type Output = u64;
    type Error = FixtureError;

    fn execute(&self, plan: Fault, _context: &Context) -> Result<u64, FixtureError> {
        match plan {
            Fault::Succeed { value } => Ok(value),
            Fault::Sleep { millis, value } => {
                std::thread::sleep(Duration::from_millis(millis));
                Ok(value)
            }
            Fault::Fail { code, message } => Err(FixtureError { code, message }),
            Fault::Crash { mode } => crash(&mode).map(|never| match never {}),
            Fault::Allocate { pattern, bytes } => Ok(hog(pattern, bytes)),
        }
    }
}

/// The kind of a crash, without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CrashKind {
    /// `CrashReason::Panic`.
    Panic,
    /// `CrashReason::StackOverflow`.
    StackOverflow,
    /// `CrashReason::Abort`.
    Abort,
    /// `CrashReason::Signal` with this signal number.
    Signal(i32),
    /// `CrashReason::Exit` with this exit code.
    Exit(i32),
    /// `CrashReason::NoResult` with this exit code.
    NoResult(i32),
    /// `CrashReason::Protocol`.
    Protocol,
    /// `CrashReason::ShepherdLost`.
    ShepherdLost,
    /// A `CrashReason` variant added after this crate was written.
    Other,
}

impl CrashKind {
    /// Returns the kind of `reason`.
    pub fn of(reason: &CrashReason) -> CrashKind {
        match reason {
            CrashReason::Panic { .. } => CrashKind::Panic,
            CrashReason::StackOverflow { .. } => CrashKind::StackOverflow,
            CrashReason::Abort { .. } => CrashKind::Abort,
            CrashReason::Signal { number, .. } => CrashKind::Signal(*number),
            CrashReason::Exit { code } => CrashKind::Exit(*code),
            CrashReason::NoResult { code } => CrashKind::NoResult(*code),
            CrashReason::Protocol { .. } => CrashKind::Protocol,
            CrashReason::ShepherdLost { .. } => CrashKind::ShepherdLost,
            _ => CrashKind::Other,
        }
    }

    /// Returns the crash kind that a handler crashing with `mode` must give.
    pub fn expected_for(mode: &CrashMode) -> CrashKind {
        match mode {
            CrashMode::Panic { .. } | CrashMode::PanicNonString => CrashKind::Panic,
            CrashMode::Abort | CrashMode::PanicInDrop => CrashKind::Abort,
            CrashMode::Exit { code } => CrashKind::Exit(*code),
            CrashMode::Segfault => CrashKind::Signal(libc::SIGSEGV),
            CrashMode::StackOverflow => CrashKind::StackOverflow,
            CrashMode::Exec => CrashKind::NoResult(0),
        }
    }
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashKind::Panic => f.write_str("panic"),
            CrashKind::StackOverflow => f.write_str("stack overflow"),
            CrashKind::Abort => f.write_str("abort"),
            CrashKind::Signal(number) => {
                write!(
                    f,
                    "signal {number} ({})",
                    isolated_executor::signal_name(*number)
                )
            }
            CrashKind::Exit(code) => write!(f, "exit {code}"),
            CrashKind::NoResult(code) => write!(f, "no result, code {code}"),
            CrashKind::Protocol => f.write_str("protocol"),
            CrashKind::ShepherdLost => f.write_str("shepherd lost"),
            CrashKind::Other => f.write_str("other"),
        }
    }
}

/// The kind of an outcome, without its details: what a property test
/// compares with the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum OutcomeKind {
    /// `Ok(_)`.
    Ok,
    /// `Err(IsolationError::Handler(_))`.
    Error,
    /// `Err(IsolationError::Timeout { .. })`.
    Timeout,
    /// `Err(IsolationError::Killed(_))`.
    Killed,
    /// `Err(IsolationError::Crashed(_))` of this kind.
    Crashed(CrashKind),
    /// `Err(IsolationError::Unavailable { .. })`.
    Unavailable,
    /// An `IsolationError` variant added after this crate was written.
    Other,
}

impl OutcomeKind {
    /// Returns the kind of `outcome`.
    pub fn of<T, E>(outcome: &Result<T, IsolationError<E>>) -> OutcomeKind {
        match outcome {
            Ok(_) => OutcomeKind::Ok,
            Err(IsolationError::Handler(_)) => OutcomeKind::Error,
            Err(IsolationError::Timeout { .. }) => OutcomeKind::Timeout,
            Err(IsolationError::Killed(_)) => OutcomeKind::Killed,
            Err(IsolationError::Crashed(reason)) => OutcomeKind::Crashed(CrashKind::of(reason)),
            Err(IsolationError::Unavailable { .. }) => OutcomeKind::Unavailable,
            Err(_) => OutcomeKind::Other,
        }
    }

    /// Returns the telemetry `result` of this kind: `ok`, `error`, `timeout`,
    /// `killed`, `crashed` or `unavailable` (`other` for an unknown kind).
    pub fn category(&self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::Error => "error",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::Killed => "killed",
            OutcomeKind::Crashed(_) => "crashed",
            OutcomeKind::Unavailable => "unavailable",
            OutcomeKind::Other => "other",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutcomeKind::Crashed(kind) => write!(f, "crashed ({kind})"),
            other => f.write_str(other.category()),
        }
    }
}

/// Time that any plan needs besides its own sleep, as a generous upper
/// estimate: child start-up, writing 32 MiB, or a panic that prints a
/// symbolised backtrace because `RUST_BACKTRACE` is set. Such a panic took
/// 0.2 s on an idle two-core machine with a debug build, and more than
/// 1.2 s on the same machine with both cores busy.
pub const SETTLE_TIME: Duration = Duration::from_secs(5);

/// The error of [`try_expected_outcome`] for a plan near a boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    /// The condition that puts the plan near a boundary.
    pub reason: String,
}

impl fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the outcome is not predictable: {}", self.reason)
    }
}

impl std::error::Error for Ambiguous {}

/// Returns the outcome kind that `fault` must give under `options`.
///
/// Precedence follows the executor. A child still running at the deadline is
/// a timeout, whatever it would have done next. A heap-budget death is
/// `Killed`, whatever the allocation pattern.
///
/// # Panics
///
/// When the plan is near a boundary; see [`try_expected_outcome`].
pub fn expected_outcome(fault: &Fault, options: &Options) -> OutcomeKind {
    try_expected_outcome(fault, options).unwrap_or_else(|e| panic!("{e}; plan {fault:?}"))
}

/// Returns the outcome kind that `fault` must give under `options`, or why
/// it cannot be predicted.
///
/// # Errors
///
/// [`Ambiguous`] when
/// - the plan's sleep plus [`SETTLE_TIME`] exceeds `options.timeout` while
///   the sleep is shorter than twice the timeout, or
/// - an allocation is more than half the heap budget and less than twice it.
pub fn try_expected_outcome(fault: &Fault, options: &Options) -> Result<OutcomeKind, Ambiguous> {
    let sleep = match fault {
        Fault::Sleep { millis, .. } => Duration::from_millis(*millis),
        _ => Duration::ZERO,
    };
    if sleep >= options.timeout.saturating_mul(2) {
        return Ok(OutcomeKind::Timeout);
    }
    if sleep + SETTLE_TIME > options.timeout {
        return Err(Ambiguous {
            reason: format!(
                "a sleep of {sleep:?} plus the settle time of {SETTLE_TIME:?} is not clearly below the timeout of {:?}, nor is the sleep at least twice it",
                options.timeout
            ),
        });
    }

    Ok(match fault {
        Fault::Succeed { .. } | Fault::Sleep { .. } => OutcomeKind::Ok,
        Fault::Fail { .. } => OutcomeKind::Error,
        Fault::Crash { mode } => OutcomeKind::Crashed(CrashKind::expected_for(mode)),
        Fault::Allocate { bytes, .. } => match options.max_heap_size {
            None => OutcomeKind::Ok,
            Some(budget) if bytes.saturating_mul(2) <= budget => OutcomeKind::Ok,
            Some(budget) if *bytes >= budget.saturating_mul(2) => OutcomeKind::Killed,
            Some(budget) => {
                return Err(Ambiguous {
                    reason: format!(
                        "an allocation of {bytes} bytes is between half and twice the heap budget of {budget} bytes"
                    ),
                });
            }
        },
    })
}

/// Sleep of the plans that must time out: 60 s, at least twice every
/// timeout that [`options_strategy`] and [`case_strategy`] generate. The
/// child is stopped at the deadline, so such a plan costs its timeout, not
/// the sleep.
pub const LONG_SLEEP_MILLIS: u64 = 60_000;

/// Maximum sleep of the plans that must finish: 100 ms.
pub const SHORT_SLEEP_MAX_MILLIS: u64 = 100;

/// Allocation sizes of generated plans: 512 KiB, 2 MiB, 8 MiB and 32 MiB.
/// Each is at most half or at least twice each budget in [`HEAP_BUDGETS`].
pub const ALLOCATION_SIZES: [u64; 4] = [512 << 10, 2 << 20, 8 << 20, 32 << 20];

/// Heap budgets of generated options besides `None`: 4, 16 and 64 MiB.
pub const HEAP_BUDGETS: [u64; 3] = [4 << 20, 16 << 20, 64 << 20];

/// Timeouts of generated options for plans that must finish: 10 s and
/// 20 s, both above [`SHORT_SLEEP_MAX_MILLIS`] plus [`SETTLE_TIME`].
pub const TIMEOUTS: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(20)];

/// Timeouts that [`case_strategy`] gives the plans that sleep
/// [`LONG_SLEEP_MILLIS`]: 200 ms and 500 ms, so a timeout costs little.
pub const SHORT_TIMEOUTS: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(500)];

/// Generates every [`CrashMode`], with random panic messages and exit codes
/// from 0 to 125.
pub fn crash_mode_strategy() -> impl Strategy<Value = CrashMode> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,24}".prop_map(|message| CrashMode::Panic { message }),
        Just(CrashMode::PanicNonString),
        Just(CrashMode::Abort),
        (0..=125i32).prop_map(|code| CrashMode::Exit { code }),
        Just(CrashMode::Segfault),
        Just(CrashMode::StackOverflow),
        Just(CrashMode::PanicInDrop),
        Just(CrashMode::Exec),
    ]
}

/// Generates every [`AllocPattern`].
pub fn alloc_pattern_strategy() -> impl Strategy<Value = AllocPattern> {
    proptest::sample::select(AllocPattern::ALL.to_vec())
}

/// Generates fault plans whose outcome [`expected_outcome`] predicts under
/// every option from [`options_strategy`].
///
/// Short sleeps last at most [`SHORT_SLEEP_MAX_MILLIS`]. About one plan in
/// fifteen sleeps [`LONG_SLEEP_MILLIS`], which only a timeout ends.
/// Allocations take their size from [`ALLOCATION_SIZES`].
pub fn fault_strategy() -> impl Strategy<Value = Fault> {
    prop_oneof![
        3 => any::<u64>().prop_map(|value| Fault::Succeed { value }),
        2 => (0..=SHORT_SLEEP_MAX_MILLIS, any::<u64>())
            .prop_map(|(millis, value)| Fault::Sleep { millis, value }),
        1 => any::<u64>().prop_map(|value| Fault::Sleep { millis: LONG_SLEEP_MILLIS, value }),
        2 => (any::<u32>(), "[a-zA-Z0-9 ]{0,24}")
            .prop_map(|(code, message)| Fault::Fail { code, message }),
        4 => crash_mode_strategy().prop_map(|mode| Fault::Crash { mode }),
        3 => (
            alloc_pattern_strategy(),
            proptest::sample::select(ALLOCATION_SIZES.to_vec()),
        )
            .prop_map(|(pattern, bytes)| Fault::Allocate { pattern, bytes }),
    ]
}

/// Generates options from [`defaults()`] with a timeout from `timeouts` and a
/// heap budget from [`HEAP_BUDGETS`] or none.
fn options_with_timeouts(timeouts: &[Duration]) -> impl Strategy<Value = Options> + use<> {
    let budgets: Vec<Option<u64>> = std::iter::once(None)
        .chain(HEAP_BUDGETS.into_iter().map(Some))
        .collect();
    (
        proptest::sample::select(timeouts.to_vec()),
        proptest::sample::select(budgets),
    )
        .prop_map(|(timeout, budget)| defaults().timeout(timeout).max_heap_size(budget))
}

/// Generates options from [`defaults()`] with a timeout from [`TIMEOUTS`]
/// and a heap budget from [`HEAP_BUDGETS`] or none.
///
/// Every plan from [`fault_strategy`] has a predictable outcome under these
/// options, but a plan that sleeps [`LONG_SLEEP_MILLIS`] then runs for its
/// whole 10 or 20 s timeout. Use [`case_strategy`] to keep those cheap.
pub fn options_strategy() -> impl Strategy<Value = Options> {
    options_with_timeouts(&TIMEOUTS)
}

/// Generates options for `fault`: like [`options_strategy`], except that a
/// plan that must time out gets a timeout from [`SHORT_TIMEOUTS`].
///
/// A plan that finishes by itself always gets a timeout of at least 10 s, so
/// only a machine slowed far past [`SETTLE_TIME`] turns it into a timeout.
pub fn options_for(fault: &Fault) -> impl Strategy<Value = Options> + use<> {
    let must_time_out =
        matches!(fault, Fault::Sleep { millis, .. } if *millis >= LONG_SLEEP_MILLIS);
    if must_time_out {
        options_with_timeouts(&SHORT_TIMEOUTS)
    } else {
        options_with_timeouts(&TIMEOUTS)
    }
}

/// Generates a plan from [`fault_strategy`] with options from
/// [`options_for`] that plan.
pub fn case_strategy() -> impl Strategy<Value = (Fault, Options)> {
    fault_strategy().prop_flat_map(|fault| {
        let options = options_for(&fault);
        (Just(fault), options)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(timeout_ms: u64, budget: Option<u64>) -> Options {
        defaults()
            .timeout(Duration::from_millis(timeout_ms))
            .max_heap_size(budget)
    }

    #[test]
    fn oracle_predicts_each_plan_kind() {
        let options = options(10_000, Some(4 << 20));
        let cases = [
            (Fault::Succeed { value: 1 }, OutcomeKind::Ok),
            (
                Fault::Sleep {
                    millis: 50,
                    value: 1,
                },
                OutcomeKind::Ok,
            ),
            (
                Fault::Sleep {
                    millis: 20_000,
                    value: 1,
                },
                OutcomeKind::Timeout,
            ),
            (
                Fault::Fail {
                    code: 1,
                    message: String::new(),
                },
                OutcomeKind::Error,
            ),
            (
                Fault::Crash {
                    mode: CrashMode::Segfault,
                },
                OutcomeKind::Crashed(CrashKind::Signal(11)),
            ),
            (
                Fault::Crash {
                    mode: CrashMode::Exit { code: 9 },
                },
                OutcomeKind::Crashed(CrashKind::Exit(9)),
            ),
            (
                Fault::Allocate {
                    pattern: AllocPattern::Gradual,
                    bytes: 2 << 20,
                },
                OutcomeKind::Ok,
            ),
            (
                Fault::Allocate {
                    pattern: AllocPattern::Gradual,
                    bytes: 8 << 20,
                },
                OutcomeKind::Killed,
            ),
        ];
        for (fault, expected) in cases {
            assert_eq!(expected_outcome(&fault, &options), expected, "{fault:?}");
        }
    }

    #[test]
    fn oracle_rejects_plans_near_a_boundary() {
        let near_timeout = Fault::Sleep {
            millis: 8000,
            value: 0,
        };
        assert!(try_expected_outcome(&near_timeout, &options(10_000, None)).is_err());
        let near_budget = Fault::Allocate {
            pattern: AllocPattern::OneBlock,
            bytes: 5 << 20,
        };
        assert!(try_expected_outcome(&near_budget, &options(10_000, Some(4 << 20))).is_err());
        let fast_under_tiny_timeout = Fault::Succeed { value: 0 };
        assert!(try_expected_outcome(&fast_under_tiny_timeout, &options(100, None)).is_err());
    }

    #[test]
    fn allocation_without_budget_is_ok() {
        let fault = Fault::Allocate {
            pattern: AllocPattern::SmallBoxes,
            bytes: 32 << 20,
        };
        assert_eq!(
            expected_outcome(&fault, &options(10_000, None)),
            OutcomeKind::Ok
        );
    }

    proptest! {
        #[test]
        fn generated_plans_are_predictable(fault in fault_strategy(), options in options_strategy()) {
            prop_assert!(try_expected_outcome(&fault, &options).is_ok());
        }

        #[test]
        fn generated_cases_are_predictable((fault, options) in case_strategy()) {
            let expected = try_expected_outcome(&fault, &options);
            prop_assert!(expected.is_ok());
            if expected == Ok(OutcomeKind::Timeout) {
                prop_assert!(SHORT_TIMEOUTS.contains(&options.timeout));
            } else {
                prop_assert!(TIMEOUTS.contains(&options.timeout));
            }
        }

        #[test]
        fn plans_round_trip_through_json(fault in fault_strategy()) {
            let json = serde_json::to_string(&fault).unwrap();
            let back: Fault = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, fault);
        }
    }
}
