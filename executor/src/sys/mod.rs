//! Platform code behind one module. Linux is the supported platform; on
//! other targets every execution returns `IsolationError::Unavailable`.
//!
//! Building with `RUSTFLAGS="--cfg isolated_executor_unsupported"` selects the
//! stand-ins on Linux too, so that path is compiled and tested here.

#[cfg(all(target_os = "linux", not(isolated_executor_unsupported)))]
mod linux;
#[cfg(all(target_os = "linux", not(isolated_executor_unsupported)))]
pub use linux::*;

#[cfg(any(not(target_os = "linux"), isolated_executor_unsupported))]
mod unsupported;
#[cfg(any(not(target_os = "linux"), isolated_executor_unsupported))]
pub use unsupported::*;
