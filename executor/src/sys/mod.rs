//! Platform code behind one module. Linux is the supported platform; on
//! other targets every execution returns `IsolationError::Unavailable`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(not(target_os = "linux"))]
mod unsupported;
#[cfg(not(target_os = "linux"))]
pub use unsupported::*;
