//! Limits and settings of one execution.

use std::time::Duration;

use crate::supervisor::Supervisor;

/// Default wall-clock timeout: 30 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default heap budget: 8,000,000 bytes (1,000,000 eight-byte words).
pub const DEFAULT_MAX_HEAP_SIZE: u64 = 8_000_000;
/// Default time between SIGTERM and SIGKILL: 500 milliseconds.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Default maximum size of a serialized result: 128 MiB.
pub const DEFAULT_MAX_RESULT_SIZE: u64 = 128 << 20;
/// Default number of trailing bytes kept of stdout and of stderr: 8 KiB each.
pub const DEFAULT_OUTPUT_TAIL: usize = 8 << 10;

/// Limits and settings of one execution.
///
/// Build it from [`defaults()`] with the consuming methods of the same names
/// as the fields:
///
/// ```
/// use std::time::Duration;
/// let options = isolated_executor::defaults()
///     .timeout(Duration::from_millis(100))
///     .max_heap_size(1 << 20);
/// assert_eq!(options.max_heap_size, Some(1 << 20));
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// Wall-clock time the child may run, counted from the moment its process
    /// starts (time spent waiting for a free shepherd does not count). When it
    /// passes, the child's process group gets SIGTERM, then SIGKILL after
    /// `shutdown_grace`. Default: 30 s.
    pub timeout: Duration,
    /// Heap budget in bytes, counted from the moment the handler starts, so
    /// the executable's own memory and the request do not count against it.
    /// It covers every private writable mapping the handler adds (`malloc`,
    /// `mmap`, thread stacks), in every thread; the main thread's stack does
    /// not count. `None` sets no budget. Default: 8,000,000 bytes.
    pub max_heap_size: Option<u64>,
    /// Time between SIGTERM and SIGKILL when the deadline passes or the
    /// execution is cancelled. Zero sends SIGKILL at once. Default: 500 ms.
    pub shutdown_grace: Duration,
    /// The supervisor whose shepherds run the execution; `None` selects
    /// [`Supervisor::global()`]. Default: `None`.
    pub supervisor: Option<Supervisor>,
    /// Maximum size in bytes of the serialized result (output or error). A
    /// larger result gives `CrashReason::Protocol`. Default: 128 MiB.
    pub max_result_size: u64,
    /// Number of trailing bytes of the child's stdout and of its stderr kept
    /// for the outcome and the report; the rest is read and dropped.
    /// Default: 8 KiB each.
    pub output_tail: usize,
}

/// Returns the default options: timeout 30 s, heap budget 8,000,000 bytes,
/// grace 500 ms, the global supervisor.
pub fn defaults() -> Options {
    Options {
        timeout: DEFAULT_TIMEOUT,
        max_heap_size: Some(DEFAULT_MAX_HEAP_SIZE),
        shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        supervisor: None,
        max_result_size: DEFAULT_MAX_RESULT_SIZE,
        output_tail: DEFAULT_OUTPUT_TAIL,
    }
}

impl Default for Options {
    fn default() -> Self {
        defaults()
    }
}

impl Options {
    /// Sets [`Options::timeout`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Options::max_heap_size`] in bytes; accepts a number or `None`.
    #[must_use]
    pub fn max_heap_size(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.max_heap_size = bytes.into();
        self
    }

    /// Sets [`Options::shutdown_grace`].
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets [`Options::supervisor`]; accepts a `Supervisor` or `None`.
    #[must_use]
    pub fn supervisor(mut self, supervisor: impl Into<Option<Supervisor>>) -> Self {
        self.supervisor = supervisor.into();
        self
    }

    /// Sets [`Options::max_result_size`] in bytes.
    #[must_use]
    pub fn max_result_size(mut self, bytes: u64) -> Self {
        self.max_result_size = bytes;
        self
    }

    /// Sets [`Options::output_tail`] in bytes.
    #[must_use]
    pub fn output_tail(mut self, bytes: usize) -> Self {
        self.output_tail = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_documented_values() {
        let options = defaults();
        assert_eq!(options.timeout, Duration::from_secs(30));
        assert_eq!(options.max_heap_size, Some(8_000_000));
        assert_eq!(options.shutdown_grace, Duration::from_millis(500));
        assert!(options.supervisor.is_none());
        assert_eq!(options.max_result_size, 128 << 20);
    }

    #[test]
    fn builder_sets_fields() {
        let options = Options::default()
            .timeout(Duration::from_millis(100))
            .max_heap_size(None)
            .shutdown_grace(Duration::ZERO);
        assert_eq!(options.timeout, Duration::from_millis(100));
        assert_eq!(options.max_heap_size, None);
        assert_eq!(options.shutdown_grace, Duration::ZERO);
    }
}
