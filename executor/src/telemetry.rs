//! The telemetry event emitted once per execution.
//!
//! After the outcome is known, the calling thread (for the async
//! functions, the task that awaits the future) emits one `tracing` event
//! with target [`TARGET`] and the message `isolated execution finished`.
//! The event is inside a debug span named [`SPAN_NAME`] whose only field is
//! `handler`, and that span is a child of the span current at the call. A
//! dropped async future emits no event. The library never installs a
//! subscriber.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `handler` | string | the handler's [`name`](crate::Handler::name) |
//! | `result` | string | `ok`, `error`, `timeout`, `killed`, `crashed` or `unavailable` |
//! | `reason` | string | the `Display` text of the error; empty for `ok` |
//! | `duration_us` | u64 | wall-clock time of the whole call in microseconds |
//! | `queue_wait_us` | u64 | time spent waiting for a free shepherd in microseconds |
//! | `pid` | u64 | the child's pid; 0 when no child started, or when the shepherd was lost before it reported the start |
//! | `peak_rss_bytes` | u64 | peak resident set size of the child; 0 when no child ran, or when the shepherd was lost before its report |
//!
//! Levels: `INFO` for `ok` and `error`, `WARN` for `timeout`, `killed` and
//! `crashed`, `ERROR` for `unavailable`.

use tracing::Level;

use crate::report::ExecutionReport;

/// Target of the telemetry event.
pub const TARGET: &str = "isolated_executor::isolation";
/// Name of the span around each execution.
pub const SPAN_NAME: &str = "isolated_execution";

/// Returns the level used for a `result` category.
pub fn level_of(category: &str) -> Level {
    match category {
        "ok" | "error" => Level::INFO,
        "unavailable" => Level::ERROR,
        _ => Level::WARN,
    }
}

/// Registers one idle dispatcher for the life of the process, before the
/// first telemetry event.
///
/// tracing-core 0.1.36 computes a new callsite's interest from the
/// registering thread's own dispatcher whenever exactly one dispatcher is
/// registered. A test that records events with a scoped subscriber
/// (`tracing::subscriber::with_default`) would then miss the telemetry
/// event whenever another thread without a subscriber emitted it first:
/// that thread caches "never" for the callsite. With a second registered
/// dispatcher, tracing-core queries every registered one.
pub(crate) fn register_idle_dispatcher() {
    static IDLE: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    IDLE.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

/// Emits the event for a finished execution.
pub(crate) fn emit<T, E>(report: &ExecutionReport<T, E>) {
    let result = report.category();
    let reason = match &report.outcome {
        Ok(_) => String::new(),
        Err(error) => error.to_string(),
    };
    let handler = report.handler;
    let duration_us = u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX);
    let queue_wait_us = u64::try_from(report.queue_wait.as_micros()).unwrap_or(u64::MAX);
    let pid = u64::from(report.pid.unwrap_or(0));
    let peak_rss_bytes = report.peak_rss_bytes;
    macro_rules! event_at {
        ($level:expr) => {
            tracing::event!(
                target: "isolated_executor::isolation",
                $level,
                handler,
                result,
                reason = reason.as_str(),
                duration_us,
                queue_wait_us,
                pid,
                peak_rss_bytes,
                "isolated execution finished"
            )
        };
    }
    match level_of(result) {
        Level::INFO => event_at!(Level::INFO),
        Level::ERROR => event_at!(Level::ERROR),
        _ => event_at!(Level::WARN),
    }
}
