//! Measurement helpers for the `isolation` benchmark: timing loops, sample
//! statistics, the fork floor and the printed table.
//!
//! The benchmark itself lives in `benches/isolation.rs`; run it with
//! `cargo bench -p isolated-bench`.

use std::io;
use std::time::{Duration, Instant};

/// Durations of repeated runs of one operation, sorted ascending.
#[derive(Debug, Clone)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    /// Collects `samples`.
    ///
    /// # Panics
    ///
    /// When `samples` is empty.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        assert!(
            !samples.is_empty(),
            "Samples::new needs at least one sample"
        );
        samples.sort_unstable();
        Samples { sorted: samples }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Always false, because a `Samples` contains at least one sample.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Iterates over the samples in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Duration> + '_ {
        self.sorted.iter().copied()
    }

    /// Arithmetic mean.
    pub fn mean(&self) -> Duration {
        let total: Duration = self.sorted.iter().sum();
        total / self.sorted.len() as u32
    }

    /// Returns the nearest-rank percentile: the smallest sample with at
    /// least `percent` % of the samples at or below it. `percent` is clamped
    /// to 0..=100, and 0 gives the minimum.
    pub fn percentile(&self, percent: f64) -> Duration {
        let percent = percent.clamp(0.0, 100.0);
        let rank = (percent / 100.0 * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.saturating_sub(1).min(self.sorted.len() - 1)]
    }

    /// Returns the smallest sample.
    pub fn min(&self) -> Duration {
        self.sorted[0]
    }

    /// Returns the largest sample.
    pub fn max(&self) -> Duration {
        self.sorted[self.sorted.len() - 1]
    }
}

/// Runs `operation` `warmup` times untimed, then `runs` times timed one by
/// one.
pub fn time_each(warmup: usize, runs: usize, mut operation: impl FnMut()) -> Samples {
    for _ in 0..warmup {
        operation();
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        operation();
        samples.push(start.elapsed());
    }
    Samples::new(samples)
}

/// Number of threads of this process, from `/proc/self/task`.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Measures the fork floor: `runs` times one `fork()`, `_exit(0)` in the
/// child and `waitpid` in the parent, after `warmup` untimed ones. This is
/// the least that any process-per-call isolation can cost.
///
/// # Errors
///
/// When `fork` or `waitpid` fails, or this process has more than one
/// thread: forking a multithreaded process measures something else, and
/// its child could only call async-signal-safe functions.
pub fn measure_fork_floor(warmup: usize, runs: usize) -> io::Result<Samples> {
    if thread_count()? != 1 {
        return Err(io::Error::other(
            "the fork floor must be measured before any thread starts",
        ));
    }
    for _ in 0..warmup {
        fork_exit_wait()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        fork_exit_wait()?;
        samples.push(start.elapsed());
    }
    Ok(Samples::new(samples))
}

/// Forks once, exits the child with `_exit(0)` and reaps it. Only
/// `measure_fork_floor` calls it, after checking that this process has one
/// thread.
fn fork_exit_wait() -> io::Result<()> {
    // SAFETY: `measure_fork_floor` checked that this process has one
    // thread, and it starts none, so the child inherits no lock that
    // another thread held. The child only calls `_exit`, which is
    // async-signal-safe anyway.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: `_exit` ends the child at once, running no destructor or
        // atexit handler that belongs to the parent.
        unsafe { libc::_exit(0) };
    }

    let mut status = 0;
    loop {
        // SAFETY: `status` is valid for writes; `pid` is our own child.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the forked child ended with wait status {status:#x}"
        )))
    }
}

/// Formats a duration in microseconds with one decimal.
pub fn micros(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e6)
}

/// Formats a duration in milliseconds with two decimals.
pub fn millis(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1e3)
}

/// `value / floor` with two decimals.
pub fn ratio(value: Duration, floor: Duration) -> String {
    format!("{:.2}", value.as_secs_f64() / floor.as_secs_f64())
}

/// Bytes per second as decimal megabytes per second.
pub fn megabytes_per_second(bytes: u64, duration: Duration) -> f64 {
    bytes as f64 / duration.as_secs_f64() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis_samples(values: &[u64]) -> Samples {
        Samples::new(values.iter().map(|&v| Duration::from_millis(v)).collect())
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples = millis_samples(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(samples.percentile(50.0), Duration::from_millis(5));
        assert_eq!(samples.percentile(90.0), Duration::from_millis(9));
        assert_eq!(samples.percentile(99.0), Duration::from_millis(10));
        assert_eq!(samples.percentile(0.0), Duration::from_millis(1));
        assert_eq!(samples.percentile(100.0), Duration::from_millis(10));
    }

    #[test]
    fn mean_min_max_of_samples() {
        let samples = millis_samples(&[3, 1, 2]);
        assert_eq!(samples.mean(), Duration::from_millis(2));
        assert_eq!(samples.min(), Duration::from_millis(1));
        assert_eq!(samples.max(), Duration::from_millis(3));
        assert_eq!(samples.len(), 3);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let samples = millis_samples(&[7]);
        assert_eq!(samples.percentile(1.0), Duration::from_millis(7));
        assert_eq!(samples.percentile(99.9), Duration::from_millis(7));
    }

    #[test]
    fn ratio_and_rate_formatting() {
        assert_eq!(
            ratio(Duration::from_micros(300), Duration::from_micros(150)),
            "2.00"
        );
        assert_eq!(micros(Duration::from_nanos(1_260)), "1.3");
        let rate = megabytes_per_second(500_000_000, Duration::from_secs(1));
        assert!((rate - 500.0).abs() < 1e-9, "{rate}");
    }
}
