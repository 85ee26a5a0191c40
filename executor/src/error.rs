//! The outcomes of an execution other than `Ok`.

use std::time::Duration;

use serde::Serialize;

/// The reason an isolated execution did not return the handler's `Ok` value.
///
/// Crashes, timeouts and heap kills are outcomes of the child, not failures
/// of the library. `Unavailable` is the only variant that reports a failure
/// of the executor itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[non_exhaustive]
pub enum IsolationError<E> {
    /// The handler returned `Err(e)`; `e` is passed through unchanged.
    #[error("handler returned an error")]
    Handler(E),
    /// The child was still running when the deadline passed.
    #[error("timed out after {} ms{}", timeout.as_millis(), if *escalated_to_kill { " (SIGKILL after the grace period)" } else { "" })]
    Timeout {
        /// The timeout that was exceeded.
        timeout: Duration,
        /// Whether the child outlived SIGTERM and the grace period and had to
        /// be killed with SIGKILL.
        escalated_to_kill: bool,
    },
    /// The child was stopped because it broke a resource limit.
    #[error("killed: {0}")]
    Killed(KillReason),
    /// The child ended without returning a result.
    #[error("crashed: {0}")]
    Crashed(CrashReason),
    /// The execution could not run: the supervisor is shut down, no shepherd
    /// could be started, or the platform lacks what isolation needs.
    #[error("executor unavailable: {reason}")]
    Unavailable {
        /// The missing piece and how to fix it.
        reason: String,
    },
}

impl<E> IsolationError<E> {
    /// Returns the category used in telemetry: `error`, `timeout`,
    /// `killed`, `crashed` or `unavailable`.
    pub fn category(&self) -> &'static str {
        match self {
            IsolationError::Handler(_) => "error",
            IsolationError::Timeout { .. } => "timeout",
            IsolationError::Killed(_) => "killed",
            IsolationError::Crashed(_) => "crashed",
            IsolationError::Unavailable { .. } => "unavailable",
        }
    }

    /// Maps the handler's error type, keeping every other variant.
    pub fn map_handler<F>(self, map: impl FnOnce(E) -> F) -> IsolationError<F> {
        match self {
            IsolationError::Handler(e) => IsolationError::Handler(map(e)),
            IsolationError::Timeout {
                timeout,
                escalated_to_kill,
            } => IsolationError::Timeout {
                timeout,
                escalated_to_kill,
            },
            IsolationError::Killed(reason) => IsolationError::Killed(reason),
            IsolationError::Crashed(reason) => IsolationError::Crashed(reason),
            IsolationError::Unavailable { reason } => IsolationError::Unavailable { reason },
        }
    }
}

/// The limit a child broke, for which it was killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[non_exhaustive]
pub enum KillReason {
    /// An allocation would have taken the handler past its heap budget.
    #[error(
        "heap budget of {limit} bytes exceeded{} (peak RSS {peak_rss_bytes} bytes); raise Options::max_heap_size or set it to None",
        requested.map(|n| format!(" by an allocation of {n} bytes")).unwrap_or_default()
    )]
    MaxHeapSize {
        /// The budget in bytes (`Options::max_heap_size`).
        limit: u64,
        /// The size of the allocation that failed, when the child reported it.
        requested: Option<u64>,
        /// Peak resident set size of the child in bytes.
        peak_rss_bytes: u64,
    },
}

/// The way a child ended without returning a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[non_exhaustive]
pub enum CrashReason {
    /// The handler panicked and the panic unwound.
    #[error("panicked at {}: {message}", location.as_deref().unwrap_or("<unknown>"))]
    Panic {
        /// The panic message; `Box<dyn Any>` for a payload that is not a string.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The handler overflowed its stack.
    #[error("stack overflow")]
    StackOverflow {
        /// The last bytes the child wrote to stderr.
        stderr_tail: String,
    },
    /// The child aborted: `process::abort`, a panic while panicking, or a
    /// panic in a destructor during unwinding.
    #[error("aborted{}", tail_suffix(stderr_tail))]
    Abort {
        /// The last bytes the child wrote to stderr.
        stderr_tail: String,
    },
    /// The child was killed by a signal other than the executor's own.
    #[error("{}", describe_signal(*number, name, *core_dumped))]
    Signal {
        /// The signal number.
        number: i32,
        /// The signal name, such as `SIGSEGV`.
        name: String,
        /// Whether the kernel wrote a core dump (the child runs with
        /// `RLIMIT_CORE` 0, so normally false).
        core_dumped: bool,
    },
    /// The handler called `process::exit` (or `libc::exit`) with `code`.
    #[error("handler called exit with code {code}")]
    Exit {
        /// The exit code.
        code: i32,
    },
    /// The child exited without a result and without calling `exit`, for
    /// example after `exec` of another program or a direct `_exit`.
    #[error("child exited with code {code} without returning a result")]
    NoResult {
        /// The exit code.
        code: i32,
    },
    /// The child's result could not be read or decoded.
    #[error("protocol error: {detail}")]
    Protocol {
        /// The fault and how to fix it.
        detail: String,
    },
    /// The shepherd process running the execution died, for example because
    /// the handler or another process killed it.
    #[error("shepherd lost: {detail}")]
    ShepherdLost {
        /// The way the shepherd ended.
        detail: String,
    },
}

fn tail_suffix(tail: &str) -> String {
    let trimmed = tail.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        let last = trimmed.lines().last().unwrap_or_default();
        format!(": {last}")
    }
}

fn describe_signal(number: i32, name: &str, core_dumped: bool) -> String {
    let core = if core_dumped { " (core dumped)" } else { "" };
    format!("signal: {number} ({name}){core}")
}

/// Returns the conventional name of a Linux signal number, such as `SIGSEGV`.
pub fn signal_name(number: i32) -> String {
    let name = match number {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        n if (34..=64).contains(&n) => return format!("SIGRTMIN+{}", n - 34),
        _ => return format!("signal {number}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_display_matches_std_style() {
        let reason = CrashReason::Signal {
            number: 11,
            name: signal_name(11),
            core_dumped: false,
        };
        assert_eq!(reason.to_string(), "signal: 11 (SIGSEGV)");
        let dumped = CrashReason::Signal {
            number: 6,
            name: signal_name(6),
            core_dumped: true,
        };
        assert_eq!(dumped.to_string(), "signal: 6 (SIGABRT) (core dumped)");
    }

    #[test]
    fn signal_name_covers_realtime_and_unknown() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(35), "SIGRTMIN+1");
        assert_eq!(signal_name(99), "signal 99");
    }

    #[test]
    fn timeout_display_mentions_escalation() {
        let error: IsolationError<()> = IsolationError::Timeout {
            timeout: Duration::from_millis(100),
            escalated_to_kill: true,
        };
        assert_eq!(
            error.to_string(),
            "timed out after 100 ms (SIGKILL after the grace period)"
        );
    }

    #[test]
    fn abort_display_shows_last_stderr_line() {
        let reason = CrashReason::Abort {
            stderr_tail: "first\nmemory allocation of 8 bytes failed\n".into(),
        };
        assert_eq!(
            reason.to_string(),
            "aborted: memory allocation of 8 bytes failed"
        );
    }
}
