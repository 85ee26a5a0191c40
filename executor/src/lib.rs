//! Run a handler in a child OS process with a wall-clock timeout, a heap
//! budget and crash containment, and get a typed outcome.
//!
//! ```no_run
//! use std::time::Duration;
//! use isolated_executor::{Context, Handler, IsolationError, defaults, execute_isolated};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Parse;
//!
//! impl Handler for Parse {
//!     type Args = String;
//!     type Output = usize;
//!     type Error = String;
//!     fn execute(&self, input: String, _: &Context) -> Result<usize, String> {
//!         Ok(input.len())
//!     }
//! }
//!
//! let options = defaults().timeout(Duration::from_secs(1));
//! match execute_isolated(&Parse, "input".into(), &Context::new(), &options) {
//!     Ok(len) => println!("parsed {len} bytes"),
//!     Err(IsolationError::Timeout { .. }) => println!("hung"),
//!     Err(other) => println!("failed: {other}"),
//! }
//! ```
//!
//! # How it works
//!
//! The caller talks to *shepherds*: copies of the calling executable that a
//! [`Supervisor`] starts by re-executing `/proc/self/exe`. A shepherd never
//! starts a thread, so it can `fork()` a fresh child per execution even
//! though the caller is multithreaded. The child gets its own process
//! group, default signal dispositions, no inherited fds, core dumps off and
//! `PR_SET_NO_NEW_PRIVS`; its stdout and stderr are captured. The shepherd
//! waits on a pidfd, sends SIGTERM to the group at the deadline and SIGKILL
//! after the grace period, and after every execution kills and reaps every
//! descendant (it is a child subreaper).
//!
//! The re-executed binary must divert into the shepherd before `main` or
//! libtest runs:
//!
//! - test crates add [`enable_test_support!();`](enable_test_support) at
//!   their root;
//! - binaries call [`init()`] first in `main`.
//!
//! Without the hook every execution returns [`IsolationError::Unavailable`]
//! with a message naming the line to add, and the re-executed test binary
//! runs no tests.
//!
//! # Security
//!
//! This is fault isolation, not a sandbox: the child runs as the same user
//! and could signal or trace its parent.
//!
//! # Platforms
//!
//! Linux 5.3 or later (pidfd, `RLIMIT_DATA` on mmap, child subreapers). On
//! other targets the crate compiles and every execution returns
//! `Unavailable`.

#![warn(missing_docs)]

mod child;
mod classify;
mod error;
mod execute;
mod handler;
mod options;
#[doc(hidden)]
pub mod protocol;
mod report;
mod supervisor;
mod sys;
pub mod telemetry;

pub use crate::error::{CrashReason, IsolationError, KillReason, signal_name};
pub use crate::execute::{execute_isolated, execute_isolated_report};
#[cfg(feature = "tokio")]
pub use crate::execute::{execute_isolated_async, execute_isolated_report_async};
pub use crate::handler::{Context, Handler};
pub use crate::options::{
    DEFAULT_MAX_HEAP_SIZE, DEFAULT_MAX_RESULT_SIZE, DEFAULT_OUTPUT_TAIL, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_TIMEOUT, Options, defaults,
};
pub use crate::report::ExecutionReport;
pub use crate::supervisor::{Supervisor, SupervisorConfig, supervisor_available};

/// Diverts a re-executed binary into the shepherd. Call it first in `main`
/// of a binary that uses the executor; it returns at once in a normal run.
///
/// Test crates use [`enable_test_support!`] instead, because libtest owns
/// their `main`.
pub fn init() {
    sys::entry::divert_if_shepherd();
}

#[doc(hidden)]
pub mod __private {
    /// Called by the constructor that `enable_test_support!` installs.
    pub extern "C" fn test_support_hook() {
        crate::init();
    }
}

/// Installs the entry hook in a test crate. Add it once at the crate root
/// (the top of `tests/foo.rs`, or `lib.rs` for unit tests):
///
/// ```ignore
/// isolated_executor::enable_test_support!();
/// ```
///
/// It places a function in the ELF `.init_array` section, so it runs when
/// the executable is loaded, before libtest's `main`. In a normal test run
/// it returns at once; in a re-executed shepherd it never returns.
#[macro_export]
macro_rules! enable_test_support {
    () => {
        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __ISOLATED_EXECUTOR_TEST_SUPPORT: extern "C" fn() =
            $crate::__private::test_support_hook;
    };
}

#[cfg(test)]
enable_test_support!();
