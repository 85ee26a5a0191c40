//! Shared helpers of the cross-crate suites.
#![forbid(unsafe_code)]
