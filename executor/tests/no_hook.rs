//! A test crate that forgot `enable_test_support!()`: every execution is
//! `Unavailable` with a message naming the line to add, and the re-executed
//! test binary runs none of its tests.

use std::io::Write;
use std::time::Duration;

use isolated_executor::{Context, Handler, IsolationError, defaults, execute_isolated};
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

const MARKER_ENV: &str = "ISOLATED_EXECUTOR_NO_HOOK_MARKER";

#[test]
fn missing_hook_is_unavailable_and_never_recurses() {
    // Every process that runs this test appends its pid to the marker file.
    // The path is set here on the first run and reaches a re-executed
    // binary through the inherited environment.
    let marker = match std::env::var(MARKER_ENV) {
        Ok(path) => path,
        Err(_) => {
            let path = std::env::temp_dir().join(format!("ie-no-hook-{}", std::process::id()));
            // SAFETY: this binary has this single test, so no other thread
            // reads the environment concurrently.
            unsafe { std::env::set_var(MARKER_ENV, &path) };
            path.display().to_string()
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&marker)
        .unwrap();
    writeln!(file, "{}", std::process::id()).unwrap();
    drop(file);

    let options = defaults().timeout(Duration::from_secs(5));
    let result = execute_isolated(&Noop, (), &Context::new(), &options);
    let runs = std::fs::read_to_string(&marker).unwrap();
    std::fs::remove_file(&marker).unwrap();

    let Err(IsolationError::Unavailable { reason }) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(
        reason.contains("isolated_executor::enable_test_support!();"),
        "{reason}"
    );
    assert!(reason.contains("isolated_executor::init();"), "{reason}");
    assert_eq!(
        runs.lines().count(),
        1,
        "the test ran in more than one process: {runs}"
    );
}
