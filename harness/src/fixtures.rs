//! Fixture handlers: one per outcome of an isolated execution.
//!
//! Each handler's documentation names the outcome that
//! [`execute_isolated`](isolated_executor::execute_isolated) returns for
//! it. The handlers carry their configuration in their own fields, so one
//! type covers a family of cases (every way to crash, every way to run out
//! of memory). All of them use [`FixtureError`] as their error type.

use std::fmt;
use std::time::{Duration, Instant};

use isolated_executor::{Context, Handler};
use serde::{Deserialize, Serialize};

/// The error type of every fixture handler: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FixtureError {
    /// A number the test chooses, to tell errors apart.
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

impl FixtureError {
    /// Creates an error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        FixtureError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for FixtureError {}

/// Returns its argument, or `default` when the argument is `None`.
///
/// Outcome: `Ok(argument)` or `Ok(default)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessHandler {
    /// The value returned for a `None` argument.
    pub default: String,
}

impl SuccessHandler {
    /// Creates a handler that returns `default` for a `None` argument.
    pub fn new(default: impl Into<String>) -> Self {
        SuccessHandler {
            default: default.into(),
        }
    }
}

impl Default for SuccessHandler {
    /// A handler whose default value is `"ok"`.
    fn default() -> Self {
        SuccessHandler::new("ok")
    }
}

impl Handler for SuccessHandler {
    type Args = Option<String>;
    type Output = String;
    type Error = FixtureError;

    fn execute(&self, args: Option<String>, _context: &Context) -> Result<String, FixtureError> {
        Ok(args.unwrap_or_else(|| self.default.clone()))
    }
}

/// Sleeps for `sleep`, then returns the time it actually slept.
///
/// Outcome: `Ok(elapsed)` when `sleep` is well below `Options::timeout`,
/// `Err(IsolationError::Timeout { escalated_to_kill: false, .. })` when it
/// is well above (the sleeping child dies of the SIGTERM sent at the
/// deadline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowHandler {
    /// How long the handler sleeps.
    pub sleep: Duration,
}

impl SlowHandler {
    /// Creates a handler that sleeps for `sleep`.
    pub fn new(sleep: Duration) -> Self {
        SlowHandler { sleep }
    }
}

impl Handler for SlowHandler {
    type Args = ();
    type Output = Duration;
    type Error = FixtureError;

    fn execute(&self, _args: (), _context: &Context) -> Result<Duration, FixtureError> {
        let started = Instant::now();
        std::thread::sleep(self.sleep);
        Ok(started.elapsed())
    }
}

/// A way for [`CrashHandler`] to end its process without returning.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CrashMode {
    /// `panic!` with a string message.
    ///
    /// Outcome: `Crashed(CrashReason::Panic { message, location })` with
    /// this message and the location in this file.
    Panic {
        /// The panic message.
        message: String,
    },
    /// `std::panic::panic_any` with an `i32` payload.
    ///
    /// Outcome: `Crashed(CrashReason::Panic { message: "Box<dyn Any>", .. })`.
    PanicNonString,
    /// `std::process::abort()`.
    ///
    /// Outcome: `Crashed(CrashReason::Abort { .. })` with an empty stderr
    /// tail.
    Abort,
    /// `std::process::exit(code)`.
    ///
    /// Outcome: `Crashed(CrashReason::Exit { code })`.
    Exit {
        /// The exit code, 0 to 255.
        code: i32,
    },
    /// Raises SIGSEGV.
    ///
    /// Outcome: `Crashed(CrashReason::Signal { number: 11, name: "SIGSEGV", .. })`.
    Segfault,
    /// Unbounded recursion on the main thread.
    ///
    /// Outcome: `Crashed(CrashReason::StackOverflow { .. })`.
    StackOverflow,
    /// A `Drop` impl that panics while the thread unwinds from a first
    /// panic, which Rust turns into an abort.
    ///
    /// Outcome: `Crashed(CrashReason::Abort { .. })`, the stderr tail
    /// ending with the runtime's "non-unwinding panic" message.
    PanicInDrop,
    /// Replaces the child with the `true` program through `exec`, so the
    /// child exits with code 0 and never writes a result.
    ///
    /// Outcome: `Crashed(CrashReason::NoResult { code: 0 })`.
    Exec,
}

impl CrashMode {
    /// Returns every mode, with fixed values for those that take one (message
    /// `"fixture panic"`, exit code 3).
    pub fn all() -> Vec<CrashMode> {
        vec![
            CrashMode::Panic {
                message: "fixture panic".into(),
            },
            CrashMode::PanicNonString,
            CrashMode::Abort,
            CrashMode::Exit { code: 3 },
            CrashMode::Segfault,
            CrashMode::StackOverflow,
            CrashMode::PanicInDrop,
            CrashMode::Exec,
        ]
    }

    /// Returns a short snake_case label, for test and snapshot names.
    pub fn label(&self) -> &'static str {
        match self {
            CrashMode::Panic { .. } => "panic",
            CrashMode::PanicNonString => "panic_non_string",
            CrashMode::Abort => "abort",
            CrashMode::Exit { .. } => "exit",
            CrashMode::Segfault => "segfault",
            CrashMode::StackOverflow => "stack_overflow",
            CrashMode::PanicInDrop => "panic_in_drop",
            CrashMode::Exec => "exec",
        }
    }
}

/// Ends the process in the way `mode` chooses.
///
/// # Errors
///
/// Returns an error only for [`CrashMode::Exec`] when `exec` fails, for
/// example because no `true` program is on `PATH`.
pub fn crash(mode: &CrashMode) -> Result<std::convert::Infallible, FixtureError> {
    match mode {
        CrashMode::Panic { message } => panic!("{message}"),
        CrashMode::PanicNonString => std::panic::panic_any(42_i32),
        CrashMode::Abort => std::process::abort(),
        CrashMode::Exit { code } => std::process::exit(*code),
        CrashMode::Segfault => raise_segfault(),
        CrashMode::StackOverflow => {
            let depth = recurse(0);
            panic!("recursion returned at depth {depth} without overflowing the stack")
        }
        CrashMode::PanicInDrop => {
            let _guard = PanicsWhileUnwinding;
            panic!("first panic, unwinding through a guard whose Drop panics")
        }
        CrashMode::Exec => {
            use std::os::unix::process::CommandExt;

            let error = std::process::Command::new("true").exec();
            Err(FixtureError::new(
                127,
                format!("exec of `true` failed: {error}"),
            ))
        }
    }
}

/// Raises SIGSEGV in this process.
///
/// It is raised again if the first one returns: a handler such as std's
/// stack-overflow handler may reset the disposition to the default and
/// return, and the second signal then ends the process.
#[allow(unsafe_code)]
fn raise_segfault() -> ! {
    loop {
        // This crashes on purpose: the fixture exists to show how a death
        // by SIGSEGV is reported.
        // SAFETY: `raise` takes a signal number and touches no memory of
        // ours; with the default disposition the process ends here.
        unsafe {
            libc::raise(libc::SIGSEGV);
        }
    }
}

/// Recurses until the stack overflows; each frame keeps 512 bytes alive so
/// the optimiser cannot turn the recursion into a loop.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[63])
}

/// Panics in `drop` when the thread is already unwinding.
struct PanicsWhileUnwinding;

impl Drop for PanicsWhileUnwinding {
    fn drop(&mut self) {
        if std::thread::panicking() {
            panic!("second panic, in Drop during unwinding");
        }
    }
}

/// How [`MemoryHogHandler`] allocates its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AllocPattern {
    /// One `Vec<u8>` of the whole size, every byte written.
    OneBlock,
    /// 64 KiB chunks pushed onto a `Vec` one after another, every byte
    /// written.
    Gradual,
    /// One `Vec<u8>` of the whole size, allocated and written in a spawned
    /// thread (with a 128 KiB stack) that the handler joins.
    InThread,
    /// `Box<u64>` values pushed onto a `Vec`, one per
    /// [`SMALL_BOX_FOOTPRINT`] bytes of the size: millions of small
    /// allocations for sizes in the tens of megabytes.
    SmallBoxes,
}

impl AllocPattern {
    /// Every pattern.
    pub const ALL: [AllocPattern; 4] = [
        AllocPattern::OneBlock,
        AllocPattern::Gradual,
        AllocPattern::InThread,
        AllocPattern::SmallBoxes,
    ];

    /// Returns a short snake_case label, for test and snapshot names.
    pub fn label(self) -> &'static str {
        match self {
            AllocPattern::OneBlock => "one_block",
            AllocPattern::Gradual => "gradual",
            AllocPattern::InThread => "in_thread",
            AllocPattern::SmallBoxes => "small_boxes",
        }
    }
}

/// Size of the chunks [`AllocPattern::Gradual`] pushes: 64 KiB.
pub const GRADUAL_CHUNK: usize = 64 << 10;

/// Heap bytes that one `Box<u64>` of [`AllocPattern::SmallBoxes`] costs,
/// estimated for glibc malloc on 64-bit Linux: a 32-byte chunk for the box
/// and 8 bytes for its pointer in the `Vec`.
pub const SMALL_BOX_FOOTPRINT: u64 = 40;

/// Stack size of the thread that [`AllocPattern::InThread`] spawns, kept
/// small because thread stacks count against the heap budget.
const HOG_THREAD_STACK: usize = 128 << 10;

/// Allocates about `bytes` of heap in the way `pattern` chooses, keeps all
/// of it allocated at the same time, and returns that number of bytes.
///
/// # Panics
///
/// When `bytes` does not fit in `usize`, or the thread of
/// [`AllocPattern::InThread`] cannot be spawned.
pub fn hog(pattern: AllocPattern, bytes: u64) -> u64 {
    let size = usize::try_from(bytes).expect("allocation size does not fit in usize");
    match pattern {
        AllocPattern::OneBlock => fill(size),
        AllocPattern::Gradual => {
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let mut held = 0;
            while held < size {
                let chunk = GRADUAL_CHUNK.min(size - held);
                chunks.push(vec![1; chunk]);
                held += chunk;
            }
            std::hint::black_box(&chunks);
            held as u64
        }
        AllocPattern::InThread => std::thread::Builder::new()
            .name("memory-hog".into())
            .stack_size(HOG_THREAD_STACK)
            .spawn(move || fill(size))
            .expect("failed to spawn the allocating thread")
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload)),
        AllocPattern::SmallBoxes => {
            let count = bytes / SMALL_BOX_FOOTPRINT;
            let mut boxes: Vec<Box<u64>> = Vec::new();
            for i in 0..count {
                boxes.push(Box::new(i));
            }
            std::hint::black_box(&boxes);
            count * SMALL_BOX_FOOTPRINT
        }
    }
}

/// Allocates one block of `size` bytes and writes every byte.
fn fill(size: usize) -> u64 {
    let block = std::hint::black_box(vec![1u8; size]);
    block.len() as u64
}

/// Allocates `bytes` in the way `pattern` chooses and returns the number of
/// bytes it held at once.
///
/// Outcome: `Ok(held)` when `bytes` is well below `Options::max_heap_size`
/// (or there is no budget), `Err(IsolationError::Killed(KillReason::MaxHeapSize { .. }))`
/// when it is well above, whatever the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHogHandler {
    /// How the memory is allocated.
    pub pattern: AllocPattern,
    /// How many bytes are allocated.
    pub bytes: u64,
}

impl MemoryHogHandler {
    /// Creates a handler that allocates `bytes` in the way `pattern` chooses.
    pub fn new(pattern: AllocPattern, bytes: u64) -> Self {
        MemoryHogHandler { pattern, bytes }
    }
}

impl Handler for MemoryHogHandler {
    type Args = ();
    type Output = u64;
    type Error = FixtureError;

    fn execute(&self, _args: (), _context: &Context) -> Result<u64, FixtureError> {
        Ok(hog(self.pattern, self.bytes))
    }
}

/// Ends the process in the way `mode` chooses; see [`CrashMode`] for the
/// outcome of each mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashHandler {
    /// How the handler crashes.
    pub mode: CrashMode,
}

impl CrashHandler {
    /// Creates a handler that crashes in the way `mode` chooses.
    pub fn new(mode: CrashMode) -> Self {
        CrashHandler { mode }
    }
}

impl Handler for CrashHandler {
    type Args = ();
    type Output = ();
    type Error = FixtureError;

    fn execute(&self, _args: (), _context: &Context) -> Result<(), FixtureError> {
        crash(&self.mode).map(|never| match never {})
    }
}

/// Returns its own error.
///
/// Outcome: `Err(IsolationError::Handler(error))` with a copy of `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorHandler {
    /// The error the handler returns.
    pub error: FixtureError,
}

impl ErrorHandler {
    /// Creates a handler that returns an error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        ErrorHandler {
            error: FixtureError::new(code, message),
        }
    }
}

impl Handler for ErrorHandler {
    type Args = ();
    type Output = ();
    type Error = FixtureError;

    fn execute(&self, _args: (), _context: &Context) -> Result<(), FixtureError> {
        Err(self.error.clone())
    }
}

/// Returns the context value stored under `key`.
///
/// Outcome: `Ok(value)` when the context contains `key`, otherwise
/// `Err(IsolationError::Handler(FixtureError { code: 404, .. }))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextHandler {
    /// The context key to look up.
    pub key: String,
}

impl ContextHandler {
    /// Creates a handler that looks up `key`.
    pub fn new(key: impl Into<String>) -> Self {
        ContextHandler { key: key.into() }
    }
}

impl Handler for ContextHandler {
    type Args = ();
    type Output = String;
    type Error = FixtureError;

    fn execute(&self, _args: (), context: &Context) -> Result<String, FixtureError> {
        context
            .get(&self.key)
            .map(str::to_owned)
            .ok_or_else(|| FixtureError::new(404, format!("the context has no key `{}`", self.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_mode_labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> =
            CrashMode::all().iter().map(CrashMode::label).collect();
        assert_eq!(labels.len(), CrashMode::all().len());
    }

    #[test]
    fn hog_patterns_hold_about_the_requested_size() {
        for pattern in AllocPattern::ALL {
            let held = hog(pattern, 1 << 20);
            assert!(
                held <= 1 << 20 && held + SMALL_BOX_FOOTPRINT > 1 << 20,
                "{pattern:?} held {held} bytes"
            );
        }
    }

    #[test]
    fn in_process_handlers_return_their_values() {
        let context = Context::new().with("session", "abc");
        assert_eq!(
            SuccessHandler::default().execute(None, &context),
            Ok("ok".to_owned())
        );
        assert_eq!(
            SuccessHandler::default().execute(Some("x".into()), &context),
            Ok("x".to_owned())
        );
        assert_eq!(
            ContextHandler::new("session").execute((), &context),
            Ok("abc".to_owned())
        );
        assert_eq!(
            ContextHandler::new("missing")
                .execute((), &context)
                .unwrap_err()
                .code,
            404
        );
        assert_eq!(
            ErrorHandler::new(7, "nope").execute((), &context),
            Err(FixtureError::new(7, "nope"))
        );
    }
}
