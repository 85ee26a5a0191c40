//! The full record of one execution.

use std::time::Duration;

use serde::Serialize;

use crate::error::IsolationError;

/// Everything known about one execution: the outcome and what the child
/// did on the way. Returned by
/// [`execute_isolated_report`](crate::execute_isolated_report).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ExecutionReport<T, E> {
    /// The same value [`execute_isolated`](crate::execute_isolated) returns.
    pub outcome: Result<T, IsolationError<E>>,
    /// The handler's [`name`](crate::Handler::name).
    pub handler: &'static str,
    /// The child's pid, when a child started.
    pub pid: Option<u32>,
    /// Wall-clock time of the whole call, from entry to outcome.
    pub duration: Duration,
    /// Time spent waiting for a free shepherd, included in `duration`.
    pub queue_wait: Duration,
    /// Lifetime of the child process, from `fork` to its exit.
    pub child_duration: Duration,
    /// Peak resident set size of the child in bytes (`ru_maxrss`), 0 when no
    /// child ran.
    pub peak_rss_bytes: u64,
    /// The last bytes the child and its descendants wrote to stdout
    /// (at most `Options::output_tail`), decoded lossily as UTF-8.
    pub stdout_tail: String,
    /// Total bytes written to stdout.
    pub stdout_bytes: u64,
    /// The last bytes written to stderr (at most `Options::output_tail`).
    pub stderr_tail: String,
    /// Total bytes written to stderr.
    pub stderr_bytes: u64,
    /// Descendants still alive after the child ended, which were killed.
    pub descendants_killed: u32,
}

impl<T, E> ExecutionReport<T, E> {
    pub(crate) fn without_child(
        handler: &'static str,
        outcome: Result<T, IsolationError<E>>,
        duration: Duration,
    ) -> Self {
        ExecutionReport {
            outcome,
            handler,
            pid: None,
            duration,
            queue_wait: Duration::ZERO,
            child_duration: Duration::ZERO,
            peak_rss_bytes: 0,
            stdout_tail: String::new(),
            stdout_bytes: 0,
            stderr_tail: String::new(),
            stderr_bytes: 0,
            descendants_killed: 0,
        }
    }

    /// Returns the telemetry category of the outcome: `ok`, `error`,
    /// `timeout`, `killed`, `crashed` or `unavailable`.
    pub fn category(&self) -> &'static str {
        match &self.outcome {
            Ok(_) => "ok",
            Err(error) => error.category(),
        }
    }
}
