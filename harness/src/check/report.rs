//! Results of a check: [`CheckReport`] when every case passed,
//! [`CheckFailure`] with the minimal failing input otherwise.

use std::fmt::{self, Debug, Display};
use std::time::Duration;

use isolated_executor::IsolationError;

/// Returns whether `line` belongs to a backtrace std printed under `RUST_BACKTRACE`:
/// the header, a numbered frame, a frame's `at` location, or the closing note.
fn is_backtrace_line(line: &str) -> bool {
    let trimmed = line.trim_start();
    let indented = trimmed.len() < line.len();
    let numbered_frame = trimmed.split_once(':').is_some_and(|(number, _)| {
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
    });
    line == "stack backtrace:"
        || line.starts_with("note: Some details are omitted")
        || (indented && (numbered_frame || trimmed.starts_with("at ")))
}

/// Number of trailing stderr lines the failure report prints; the field
/// [`CheckFailure::stderr_tail`] keeps the whole captured tail.
const STDERR_LINES_SHOWN: usize = 20;

/// Summary of a check in which every case passed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The handler's [`name`](isolated_executor::Handler::name).
    pub handler: &'static str,
    /// New cases generated and run: proptest's `Config::cases`.
    pub cases: u32,
    /// Cases regenerated from seeds in the regression file and run before
    /// the new ones.
    pub persisted_cases: u32,
    /// Cases whose handler returned `Ok`.
    pub passed: u32,
    /// Cases whose handler returned its own `Err`, which counts as a clean
    /// rejection of the input unless
    /// [`CheckConfig::fail_on_handler_error`](super::CheckConfig::fail_on_handler_error)
    /// is set.
    pub handler_errors: u32,
    /// Maximum lifetime of a case's child process.
    pub slowest_case: Duration,
    /// Largest peak resident set size of a case's child, in bytes.
    pub max_peak_rss_bytes: u64,
    /// Wall-clock time of the whole check.
    pub duration: Duration,
    /// The RNG seed of the run; `PROPTEST_RNG_SEED` set to it regenerates
    /// the same cases in the same order.
    pub rng_seed: u64,
}

impl Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "isolated check of {} passed: {} cases ({} ok, {} rejected by the handler)",
            self.handler, self.cases, self.passed, self.handler_errors
        )?;
        if self.persisted_cases > 0 {
            write!(f, " after {} persisted cases", self.persisted_cases)?;
        }
        write!(
            f,
            " in {:.2} s; slowest case {} ms, max peak RSS {}",
            self.duration.as_secs_f64(),
            self.slowest_case.as_millis(),
            format_bytes(self.max_peak_rss_bytes)
        )
    }
}

/// Kind of failure: the property (`Property`, the handler misbehaved on an
/// input) or the setup (`Setup`, the executor could not run a case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// An input made the handler time out, go over its heap budget, crash,
    /// or return an error that the configuration counts as a failure.
    /// `minimal_input` is the result of shrinking.
    Property,
    /// The executor could not run a case ([`IsolationError::Unavailable`]).
    /// The input played no part, so it was neither shrunk nor saved to the
    /// regression file; `minimal_input` is the input that was pending.
    Setup,
}

/// How to run a failing case again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay {
    /// The RNG seed of the run; `PROPTEST_RNG_SEED` set to it, or
    /// [`CheckConfig::rng_seed`](super::CheckConfig::rng_seed), regenerates
    /// the same cases in the same order.
    pub rng_seed: u64,
    /// The seed line proptest appended to the regression file for this
    /// failure (such as `cc 4f1e…`), when it saved one. The next run with
    /// the same source file and persistence replays it before new cases.
    pub persisted_seed: Option<String>,
    /// The source file that names the regression file.
    pub source_file: Option<&'static str>,
    /// The failure persistence in use, printed with `Debug` (for example
    /// `SourceParallel("proptest-regressions")`); `None` when persistence
    /// is off.
    pub persistence: Option<String>,
}

/// A failed check: the minimal failing input, what it did, and how the
/// search got there.
///
/// `Display` prints the full report that
/// [`check_isolated`](super::check_isolated) panics with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckFailure<A, E> {
    /// Whether the handler failed or the executor could not run it.
    pub kind: FailureKind,
    /// The handler's [`name`](isolated_executor::Handler::name).
    pub handler: &'static str,
    /// The smallest failing input proptest's shrinking reached.
    pub minimal_input: A,
    /// The outcome `minimal_input` produced in its last run.
    pub error: IsolationError<E>,
    /// The last bytes the failing child wrote to stderr.
    pub stderr_tail: String,
    /// The last bytes the failing child wrote to stdout.
    pub stdout_tail: String,
    /// Peak resident set size of the failing child, in bytes.
    pub peak_rss_bytes: u64,
    /// Lifetime of the failing child process.
    pub child_duration: Duration,
    /// The input that failed first, before shrinking.
    pub first_failing_input: A,
    /// Cases run up to and including the first failing one, persisted
    /// cases included.
    pub cases: u32,
    /// Whether the first failing case came from a seed in the regression
    /// file rather than from a new one.
    pub from_persisted_seed: bool,
    /// Cases run while shrinking, after the first failure. Each ran in its
    /// own child, so a hang costs one timeout per failing step.
    pub shrink_steps: u32,
    /// Wall-clock time of the whole check.
    pub duration: Duration,
    /// How to run the failure again.
    pub replay: Replay,
}

impl<A, E: Debug> CheckFailure<A, E> {
    /// The outcome of the minimal input in one line: the error's `Display`,
    /// or for a handler error its value printed with `Debug`.
    pub fn reason(&self) -> String {
        describe(&self.error)
    }
}

/// Formats an outcome in one line, with a handler error printed with `Debug`
/// because `IsolationError`'s `Display` leaves it out.
pub(crate) fn describe<E: Debug>(error: &IsolationError<E>) -> String {
    match error {
        IsolationError::Handler(inner) => format!("handler returned an error: {inner:?}"),
        other => other.to_string(),
    }
}

impl<A: Debug, E: Debug> Display for CheckFailure<A, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == FailureKind::Setup {
            return self.fmt_setup(f);
        }

        writeln!(f, "isolated check of {} failed", self.handler)?;
        writeln!(f, "minimal input: {:?}", self.minimal_input)?;
        writeln!(f, "outcome:       {}", self.reason())?;
        writeln!(
            f,
            "child:         ran {} ms, peak RSS {}",
            self.child_duration.as_millis(),
            format_bytes(self.peak_rss_bytes)
        )?;
        let origin = if self.from_persisted_seed {
            "a persisted seed"
        } else {
            "a new case"
        };
        writeln!(
            f,
            "search:        case {} failed ({origin}), then {} shrink steps; {:.2} s in all",
            self.cases,
            self.shrink_steps,
            self.duration.as_secs_f64()
        )?;
        writeln!(f, "first failing input: {:?}", self.first_failing_input)?;
        self.fmt_output(f)?;
        self.fmt_replay(f)
    }
}

impl<A: Debug, E: Debug> CheckFailure<A, E> {
    fn fmt_setup(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "isolated check of {} could not run case {}: {}",
            self.handler,
            self.cases,
            self.reason()
        )?;
        writeln!(
            f,
            "the executor failed, not the handler, so the input {:?} was not shrunk or persisted",
            self.minimal_input
        )
    }

    fn fmt_output(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = self.stderr_tail.trim_matches(['\n', '\r']);
        if tail.is_empty() {
            writeln!(f, "stderr tail:   (empty)")?;
        } else {
            let all: Vec<&str> = tail.lines().collect();
            let lines: Vec<&str> = all
                .iter()
                .copied()
                .filter(|l| !is_backtrace_line(l))
                .collect();
            if lines.len() < all.len() {
                writeln!(
                    f,
                    "stderr backtrace: {} lines left out (see CheckFailure::stderr_tail)",
                    all.len() - lines.len()
                )?;
            }
            let skipped = lines.len().saturating_sub(STDERR_LINES_SHOWN);
            if skipped > 0 {
                writeln!(f, "stderr tail (last {STDERR_LINES_SHOWN} lines):")?;
            } else {
                writeln!(f, "stderr tail:")?;
            }
            for line in &lines[skipped..] {
                writeln!(f, "  | {line}")?;
            }
        }
        if !self.stdout_tail.is_empty() {
            writeln!(
                f,
                "stdout tail:   {} bytes (see CheckFailure::stdout_tail)",
                self.stdout_tail.len()
            )?;
        }
        Ok(())
    }

    fn fmt_replay(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "replay:")?;
        writeln!(
            f,
            "  - PROPTEST_RNG_SEED={} regenerates the same cases in the same order",
            self.replay.rng_seed
        )?;
        match (&self.replay.persisted_seed, &self.replay.persistence) {
            (Some(seed), Some(persistence)) => writeln!(
                f,
                "  - proptest saved `{seed}` with {persistence} for {}; \
                 the next run replays it before new cases",
                self.replay.source_file.unwrap_or("<no source file>")
            )?,
            (None, Some(_)) if self.from_persisted_seed => writeln!(
                f,
                "  - the failing seed is already in the regression file; every run replays it first"
            )?,
            (None, Some(persistence)) => writeln!(
                f,
                "  - nothing was saved: {persistence} had no usable source file ({})",
                self.replay.source_file.unwrap_or("none")
            )?,
            (_, None) => writeln!(f, "  - failure persistence is off, so nothing was saved")?,
        }
        writeln!(
            f,
            "  - or run the minimal input alone with execute_isolated_report"
        )
    }
}

impl<A: Debug, E: Debug> std::error::Error for CheckFailure<A, E> {}

/// Formats a byte count in MiB with one decimal.
fn format_bytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use isolated_executor::{CrashReason, KillReason};

    use super::*;

    fn failure(error: IsolationError<String>, stderr_tail: &str) -> CheckFailure<String, String> {
        CheckFailure {
            kind: FailureKind::Property,
            handler: "demo::Parse",
            minimal_input: "[[".into(),
            error,
            stderr_tail: stderr_tail.into(),
            stdout_tail: String::new(),
            peak_rss_bytes: 3 << 20,
            child_duration: Duration::from_millis(12),
            first_failing_input: "[[[[a".into(),
            cases: 7,
            from_persisted_seed: false,
            shrink_steps: 4,
            duration: Duration::from_millis(900),
            replay: Replay {
                rng_seed: 42,
                persisted_seed: Some("cc 00ff".into()),
                source_file: Some("tests/demo.rs"),
                persistence: Some("SourceParallel(\"proptest-regressions\")".into()),
            },
        }
    }

    #[test]
    fn report_names_input_outcome_and_replay() {
        let text = failure(
            IsolationError::Crashed(CrashReason::StackOverflow {
                stderr_tail: String::new(),
            }),
            "\nthread 'main' has overflowed its stack\n",
        )
        .to_string();

        assert!(text.contains("minimal input: \"[[\""), "{text}");
        assert!(
            text.contains("outcome:       crashed: stack overflow"),
            "{text}"
        );
        assert!(
            text.contains("case 7 failed (a new case), then 4 shrink steps"),
            "{text}"
        );
        assert!(text.contains("first failing input: \"[[[[a\""), "{text}");
        assert!(
            text.contains("  | thread 'main' has overflowed its stack"),
            "{text}"
        );
        assert!(text.contains("PROPTEST_RNG_SEED=42"), "{text}");
        assert!(text.contains("proptest saved `cc 00ff`"), "{text}");
        assert!(text.contains("tests/demo.rs"), "{text}");
    }

    #[test]
    fn report_prints_handler_error_with_debug() {
        let failure = failure(IsolationError::Handler("truncated field".into()), "");

        assert_eq!(
            failure.reason(),
            "handler returned an error: \"truncated field\""
        );
        assert!(failure.to_string().contains("stderr tail:   (empty)"));
    }

    #[test]
    fn report_leaves_out_backtrace_lines() {
        let stderr = "\nthread '<unnamed>' (77) panicked at src/lib.rs:3:5:\nboom\nstack backtrace:\n   0: __rustc::rust_begin_unwind\n             at /rustc/abc/library/std/src/panicking.rs:689:5\n   1: demo::parse\nnote: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n";
        let text = failure(
            IsolationError::Crashed(CrashReason::Abort {
                stderr_tail: String::new(),
            }),
            stderr,
        )
        .to_string();

        assert!(text.contains("  | boom\n"), "{text}");
        assert!(text.contains("panicked at src/lib.rs:3:5"), "{text}");
        assert!(!text.contains("rust_begin_unwind"), "{text}");
        assert!(!text.contains("Some details are omitted"), "{text}");
        assert!(text.contains("5 lines left out"), "{text}");
    }

    #[test]
    fn report_keeps_only_the_last_stderr_lines() {
        let stderr: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let text = failure(
            IsolationError::Killed(KillReason::MaxHeapSize {
                limit: 1,
                requested: None,
                peak_rss_bytes: 0,
            }),
            &stderr,
        )
        .to_string();

        assert!(text.contains("last 20 lines"), "{text}");
        assert!(!text.contains("  | line 9\n"), "{text}");
        assert!(text.contains("  | line 10\n"), "{text}");
        assert!(text.contains("  | line 29\n"), "{text}");
    }

    #[test]
    fn setup_failure_reads_as_executor_failure() {
        let mut failure = failure(
            IsolationError::Unavailable {
                reason: "the supervisor is shut down".into(),
            },
            "",
        );
        failure.kind = FailureKind::Setup;
        failure.cases = 1;

        let text = failure.to_string();

        assert!(
            text.contains(
                "could not run case 1: executor unavailable: the supervisor is shut down"
            ),
            "{text}"
        );
        assert!(text.contains("not shrunk or persisted"), "{text}");
        assert!(!text.contains("replay:"), "{text}");
    }

    #[test]
    fn replay_without_persistence_says_nothing_was_saved() {
        let mut failure = failure(
            IsolationError::Timeout {
                timeout: Duration::from_millis(300),
                escalated_to_kill: false,
            },
            "",
        );
        failure.replay.persisted_seed = None;
        failure.replay.persistence = None;

        let text = failure.to_string();

        assert!(
            text.contains("outcome:       timed out after 300 ms"),
            "{text}"
        );
        assert!(text.contains("failure persistence is off"), "{text}");
    }
}
