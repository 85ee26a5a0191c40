//! The stand-in platform layer: built with
//! `RUSTFLAGS="--cfg isolated_executor_unsupported"`, the Linux build behaves
//! like any other platform, where every call returns `Unavailable`.

#![cfg(isolated_executor_unsupported)]

isolated_executor::enable_test_support!();

use isolated_executor::{Context, Handler, IsolationError, Supervisor, defaults, execute_isolated};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Noop;

impl Handler for Noop {
    type Args = ();
    type Output = ();
    type Error = ();
    fn execute(&self, _: (), _: &Context) -> Result<(), ()> {
        Ok(())
    }
}

#[test]
fn unsupported_platform_is_unavailable() {
    let result = execute_isolated(&Noop, (), &Context::new(), &defaults());
    let Err(IsolationError::Unavailable { reason }) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(reason.contains("Linux only"), "{reason}");
    assert!(!Supervisor::global().is_available());
}
