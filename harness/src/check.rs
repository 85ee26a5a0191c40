//! Property checks whose cases each run in an isolated child process, so an
//! input that hangs, blows up memory or crashes the handler is found,
//! classified and shrunk instead of taking the test process down.
//!
//! [`check_isolated`] generates inputs with a proptest [`Strategy`], runs
//! each through [`execute_isolated_report`] with the limits of
//! [`CheckConfig::options`], and lets proptest's [`TestRunner`] shrink the
//! first failing input. Every shrink step runs in its own child as well.
//!
//! # Writing a check
//!
//! The test crate needs `isolated_executor::enable_test_support!();` at its
//! root, as for any isolated execution. Then one call per property:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use isolated_executor::{Context, Handler};
//! use isolated_harness::check::{CheckConfig, check_isolated};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct ParseConfig;
//!
//! impl Handler for ParseConfig {
//!     type Args = String;
//!     type Output = usize;
//!     type Error = String;
//!     fn execute(&self, text: String, _: &Context) -> Result<usize, String> {
//!         // Call the code under test here; assert properties of its output
//!         // with `assert!`, because a panic in the child is a failure.
//!         Ok(text.lines().count())
//!     }
//! }
//!
//! // In a #[test] function:
//! let config = CheckConfig::new()
//!     .timeout(Duration::from_millis(500))
//!     .max_heap_size(16 << 20)
//!     .cases(128);
//! let report = check_isolated(&ParseConfig, "[a-z=\\[\\]\n]{0,64}", &config);
//! assert_eq!(report.cases, 128);
//! ```
//!
//! A case fails when its outcome is a timeout, a heap-budget kill or any
//! crash (panic, stack overflow, abort, signal, exit without a result). The
//! handler's own `Err` counts as a clean rejection of the input unless
//! [`CheckConfig::fail_on_handler_error`] is set. When the executor cannot
//! run a case at all ([`IsolationError::Unavailable`]), the check stops with
//! a [`FailureKind::Setup`] failure: nothing is shrunk or saved, because the
//! input played no part.
//!
//! # Reading the report
//!
//! [`check_isolated`] panics with the `Display` of [`CheckFailure`]:
//!
//! ```text
//! isolated check of fuzz_parser::Parse failed
//! minimal input: "#4194304:"
//! outcome:       killed: heap budget of 4000000 bytes exceeded by an allocation of 4194304 bytes (peak RSS 11001856 bytes); raise Options::max_heap_size or set it to None
//! child:         ran 4 ms, peak RSS 10.5 MiB
//! search:        case 1 failed (a new case), then 4 shrink steps; 0.02 s in all
//! first failing input: "#13631488:"
//! stderr tail:
//!   | memory allocation of 4194304 bytes failed
//! replay:
//!   - PROPTEST_RNG_SEED=1277556220282346098 regenerates the same cases in the same order
//!   - proptest saved `cc 90945d7f…` with SourceParallel("proptest-regressions") for tests/tests/fuzz_parser.rs; the next run replays it before new cases
//!   - or run the minimal input alone with execute_isolated_report
//! ```
//!
//! [`try_check_isolated`] returns the same data as a value, for assertions
//! on the minimal input and the outcome.
//!
//! # Settings
//!
//! The case count and the shrinking limits come from proptest's
//! [`Config`], so `PROPTEST_CASES`, `PROPTEST_MAX_SHRINK_ITERS`,
//! `PROPTEST_MAX_SHRINK_TIME`, `PROPTEST_RNG_SEED` and
//! `PROPTEST_DISABLE_FAILURE_PERSISTENCE` apply as they do to `proptest!`
//! (`Config::default()` reads them). Two proptest settings are ignored:
//! `fork` and `timeout`, because every case already runs in its own child
//! under [`Options::timeout`].
//!
//! # Regression files
//!
//! Failures are persisted with the proptest `Config::failure_persistence`
//! (by default `FileFailurePersistence::SourceParallel("proptest-regressions")`),
//! keyed by a source file: [`CheckConfig::source_file`], or else the file
//! that calls [`check_isolated`]. Persisted seeds run before new cases on
//! the next run, as with `proptest!`. For a file in `tests/`, proptest finds
//! no `lib.rs` beside it and writes `<file>.proptest-regressions` next to
//! it.
//!
//! # Caveats
//!
//! Each failing shrink step of a hanging input waits for the full timeout,
//! so keep [`Options::timeout`] short (the default here is
//! [`DEFAULT_CHECK_TIMEOUT`]) or bound shrinking with
//! `PROPTEST_MAX_SHRINK_TIME`. Cases run one at a time.

mod persistence;
mod report;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use isolated_executor::{
    Context, ExecutionReport, Handler, IsolationError, Options, defaults, execute_isolated_report,
};
use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config, FailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};

use self::persistence::{PersistenceLog, RecordingPersistence, lock};
pub use self::report::{CheckFailure, CheckReport, FailureKind, Replay};

/// Timeout per case of [`CheckConfig::new`]: 2 s. Shorter than the
/// executor's default because a hanging input is run again at every
/// failing shrink step.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of a check: the limits of each isolated case, the context
/// passed to the handler, proptest's configuration and what counts as a
/// failure.
///
/// ```
/// use std::time::Duration;
/// use isolated_harness::check::CheckConfig;
///
/// let config = CheckConfig::new()
///     .timeout(Duration::from_millis(300))
///     .max_heap_size(4_000_000)
///     .cases(64)
///     .fail_on_handler_error(true);
/// assert_eq!(config.proptest.cases, 64);
/// assert_eq!(config.options.max_heap_size, Some(4_000_000));
/// ```
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Limits of each case. Default: [`defaults()`] with the timeout set to
    /// [`DEFAULT_CHECK_TIMEOUT`], so a heap budget of 8,000,000 bytes.
    pub options: Options,
    /// Context passed to every case. Default: empty.
    pub context: Context,
    /// Case count, shrinking limits, RNG and failure persistence.
    /// Default: `Config::default()`, which reads the `PROPTEST_*`
    /// environment variables. Its `fork` and `timeout` are ignored.
    pub proptest: Config,
    /// Whether the handler's own `Err` fails the check. Default: false, so
    /// an `Err` counts as a clean rejection of the input.
    pub fail_on_handler_error: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckConfig {
    /// Creates the default configuration (see the field docs).
    pub fn new() -> Self {
        CheckConfig {
            options: defaults().timeout(DEFAULT_CHECK_TIMEOUT),
            context: Context::new(),
            proptest: Config::default(),
            fail_on_handler_error: false,
        }
    }

    /// Replaces the limits of each case.
    #[must_use]
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Sets the wall-clock timeout of each case.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// Sets the heap budget of each case in bytes; `None` sets no budget.
    #[must_use]
    pub fn max_heap_size(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.options.max_heap_size = bytes.into();
        self
    }

    /// Sets the context passed to every case.
    #[must_use]
    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// Replaces proptest's configuration.
    #[must_use]
    pub fn proptest(mut self, config: Config) -> Self {
        self.proptest = config;
        self
    }

    /// Sets the number of new cases, overriding `PROPTEST_CASES`.
    #[must_use]
    pub fn cases(mut self, cases: u32) -> Self {
        self.proptest.cases = cases;
        self
    }

    /// Sets whether the handler's own `Err` fails the check.
    #[must_use]
    pub fn fail_on_handler_error(mut self, fail: bool) -> Self {
        self.fail_on_handler_error = fail;
        self
    }

    /// Stores failures with `persistence`, for example
    /// `FileFailurePersistence::Direct("tests/parser.regressions")`.
    #[must_use]
    pub fn failure_persistence(mut self, persistence: impl FailurePersistence + 'static) -> Self {
        self.proptest.failure_persistence = Some(Box::new(persistence));
        self
    }

    /// Turns failure persistence off: nothing is loaded or saved.
    #[must_use]
    pub fn no_failure_persistence(mut self) -> Self {
        self.proptest.failure_persistence = None;
        self
    }

    /// Sets the source file that names the regression file, relative to
    /// the working directory or one of its parents (as `file!()` gives it),
    /// or absolute. Default: the file that calls the check.
    #[must_use]
    pub fn source_file(mut self, path: &'static str) -> Self {
        self.proptest.source_file = Some(path);
        self
    }

    /// Fixes the RNG seed, as `PROPTEST_RNG_SEED` does, to regenerate the
    /// cases of an earlier run.
    #[must_use]
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.proptest.rng_seed = RngSeed::Fixed(seed);
        self
    }
}

/// Runs a property check of `handler` over inputs from `strategy`, each in
/// an isolated child process, and returns the summary.
///
/// See the [module documentation](self) for what counts as a failure and
/// how the report reads.
///
/// # Panics
///
/// With the [`CheckFailure`] report when a case fails, and as
/// [`try_check_isolated`] does when proptest aborts the run.
#[track_caller]
pub fn check_isolated<H, S>(handler: &H, strategy: S, config: &CheckConfig) -> CheckReport
where
    H: Handler,
    H::Args: Clone + Debug,
    H::Error: Debug,
    S: Strategy<Value = H::Args>,
{
    match try_check_isolated(handler, strategy, config) {
        Ok(report) => report,
        Err(failure) => panic!("{failure}"),
    }
}

/// Runs a property check like [`check_isolated`] and returns the failure
/// instead of panicking.
///
/// # Errors
///
/// A [`CheckFailure`] of kind [`FailureKind::Property`], with the shrunk
/// input, when a case timed out, was killed, crashed, or returned an error
/// counted as a failure. A [`CheckFailure`] of kind [`FailureKind::Setup`]
/// when the executor could not run a case.
///
/// # Panics
///
/// When proptest aborts the run without a failing case, which happens when
/// the strategy cannot generate a value (for example a `prop_filter` that
/// rejects too many).
// A check returns at most one failure, after many child processes, so
// moving it unboxed costs nothing measurable and keeps fields reachable.
#[allow(clippy::result_large_err)]
#[track_caller]
pub fn try_check_isolated<H, S>(
    handler: &H,
    strategy: S,
    config: &CheckConfig,
) -> Result<CheckReport, CheckFailure<H::Args, H::Error>>
where
    H: Handler,
    H::Args: Clone + Debug,
    S: Strategy<Value = H::Args>,
{
    let caller_file = std::panic::Location::caller().file();
    let span = tracing::info_span!("isolated_check", handler = handler.name());
    let _entered = span.enter();
    let started = Instant::now();

    let setup = RunnerSetup::new(&config.proptest, caller_file);
    let mut runner = TestRunner::new(setup.config.clone());
    let progress = RefCell::new(Progress::default());

    let result = runner.run(&strategy, |input: H::Args| {
        run_case(handler, input, config, &progress, &setup)
    });

    let progress = progress.into_inner();
    let log = setup.log.as_ref().map(|log| {
        let log = lock(log);
        (log.loaded, log.saved.clone())
    });
    let (loaded, saved) = log.unwrap_or((0, None));
    let summary = Summary {
        handler: handler.name(),
        loaded,
        rng_seed: setup.rng_seed,
        duration: started.elapsed(),
    };

    let outcome = match result {
        Ok(()) => Ok(summary.report(&progress)),
        Err(TestError::Fail(_, minimal)) => {
            let replay = Replay {
                rng_seed: setup.rng_seed,
                persisted_seed: saved,
                source_file: setup.config.source_file,
                persistence: setup.persistence_name.clone(),
            };
            Err(summary.failure(progress, minimal, replay))
        }
        Err(TestError::Abort(reason)) => {
            panic!(
                "proptest aborted the isolated check of {} after {} cases: {reason}; \
                 check that the strategy can generate values (a prop_filter may reject too many)",
                handler.name(),
                progress.executions
            )
        }
    };
    emit(&outcome, &summary);
    outcome
}

/// The proptest configuration of one check and what was derived from it.
struct RunnerSetup {
    config: Config,
    rng_seed: u64,
    persistence_name: Option<String>,
    log: Option<Arc<Mutex<PersistenceLog>>>,
}

impl RunnerSetup {
    fn new(config: &Config, caller_file: &'static str) -> Self {
        let mut config = config.clone();

        // Each case is already a child process with its own timeout. A
        // forking runner would also lose the outcomes recorded below.
        config.fork = false;
        config.timeout = 0;

        // A fixed seed can be printed, so the report shows the seed that
        // regenerates the run.
        let rng_seed = match config.rng_seed {
            RngSeed::Fixed(seed) => seed,
            RngSeed::Random => random_seed(),
        };
        config.rng_seed = RngSeed::Fixed(rng_seed);

        if config.source_file.is_none() {
            config.source_file = Some(caller_file);
        }

        let persistence_name = config
            .failure_persistence
            .as_ref()
            .map(|persistence| format!("{persistence:?}"));
        let log = config.failure_persistence.take().map(|inner| {
            let (recording, log) = RecordingPersistence::new(inner);
            config.failure_persistence = Some(Box::new(recording));
            log
        });

        RunnerSetup {
            config,
            rng_seed,
            persistence_name,
            log,
        }
    }

    /// Keeps a setup failure out of the regression file.
    fn suppress_save(&self) {
        if let Some(log) = &self.log {
            lock(log).suppress_save = true;
        }
    }
}

/// Returns a seed from the per-process random keys of `RandomState`, mixed
/// with the clock.
fn random_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}

/// Details of one failing case, kept until the minimal input is known.
struct FailedCase<E> {
    error: IsolationError<E>,
    stderr_tail: String,
    stdout_tail: String,
    peak_rss_bytes: u64,
    child_duration: Duration,
}

impl<E> FailedCase<E> {
    fn new<T>(report: ExecutionReport<T, E>, error: IsolationError<E>) -> Self {
        FailedCase {
            error,
            stderr_tail: report.stderr_tail,
            stdout_tail: report.stdout_tail,
            peak_rss_bytes: report.peak_rss_bytes,
            child_duration: report.child_duration,
        }
    }
}

/// Outcome counts and failing cases of one check, recorded by the test
/// closure.
struct Progress<A, E> {
    /// Cases run in a child so far.
    executions: u32,
    passed: u32,
    handler_errors: u32,
    slowest_case: Duration,
    max_peak_rss_bytes: u64,
    /// The 1-based number of the first failing case, and its input.
    first_failure: Option<(u32, A)>,
    /// Failing cases by the `Debug` text of their input; proptest returns
    /// the minimal input by value, and this finds what it did.
    failures: HashMap<String, FailedCase<E>>,
    last_failure_key: Option<String>,
    /// The input and outcome that showed the executor unavailable.
    setup_failure: Option<(A, FailedCase<E>)>,
}

impl<A, E> Default for Progress<A, E> {
    fn default() -> Self {
        Progress {
            executions: 0,
            passed: 0,
            handler_errors: 0,
            slowest_case: Duration::ZERO,
            max_peak_rss_bytes: 0,
            first_failure: None,
            failures: HashMap::new(),
            last_failure_key: None,
            setup_failure: None,
        }
    }
}

/// Runs one case in a child and turns its outcome into proptest's verdict.
fn run_case<H>(
    handler: &H,
    input: H::Args,
    config: &CheckConfig,
    progress: &RefCell<Progress<H::Args, H::Error>>,
    setup: &RunnerSetup,
) -> Result<(), TestCaseError>
where
    H: Handler,
    H::Args: Clone + Debug,
{
    // After a setup failure the remaining calls are proptest's shrink
    // attempts; passing them ends shrinking without starting children.
    if progress.borrow().setup_failure.is_some() {
        return Ok(());
    }

    let recorded_input = input.clone();
    let mut report = execute_isolated_report(handler, input, &config.context, &config.options);
    // The outcome is taken out so the rest of the report can move into a
    // FailedCase; the placeholder left behind is never read.
    let outcome = std::mem::replace(
        &mut report.outcome,
        Err(IsolationError::Unavailable {
            reason: String::new(),
        }),
    );

    let mut progress = progress.borrow_mut();
    progress.executions += 1;
    progress.slowest_case = progress.slowest_case.max(report.child_duration);
    progress.max_peak_rss_bytes = progress.max_peak_rss_bytes.max(report.peak_rss_bytes);

    let error = match outcome {
        Ok(_) => {
            progress.passed += 1;
            return Ok(());
        }
        Err(IsolationError::Handler(_)) if !config.fail_on_handler_error => {
            progress.handler_errors += 1;
            return Ok(());
        }
        Err(error) => error,
    };

    let message = format!("{}: {error}", error.category());
    if matches!(error, IsolationError::Unavailable { .. }) {
        setup.suppress_save();
        progress.setup_failure = Some((recorded_input, FailedCase::new(report, error)));
        return Err(TestCaseError::fail(message));
    }

    if progress.first_failure.is_none() {
        let number = progress.executions;
        progress.first_failure = Some((number, recorded_input.clone()));
    }
    let key = format!("{recorded_input:?}");
    progress
        .failures
        .insert(key.clone(), FailedCase::new(report, error));
    progress.last_failure_key = Some(key);
    Err(TestCaseError::fail(message))
}

/// Run-wide values that both the report and the failure carry.
struct Summary {
    handler: &'static str,
    loaded: u32,
    rng_seed: u64,
    duration: Duration,
}

impl Summary {
    fn report<A, E>(&self, progress: &Progress<A, E>) -> CheckReport {
        CheckReport {
            handler: self.handler,
            cases: progress.executions.saturating_sub(self.loaded),
            persisted_cases: self.loaded.min(progress.executions),
            passed: progress.passed,
            handler_errors: progress.handler_errors,
            slowest_case: progress.slowest_case,
            max_peak_rss_bytes: progress.max_peak_rss_bytes,
            duration: self.duration,
            rng_seed: self.rng_seed,
        }
    }

    fn failure<A: Clone + Debug, E>(
        &self,
        mut progress: Progress<A, E>,
        minimal: A,
        replay: Replay,
    ) -> CheckFailure<A, E> {
        if let Some((input, case)) = progress.setup_failure.take() {
            let search = Search {
                kind: FailureKind::Setup,
                minimal_input: input.clone(),
                first_failing_input: input,
                cases: progress.executions,
                shrink_steps: 0,
            };
            return self.assemble(search, case, replay);
        }

        let (first_number, first_input) = progress
            .first_failure
            .take()
            .expect("proptest reported a failure, so a case failed");
        // proptest returns the last input that failed, found here by its
        // Debug text. Should a strategy print two values the same way, the
        // last failure recorded is used.
        let key = format!("{minimal:?}");
        let case = match progress.failures.remove(&key) {
            Some(case) => case,
            None => {
                let last = progress
                    .last_failure_key
                    .take()
                    .expect("a failing case was recorded");
                progress
                    .failures
                    .remove(&last)
                    .expect("the last failing case is recorded")
            }
        };
        let search = Search {
            kind: FailureKind::Property,
            minimal_input: minimal,
            first_failing_input: first_input,
            cases: first_number,
            shrink_steps: progress.executions - first_number,
        };
        self.assemble(search, case, replay)
    }

    fn assemble<A, E>(
        &self,
        search: Search<A>,
        case: FailedCase<E>,
        replay: Replay,
    ) -> CheckFailure<A, E> {
        CheckFailure {
            kind: search.kind,
            handler: self.handler,
            minimal_input: search.minimal_input,
            error: case.error,
            stderr_tail: case.stderr_tail,
            stdout_tail: case.stdout_tail,
            peak_rss_bytes: case.peak_rss_bytes,
            child_duration: case.child_duration,
            first_failing_input: search.first_failing_input,
            cases: search.cases,
            from_persisted_seed: search.cases <= self.loaded,
            shrink_steps: search.shrink_steps,
            duration: self.duration,
            replay,
        }
    }
}

/// End point of the search for a failure.
struct Search<A> {
    kind: FailureKind,
    minimal_input: A,
    first_failing_input: A,
    cases: u32,
    shrink_steps: u32,
}

/// Emits one event per check, beside the executor's event per case.
fn emit<A, E>(outcome: &Result<CheckReport, CheckFailure<A, E>>, summary: &Summary) {
    const TARGET: &str = "isolated_harness::check";
    let duration_ms = summary.duration.as_millis() as u64;
    match outcome {
        Ok(report) => tracing::info!(
            target: TARGET,
            handler = summary.handler,
            result = "passed",
            cases = report.cases,
            persisted_cases = report.persisted_cases,
            handler_errors = report.handler_errors,
            duration_ms,
            rng_seed = summary.rng_seed,
            "isolated check passed"
        ),
        Err(failure) if failure.kind == FailureKind::Setup => tracing::error!(
            target: TARGET,
            handler = summary.handler,
            result = "unavailable",
            reason = %failure.error,
            cases = failure.cases,
            duration_ms,
            "isolated check could not run"
        ),
        Err(failure) => tracing::warn!(
            target: TARGET,
            handler = summary.handler,
            result = "failed",
            category = failure.error.category(),
            reason = %failure.error,
            cases = failure.cases,
            shrink_steps = failure.shrink_steps,
            duration_ms,
            rng_seed = summary.rng_seed,
            "isolated check failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use proptest::test_runner::{FileFailurePersistence, MapFailurePersistence};

    use super::*;

    #[test]
    fn setup_clears_fork_and_timeout() {
        let config = Config {
            fork: true,
            timeout: 5_000,
            ..Config::default()
        };

        let setup = RunnerSetup::new(&config, "tests/x.rs");

        assert!(!setup.config.fork);
        assert_eq!(setup.config.timeout, 0);
    }

    #[test]
    fn setup_keeps_a_fixed_seed() {
        let config = Config {
            rng_seed: RngSeed::Fixed(99),
            ..Config::default()
        };

        let setup = RunnerSetup::new(&config, "tests/x.rs");

        assert_eq!(setup.rng_seed, 99);
        assert_eq!(setup.config.rng_seed, RngSeed::Fixed(99));
    }

    #[test]
    fn setup_fixes_a_random_seed_it_can_print() {
        let config = Config {
            rng_seed: RngSeed::Random,
            ..Config::default()
        };

        let setup = RunnerSetup::new(&config, "tests/x.rs");

        assert_eq!(setup.config.rng_seed, RngSeed::Fixed(setup.rng_seed));
    }

    #[test]
    fn setup_defaults_source_file_to_caller() {
        let config = Config {
            source_file: None,
            ..Config::default()
        };

        let setup = RunnerSetup::new(&config, "tests/caller.rs");

        assert_eq!(setup.config.source_file, Some("tests/caller.rs"));
    }

    #[test]
    fn setup_keeps_an_explicit_source_file() {
        let config = Config {
            source_file: Some("tests/explicit.rs"),
            ..Config::default()
        };

        let setup = RunnerSetup::new(&config, "tests/caller.rs");

        assert_eq!(setup.config.source_file, Some("tests/explicit.rs"));
    }

    #[test]
    fn setup_wraps_persistence_and_names_it() {
        let config = Config {
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct("x.txt"))),
            ..Config::default()
        };

        let setup = RunnerSetup::new(&config, "tests/x.rs");

        assert_eq!(setup.persistence_name.as_deref(), Some("Direct(\"x.txt\")"));
        assert!(setup.log.is_some());
        let installed = setup
            .config
            .failure_persistence
            .as_ref()
            .expect("installed");
        assert!(installed.as_any().is::<RecordingPersistence>());
    }

    #[test]
    fn setup_without_persistence_records_nothing() {
        let config = CheckConfig::new().no_failure_persistence();

        let setup = RunnerSetup::new(&config.proptest, "tests/x.rs");

        assert!(setup.persistence_name.is_none());
        assert!(setup.log.is_none());
        assert!(setup.config.failure_persistence.is_none());
    }

    #[test]
    fn builder_sets_fields() {
        let config = CheckConfig::new()
            .timeout(Duration::from_millis(250))
            .max_heap_size(None)
            .cases(17)
            .rng_seed(5)
            .source_file("tests/y.rs")
            .context(Context::new().with("k", "v"))
            .failure_persistence(MapFailurePersistence::default())
            .fail_on_handler_error(true);

        assert_eq!(config.options.timeout, Duration::from_millis(250));
        assert_eq!(config.options.max_heap_size, None);
        assert_eq!(config.proptest.cases, 17);
        assert_eq!(config.proptest.rng_seed, RngSeed::Fixed(5));
        assert_eq!(config.proptest.source_file, Some("tests/y.rs"));
        assert_eq!(config.context.get("k"), Some("v"));
        assert!(config.proptest.failure_persistence.is_some());
        assert!(config.fail_on_handler_error);
    }

    #[test]
    fn default_config_values() {
        let config = CheckConfig::default();

        assert_eq!(config.options.timeout, DEFAULT_CHECK_TIMEOUT);
        assert!(!config.fail_on_handler_error);
    }
}
