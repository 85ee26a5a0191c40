//! Classification of a shepherd's report into the caller's result.
//!
//! This is a pure function of the report and the options, so every row of
//! the outcome table is unit-tested here without processes. The integration
//! tests check the same rows with real children.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{CrashReason, IsolationError, KillReason, signal_name};
use crate::protocol::{ChildResult, Report, decode_records};

/// Inputs of the classifier besides the report.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The timeout of the execution.
    pub timeout: Duration,
    /// The heap budget, if any.
    pub max_heap_size: Option<u64>,
    /// The maximum result size.
    pub max_result_size: u64,
}

/// The end of the child's process, decoded from a Linux wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Normal exit with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
    /// Any other status (stopped, continued); not expected after a reap.
    Other(i32),
}

/// Decodes a raw wait status as Linux encodes it.
pub fn termination(status: i32) -> Termination {
    let low = status & 0x7f;
    if low == 0 {
        Termination::Exited((status >> 8) & 0xff)
    } else if low != 0x7f {
        Termination::Signaled {
            signal: low,
            core_dumped: status & 0x80 != 0,
        }
    } else {
        Termination::Other(status)
    }
}

const SIGABRT: i32 = 6;

/// Text std's default allocation-failure hook prints before it aborts.
const ALLOC_FAILED_PREFIX: &str = "memory allocation of ";
const ALLOC_FAILED_SUFFIX: &str = " bytes failed";

/// Finds the first "memory allocation of N bytes failed" line in the stderr
/// tail and returns N. The first is the handler's own allocation; later ones
/// come from std trying to print a backtrace afterwards.
fn allocation_failure(stderr: &str) -> Option<Option<u64>> {
    let line = stderr
        .lines()
        .find(|line| line.contains(ALLOC_FAILED_PREFIX) && line.contains(ALLOC_FAILED_SUFFIX))?;
    let start = line.find(ALLOC_FAILED_PREFIX)? + ALLOC_FAILED_PREFIX.len();
    let end = line[start..].find(ALLOC_FAILED_SUFFIX)? + start;
    Some(line[start..end].trim().parse().ok())
}

/// Turns a report into the caller's result.
pub fn classify<O, E>(report: &Report, limits: &Limits) -> Result<O, IsolationError<E>>
where
    O: DeserializeOwned,
    E: DeserializeOwned,
{
    if let Some(failure) = &report.spawn_failure {
        return Err(IsolationError::Unavailable {
            reason: format!("the shepherd could not start a child: {failure}"),
        });
    }
    if report.cancelled {
        return Err(IsolationError::Unavailable {
            reason: "the execution was cancelled because its supervisor shut down".into(),
        });
    }
    if report.timed_out {
        return Err(IsolationError::Timeout {
            timeout: limits.timeout,
            escalated_to_kill: report.escalated_to_kill,
        });
    }

    let stderr = String::from_utf8_lossy(&report.stderr_tail).into_owned();
    let records = decode_records(&report.records);

    match termination(report.wait_status) {
        Termination::Signaled {
            signal,
            core_dumped,
        } => {
            if signal == SIGABRT {
                if let (Some(limit), Some(requested)) =
                    (limits.max_heap_size, allocation_failure(&stderr))
                {
                    return Err(IsolationError::Killed(KillReason::MaxHeapSize {
                        limit,
                        requested,
                        peak_rss_bytes: report.peak_rss_bytes,
                    }));
                }
            }
            if records.stack_overflow {
                return Err(IsolationError::Crashed(CrashReason::StackOverflow {
                    stderr_tail: stderr,
                }));
            }
            if signal == SIGABRT {
                return Err(IsolationError::Crashed(CrashReason::Abort {
                    stderr_tail: stderr,
                }));
            }
            Err(IsolationError::Crashed(CrashReason::Signal {
                number: signal,
                name: signal_name(signal),
                core_dumped,
            }))
        }
        Termination::Other(status) => Err(IsolationError::Crashed(CrashReason::Protocol {
            detail: format!("unexpected wait status {status:#x}"),
        })),
        Termination::Exited(code) => classify_exit(code, report, records, limits),
    }
}

fn classify_exit<O, E>(
    code: i32,
    report: &Report,
    records: crate::protocol::ChildRecords,
    limits: &Limits,
) -> Result<O, IsolationError<E>>
where
    O: DeserializeOwned,
    E: DeserializeOwned,
{
    let protocol = |detail: String| Err(IsolationError::Crashed(CrashReason::Protocol { detail }));

    if report.records_total > report.records.len() as u64 {
        return protocol(format!(
            "the result is {} bytes, over the max_result_size of {} bytes; raise Options::max_result_size",
            report
                .records_total
                .saturating_sub(crate::protocol::record::HEADER_LEN as u64),
            limits.max_result_size
        ));
    }
    // The shepherd reads a little past the limit to leave room for record
    // headers and markers, so a result up to that slack arrives whole and is
    // checked here.
    if let Some(ChildResult::Ok(bytes) | ChildResult::Err(bytes)) = &records.result {
        if bytes.len() as u64 > limits.max_result_size {
            return protocol(format!(
                "the result is {} bytes, over the max_result_size of {} bytes; raise Options::max_result_size",
                bytes.len(),
                limits.max_result_size
            ));
        }
    }
    match records.result {
        Some(ChildResult::Ok(bytes)) => postcard::from_bytes::<O>(bytes).map_err(|e| {
            IsolationError::Crashed(CrashReason::Protocol {
                detail: format!(
                    "failed to decode the handler's output as {}: {e}; check that its Serialize and Deserialize impls round-trip",
                    std::any::type_name::<O>()
                ),
            })
        }),
        Some(ChildResult::Err(bytes)) => match postcard::from_bytes::<E>(bytes) {
            Ok(error) => Err(IsolationError::Handler(error)),
            Err(e) => protocol(format!(
                "failed to decode the handler's error as {}: {e}; check that its Serialize and Deserialize impls round-trip",
                std::any::type_name::<E>()
            )),
        },
        Some(ChildResult::Panic { message, location }) => {
            Err(IsolationError::Crashed(CrashReason::Panic { message, location }))
        }
        Some(ChildResult::Failure(detail)) => protocol(detail),
        None => {
            if let Some(malformed) = records.malformed {
                return protocol(malformed);
            }
            if records.exit_called {
                Err(IsolationError::Crashed(CrashReason::Exit { code }))
            } else {
                Err(IsolationError::Crashed(CrashReason::NoResult { code }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_panic, encode_record, record};

    type Outcome = Result<u32, IsolationError<String>>;

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_millis(100),
            max_heap_size: Some(8_000_000),
            max_result_size: 1 << 20,
        }
    }

    fn exited(code: i32, records: Vec<u8>) -> Report {
        Report {
            wait_status: code << 8,
            records_total: records.len() as u64,
            records,
            ..Report::default()
        }
    }

    fn signaled(signal: i32, stderr: &str) -> Report {
        Report {
            wait_status: signal,
            stderr_tail: stderr.as_bytes().to_vec(),
            peak_rss_bytes: 1 << 20,
            ..Report::default()
        }
    }

    fn run(report: &Report) -> Outcome {
        classify(report, &limits())
    }

    #[test]
    fn ok_record_gives_value() {
        let bytes = postcard::to_stdvec(&42u32).unwrap();
        assert_eq!(run(&exited(0, encode_record(record::OK, &bytes))), Ok(42));
    }

    #[test]
    fn err_record_gives_handler_error() {
        let bytes = postcard::to_stdvec(&"nope".to_string()).unwrap();
        assert_eq!(
            run(&exited(0, encode_record(record::ERR, &bytes))),
            Err(IsolationError::Handler("nope".into()))
        );
    }

    #[test]
    fn timeout_wins_over_everything() {
        let mut report = signaled(9, "memory allocation of 5 bytes failed");
        report.timed_out = true;
        report.escalated_to_kill = true;
        assert_eq!(
            run(&report),
            Err(IsolationError::Timeout {
                timeout: Duration::from_millis(100),
                escalated_to_kill: true
            })
        );
    }

    #[test]
    fn allocation_failure_abort_is_heap_kill() {
        let report = signaled(6, "noise\nmemory allocation of 104857600 bytes failed\n");
        assert_eq!(
            run(&report),
            Err(IsolationError::Killed(KillReason::MaxHeapSize {
                limit: 8_000_000,
                requested: Some(104_857_600),
                peak_rss_bytes: 1 << 20
            }))
        );
    }

    #[test]
    fn allocation_failure_without_budget_is_abort() {
        let report = signaled(6, "memory allocation of 5 bytes failed\n");
        let outcome: Outcome = classify(
            &report,
            &Limits {
                max_heap_size: None,
                ..limits()
            },
        );
        assert!(matches!(
            outcome,
            Err(IsolationError::Crashed(CrashReason::Abort { .. }))
        ));
    }

    #[test]
    fn plain_abort_is_abort_with_tail() {
        let report = signaled(6, "fatal runtime error: something\n");
        assert_eq!(
            run(&report),
            Err(IsolationError::Crashed(CrashReason::Abort {
                stderr_tail: "fatal runtime error: something\n".into()
            }))
        );
    }

    #[test]
    fn stack_overflow_marker_with_signal() {
        let mut report = signaled(11, "thread overflowed its stack\n");
        report.records = encode_record(record::STACK_OVERFLOW, &[]);
        report.records_total = report.records.len() as u64;
        assert!(matches!(
            run(&report),
            Err(IsolationError::Crashed(CrashReason::StackOverflow { .. }))
        ));
    }

    #[test]
    fn segv_is_signal() {
        assert_eq!(
            run(&signaled(11, "")),
            Err(IsolationError::Crashed(CrashReason::Signal {
                number: 11,
                name: "SIGSEGV".into(),
                core_dumped: false
            }))
        );
    }

    #[test]
    fn core_dump_bit_is_reported() {
        let report = signaled(11 | 0x80, "");
        assert!(matches!(
            run(&report),
            Err(IsolationError::Crashed(CrashReason::Signal {
                core_dumped: true,
                ..
            }))
        ));
    }

    #[test]
    fn panic_record_gives_panic() {
        let records = encode_record(record::PANIC, &encode_panic("boom", Some("a.rs:1:1")));
        assert_eq!(
            run(&exited(0, records)),
            Err(IsolationError::Crashed(CrashReason::Panic {
                message: "boom".into(),
                location: Some("a.rs:1:1".into())
            }))
        );
    }

    #[test]
    fn exit_marker_gives_exit_code() {
        let records = encode_record(record::EXIT_CALLED, &[]);
        assert_eq!(
            run(&exited(3, records)),
            Err(IsolationError::Crashed(CrashReason::Exit { code: 3 }))
        );
    }

    #[test]
    fn silent_exit_gives_no_result() {
        assert_eq!(
            run(&exited(0, Vec::new())),
            Err(IsolationError::Crashed(CrashReason::NoResult { code: 0 }))
        );
    }

    #[test]
    fn oversized_result_names_the_limit() {
        let mut report = exited(0, encode_record(record::OK, &[0; 16]));
        report.records_total = 5 << 20;
        let Err(IsolationError::Crashed(CrashReason::Protocol { detail })) = run(&report) else {
            panic!("expected a protocol error");
        };
        assert!(
            detail.contains("max_result_size of 1048576 bytes"),
            "{detail}"
        );
    }

    #[test]
    fn whole_result_over_limit_is_protocol() {
        let bytes = postcard::to_stdvec(&"x".repeat(2000)).unwrap();
        let report = exited(0, encode_record(record::OK, &bytes));
        let Err(IsolationError::Crashed(CrashReason::Protocol { detail })) =
            classify::<String, String>(
                &report,
                &Limits {
                    max_result_size: 100,
                    ..limits()
                },
            )
        else {
            panic!("expected a protocol error");
        };
        assert!(
            detail.contains("the result is 2002 bytes, over the max_result_size of 100 bytes"),
            "{detail}"
        );
    }

    #[test]
    fn undecodable_output_is_protocol() {
        let records = encode_record(record::OK, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            run(&exited(0, records)),
            Err(IsolationError::Crashed(CrashReason::Protocol { .. }))
        ));
    }

    #[test]
    fn truncated_record_is_protocol() {
        let mut records = encode_record(record::OK, &[1, 2, 3, 4]);
        records.truncate(10);
        assert!(matches!(
            run(&exited(0, records)),
            Err(IsolationError::Crashed(CrashReason::Protocol { .. }))
        ));
    }

    #[test]
    fn cancelled_and_spawn_failure_are_unavailable() {
        let cancelled = Report {
            cancelled: true,
            ..Report::default()
        };
        assert!(matches!(
            run(&cancelled),
            Err(IsolationError::Unavailable { .. })
        ));
        let failed = Report {
            spawn_failure: Some("fork failed".into()),
            ..Report::default()
        };
        assert!(matches!(
            run(&failed),
            Err(IsolationError::Unavailable { .. })
        ));
    }

    #[test]
    fn termination_decodes_linux_statuses() {
        assert_eq!(termination(3 << 8), Termination::Exited(3));
        assert_eq!(
            termination(9),
            Termination::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(termination(0x137f), Termination::Other(0x137f));
    }
}
