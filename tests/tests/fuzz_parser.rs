//! A worked example of `check_isolated`: a small parser with three planted
//! faults, each found by one check and shrunk to a known minimal input, and
//! the same parser with the faults fixed, which passes.
//!
//! The input language, with spaces between values:
//!
//! ```text
//! document := value*
//! value    := list | text | field | word
//! list     := '[' value* ']'           nested at most MAX_NESTING deep
//! text     := '"' (char | '\' char)* '"'
//! field    := '#' digits ':' bytes     exactly `digits` bytes follow
//! word     := [a-z0-9]+
//! ```
//!
//! The planted faults, active when `Parse::faulty` is set:
//!
//! 1. a list nested deeper than `MAX_NESTING` recurses without consuming
//!    input, until the stack overflows;
//! 2. a backslash at the very end of a text makes the scanner loop forever;
//! 3. a field allocates its declared length before checking that the input
//!    contains that many bytes.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, KillReason, Supervisor, SupervisorConfig,
};
use isolated_harness::check::{
    CheckConfig, CheckFailure, FailureKind, check_isolated, try_check_isolated,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde::{Deserialize, Serialize};

/// Deepest list nesting the parser accepts.
const MAX_NESTING: usize = 32;

/// Heap budget of every case: large enough for the parser and a 3 MiB field
/// buffer, too small for a 4 MiB one.
const HEAP_BUDGET: u64 = 4_000_000;

/// Timeout of every case. The parser finishes any input of these strategies
/// in a few milliseconds, so only the planted loop reaches it.
const CASE_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    List(Vec<Value>),
    Text(String),
    Field(Vec<u8>),
    Word(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ParseError {
    UnexpectedEnd,
    DanglingEscape { at: usize },
    UnexpectedByte { at: usize, byte: u8 },
    TooDeep { at: usize },
    InvalidLength { at: usize },
    Truncated { declared: usize, available: usize },
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    faulty: bool,
}

impl Parser<'_> {
    fn document(&mut self) -> Result<Vec<Value>, ParseError> {
        let mut values = Vec::new();
        loop {
            self.skip_spaces();
            if self.pos == self.input.len() {
                return Ok(values);
            }
            values.push(self.value(0)?);
        }
    }

    fn value(&mut self, nesting: usize) -> Result<Value, ParseError> {
        match self.input.get(self.pos) {
            None => Err(ParseError::UnexpectedEnd),
            Some(b'[') => self.list(nesting + 1),
            Some(b'"') => self.text(),
            Some(b'#') => self.field(),
            Some(byte) if byte.is_ascii_lowercase() || byte.is_ascii_digit() => Ok(self.word()),
            Some(&byte) => Err(ParseError::UnexpectedByte { at: self.pos, byte }),
        }
    }

    /// Parses a list that starts at `self.pos` and is the `nesting`-th level.
    fn list(&mut self, nesting: usize) -> Result<Value, ParseError> {
        if nesting > MAX_NESTING {
            if !self.faulty {
                return Err(ParseError::TooDeep { at: self.pos });
            }
            // Planted fault 1: the limit check descends once more instead of
            // rejecting, without consuming the bracket, so it never ends.
            let nested = self.list(nesting + 1)?;
            return Ok(Value::List(vec![nested]));
        }

        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_spaces();
            match self.input.get(self.pos) {
                None => return Err(ParseError::UnexpectedEnd),
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::List(items));
                }
                Some(_) => items.push(self.value(nesting)?),
            }
        }
    }

    fn text(&mut self) -> Result<Value, ParseError> {
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.input.get(self.pos) {
                None => return Err(ParseError::UnexpectedEnd),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Value::Text(text));
                }
                Some(b'\\') => match self.input.get(self.pos + 1) {
                    Some(&escaped) => {
                        text.push(char::from(escaped));
                        self.pos += 2;
                    }
                    // Planted fault 2: a backslash with nothing after it is
                    // neither consumed nor rejected, so the scan repeats.
                    None if self.faulty => continue,
                    None => return Err(ParseError::DanglingEscape { at: self.pos }),
                },
                Some(&byte) => {
                    text.push(char::from(byte));
                    self.pos += 1;
                }
            }
        }
    }

    fn field(&mut self) -> Result<Value, ParseError> {
        self.pos += 1;
        let start = self.pos;
        while self.input.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.input[start..self.pos]).expect("ASCII digits");
        let declared: usize = digits
            .parse()
            .map_err(|_| ParseError::InvalidLength { at: start })?;
        if self.input.get(self.pos) != Some(&b':') {
            return Err(ParseError::InvalidLength { at: self.pos });
        }
        self.pos += 1;

        let available = self.input.len() - self.pos;
        let truncated = ParseError::Truncated {
            declared,
            available,
        };
        if !self.faulty && declared > available {
            return Err(truncated);
        }
        // Planted fault 3 when `faulty`: the buffer is sized by the declared
        // length before the check below, so the input decides the allocation.
        let mut data = Vec::with_capacity(declared);
        if declared > available {
            return Err(truncated);
        }
        data.extend_from_slice(&self.input[self.pos..self.pos + declared]);
        self.pos += declared;
        Ok(Value::Field(data))
    }

    fn word(&mut self) -> Value {
        let start = self.pos;
        while self
            .input
            .get(self.pos)
            .is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
        {
            self.pos += 1;
        }
        Value::Word(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn skip_spaces(&mut self) {
        while self.input.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }
}

/// Parses its input; `faulty` turns the planted faults on.
#[derive(Serialize, Deserialize)]
struct Parse {
    faulty: bool,
}

impl Handler for Parse {
    type Args = String;
    type Output = Vec<Value>;
    type Error = ParseError;

    fn execute(&self, input: String, _: &Context) -> Result<Vec<Value>, ParseError> {
        Parser {
            input: input.as_bytes(),
            pos: 0,
            faulty: self.faulty,
        }
        .document()
    }
}

const FAULTY: Parse = Parse { faulty: true };
const FIXED: Parse = Parse { faulty: false };

/// Returns `depth` nested lists around `inner`.
fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Generates lists nested 0 to 64 deep around a small value. Shrinking reaches the
/// smallest failing depth and the first inner choice, the empty string.
fn nested_lists() -> impl Strategy<Value = String> {
    (0..=2 * MAX_NESTING, select(vec!["", "a", "\"t\"", "#1:x"]))
        .prop_map(|(depth, inner)| nested(depth, inner))
}

/// Generates up to five tokens of the language, at most 5 lists deep, no field longer
/// than its data. Only the token `"\` contains a backslash. There is no `]`:
/// deleting a `[` before it would make the input invalid, so shrinking could
/// stop at `a"\` instead of `"\`. In a trial of 3,000 seeds with proptest
/// 1.11, shrinking over this vocabulary ended at `"\` every time.
fn token_sequences() -> impl Strategy<Value = String> {
    let token = select(vec!["a", " ", "[", "\"t\"", "#1:x", "\"\\"]);
    prop::collection::vec(token, 1..=5).prop_map(|tokens| tokens.concat())
}

/// Generates a field whose declared length is 0 to 16 MiB in whole MiB and whose data
/// is missing. Shrinking reaches the smallest length that fails.
fn field_lengths() -> impl Strategy<Value = String> {
    (0usize..=16).prop_map(|mib| format!("#{}:", mib << 20))
}

/// Returns the configuration of the planted-fault checks. Their failures are
/// expected, so nothing is written to a regression file.
fn config() -> CheckConfig {
    CheckConfig::new()
        .timeout(CASE_TIMEOUT)
        .max_heap_size(HEAP_BUDGET)
        .no_failure_persistence()
}

fn expect_failure(
    strategy: impl Strategy<Value = String>,
    config: &CheckConfig,
) -> CheckFailure<String, ParseError> {
    match try_check_isolated(&FAULTY, strategy, config) {
        Ok(report) => panic!("the planted fault was not found: {report}"),
        Err(failure) => {
            println!("{failure}");
            failure
        }
    }
}

#[test]
fn deep_nesting_overflows_the_stack() {
    let failure = expect_failure(nested_lists(), &config().cases(64));

    assert_eq!(failure.kind, FailureKind::Property);
    assert_eq!(failure.minimal_input, nested(MAX_NESTING + 1, ""));
    assert!(
        matches!(
            failure.error,
            IsolationError::Crashed(CrashReason::StackOverflow { .. })
        ),
        "{:?}",
        failure.error
    );
    assert!(
        failure.stderr_tail.contains("overflowed its stack"),
        "{}",
        failure.stderr_tail
    );
    assert!(failure.shrink_steps > 0);
    assert_eq!(failure.replay.source_file, Some(file!()));
}

#[test]
fn trailing_backslash_loops_until_timeout() {
    let failure = expect_failure(token_sequences(), &config().cases(256));

    assert_eq!(failure.kind, FailureKind::Property);
    assert_eq!(failure.minimal_input, "\"\\");
    assert!(
        matches!(failure.error, IsolationError::Timeout { timeout, .. } if timeout == CASE_TIMEOUT),
        "{:?}",
        failure.error
    );
    assert!(failure.child_duration >= CASE_TIMEOUT);
}

#[test]
fn field_length_exceeds_heap_budget() {
    let failure = expect_failure(field_lengths(), &config().cases(64));

    assert_eq!(failure.kind, FailureKind::Property);
    assert_eq!(failure.minimal_input, format!("#{}:", 4 << 20));
    match &failure.error {
        IsolationError::Killed(KillReason::MaxHeapSize {
            limit, requested, ..
        }) => {
            assert_eq!(*limit, HEAP_BUDGET);
            assert_eq!(*requested, Some(4 << 20));
        }
        other => panic!("expected a heap-budget kill, got {other:?}"),
    }
}

/// Generates every shape the faulty checks use, for the fixed parser.
fn all_shapes() -> impl Strategy<Value = String> {
    prop_oneof![nested_lists(), token_sequences(), field_lengths()]
}

#[test]
fn fixed_parser_passes_with_rejections() {
    let report = check_isolated(&FIXED, all_shapes(), &config().cases(96));

    assert_eq!(report.cases, 96);
    assert_eq!(report.persisted_cases, 0);
    assert_eq!(report.passed + report.handler_errors, 96);
    assert!(report.passed > 0, "{report}");
    assert!(report.handler_errors > 0, "{report}");
    assert!(report.slowest_case < CASE_TIMEOUT, "{report}");
}

#[test]
fn handler_error_fails_when_configured() {
    let config = config().cases(64).fail_on_handler_error(true);

    let failure = match try_check_isolated(&FIXED, field_lengths(), &config) {
        Ok(report) => panic!("a truncated field was not reported: {report}"),
        Err(failure) => failure,
    };

    assert_eq!(failure.minimal_input, format!("#{}:", 1 << 20));
    assert_eq!(
        failure.error,
        IsolationError::Handler(ParseError::Truncated {
            declared: 1 << 20,
            available: 0,
        })
    );
}

#[test]
fn check_isolated_panics_with_report() {
    let result = std::panic::catch_unwind(|| {
        check_isolated(&FAULTY, nested_lists(), &config().cases(64));
    });

    let payload = result.expect_err("the planted overflow makes the check panic");
    let message = payload
        .downcast_ref::<String>()
        .expect("the report is a formatted String");
    assert!(message.contains("isolated check of"), "{message}");
    assert!(
        message.contains(&format!("minimal input: {:?}", nested(MAX_NESTING + 1, ""))),
        "{message}"
    );
    assert!(message.contains("crashed: stack overflow"), "{message}");
    assert!(message.contains("PROPTEST_RNG_SEED="), "{message}");
}

#[test]
fn rng_seed_regenerates_the_run() {
    let first = expect_failure(nested_lists(), &config().cases(64));

    let again = expect_failure(
        nested_lists(),
        &config().cases(64).rng_seed(first.replay.rng_seed),
    );

    assert_eq!(again.first_failing_input, first.first_failing_input);
    assert_eq!(again.cases, first.cases);
    assert_eq!(again.minimal_input, first.minimal_input);
}

#[test]
fn unavailable_executor_is_a_setup_failure() {
    let supervisor =
        Supervisor::start(SupervisorConfig::default()).expect("a supervisor without prestart");
    supervisor.shutdown();
    let scratch = Scratch::new("unavailable");
    let regressions = scratch.leak_path("regressions.txt");
    let config = config()
        .cases(16)
        .options(
            isolated_executor::defaults()
                .timeout(CASE_TIMEOUT)
                .supervisor(supervisor),
        )
        .failure_persistence(FileFailurePersistence::Direct(regressions));

    let failure = match try_check_isolated(&FAULTY, nested_lists(), &config) {
        Ok(report) => panic!("a stopped supervisor ran cases: {report}"),
        Err(failure) => failure,
    };

    assert_eq!(failure.kind, FailureKind::Setup);
    assert!(
        matches!(failure.error, IsolationError::Unavailable { .. }),
        "{:?}",
        failure.error
    );
    assert_eq!(failure.cases, 1);
    assert_eq!(failure.shrink_steps, 0);
    assert_eq!(failure.minimal_input, failure.first_failing_input);
    assert_eq!(failure.replay.persisted_seed, None);
    assert!(
        !PathBuf::from(regressions).exists(),
        "a setup failure was persisted"
    );
    assert!(failure.to_string().contains("could not run case 1"));
}

/// Generates lists nested 0 to 64 deep around a random word, so two runs produce the
/// same input only when they replay the same seed.
fn nested_words() -> impl Strategy<Value = String> {
    (0..=2 * MAX_NESTING, "[a-z]{12}").prop_map(|(depth, word)| nested(depth, &word))
}

#[test]
fn persisted_failure_is_replayed_first() {
    let scratch = Scratch::new("persisted");
    let regressions = scratch.leak_path("parser.txt");
    let config = config()
        .cases(64)
        .failure_persistence(FileFailurePersistence::Direct(regressions));

    let first = expect_failure(nested_words(), &config);

    assert!(!first.from_persisted_seed);
    let saved = first
        .replay
        .persisted_seed
        .clone()
        .expect("the first run saves its failure");
    let file = fs::read_to_string(regressions).expect("the regression file was written");
    let seed_lines: Vec<&str> = file
        .lines()
        .filter(|line| line.starts_with("cc "))
        .collect();
    assert_eq!(seed_lines.len(), 1, "{file}");
    assert!(seed_lines[0].starts_with(&saved), "{file}");
    assert!(
        seed_lines[0].contains(&format!("shrinks to {:?}", first.minimal_input)),
        "{file}"
    );

    let second = expect_failure(nested_words(), &config);

    assert!(second.from_persisted_seed);
    assert_eq!(second.cases, 1);
    assert_eq!(second.first_failing_input, first.first_failing_input);
    assert_eq!(second.minimal_input, first.minimal_input);
    assert_eq!(second.replay.persisted_seed, None);
    let file = fs::read_to_string(regressions).expect("the regression file is still there");
    assert_eq!(
        file.lines().filter(|line| line.starts_with("cc ")).count(),
        1,
        "a replayed failure was saved again: {file}"
    );
}

/// A directory under the system temp dir, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("isolated-check-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch { dir }
    }

    /// Returns a path in the directory as `&'static str`, the type
    /// `FileFailurePersistence::Direct` takes. It leaks a few bytes per test.
    fn leak_path(&self, file: &str) -> &'static str {
        let path = self.dir.join(file);
        let path = path
            .to_str()
            .expect("the temp dir path is UTF-8")
            .to_owned();
        Box::leak(path.into_boxed_str())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
