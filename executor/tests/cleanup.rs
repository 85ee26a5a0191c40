//! After every outcome nothing of the execution remains: no child, no
//! grandchild, no zombie, no fd in the caller.

isolated_executor::enable_test_support!();

mod procs;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use isolated_executor::{
    Context, Handler, IsolationError, Supervisor, SupervisorConfig, defaults, execute_isolated,
    execute_isolated_report,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Plan {
    /// Start `sleep 3600` in a new session, return its pid.
    SetsidGrandchild,
    /// Same, then hang until the timeout.
    SetsidGrandchildThenHang,
    /// Ignore SIGTERM and sleep.
    IgnoreTerm,
}

#[derive(Serialize, Deserialize)]
struct Misbehave;

fn start_setsid_sleeper() -> u32 {
    let mut command = std::process::Command::new("sleep");
    command.arg("3600");
    // SAFETY: setsid is async-signal-safe and runs in the forked child only.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawning sleep failed");
    let pid = child.id();
    // Drop the handle without waiting: the grandchild must outlive this call.
    std::mem::forget(child);
    pid
}

impl Handler for Misbehave {
    type Args = Plan;
    type Output = u32;
    type Error = String;

    fn execute(&self, plan: Plan, _: &Context) -> Result<u32, String> {
        match plan {
            Plan::SetsidGrandchild => Ok(start_setsid_sleeper()),
            Plan::SetsidGrandchildThenHang => {
                let pid = start_setsid_sleeper();
                println!("grandchild {pid}");
                std::thread::sleep(Duration::from_secs(3600));
                Ok(pid)
            }
            Plan::IgnoreTerm => {
                // SAFETY: SIG_IGN is a valid disposition for SIGTERM.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                println!("ignoring SIGTERM");
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
        }
    }
}

/// The tests compare the whole process's fds, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn supervisor() -> Supervisor {
    Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn setsid_grandchild_is_killed_after_ok() {
    let _serial = serial();
    let fds_before = procs::open_fds();
    let supervisor = supervisor();
    let options = defaults().supervisor(supervisor.clone());
    let report = execute_isolated_report(
        &Misbehave,
        Plan::SetsidGrandchild,
        &Context::new(),
        &options,
    );
    let grandchild = report
        .outcome
        .clone()
        .expect("the handler returns the grandchild pid");
    let child = report.pid.unwrap();

    assert!(
        procs::wait_gone(grandchild, Duration::from_secs(5)),
        "grandchild {grandchild} survived"
    );
    assert!(
        procs::wait_gone(child, Duration::from_secs(5)),
        "child {child} survived"
    );
    assert!(report.descendants_killed >= 1, "{report:?}");
    procs::assert_shepherds_idle_and_childless(&supervisor);

    let shepherds = supervisor.idle_shepherd_pids();
    supervisor.shutdown();
    for shepherd in shepherds {
        assert!(
            procs::wait_gone(shepherd, Duration::from_secs(5)),
            "shepherd {shepherd} survived shutdown"
        );
    }
    assert_eq!(procs::open_fds(), fds_before);
}

#[test]
fn setsid_grandchild_is_killed_after_timeout() {
    let _serial = serial();
    let supervisor = supervisor();
    let options = defaults()
        .supervisor(supervisor.clone())
        .timeout(Duration::from_millis(300))
        .shutdown_grace(Duration::from_millis(50));
    let report = execute_isolated_report(
        &Misbehave,
        Plan::SetsidGrandchildThenHang,
        &Context::new(),
        &options,
    );
    assert!(
        matches!(report.outcome, Err(IsolationError::Timeout { .. })),
        "{:?}",
        report.outcome
    );
    let grandchild: u32 = report
        .stdout_tail
        .trim()
        .strip_prefix("grandchild ")
        .and_then(|pid| pid.parse().ok())
        .expect("the handler printed the grandchild pid");
    assert!(
        procs::wait_gone(grandchild, Duration::from_secs(5)),
        "grandchild {grandchild} survived"
    );
    procs::assert_shepherds_idle_and_childless(&supervisor);
    supervisor.shutdown();
}

#[test]
fn sigterm_ignoring_child_is_killed_after_grace() {
    let _serial = serial();
    let supervisor = supervisor();
    let options = defaults()
        .supervisor(supervisor.clone())
        .timeout(Duration::from_millis(200))
        .shutdown_grace(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let report = execute_isolated_report(&Misbehave, Plan::IgnoreTerm, &Context::new(), &options);
    let elapsed = started.elapsed();
    assert_eq!(
        report.outcome,
        Err(IsolationError::Timeout {
            timeout: Duration::from_millis(200),
            escalated_to_kill: true
        })
    );
    assert_eq!(report.stdout_tail, "ignoring SIGTERM\n");
    // Deadline plus grace, with a generous margin for a loaded machine.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    let child = report.pid.unwrap();
    assert!(
        procs::wait_gone(child, Duration::from_secs(5)),
        "child {child} survived"
    );
    procs::assert_shepherds_idle_and_childless(&supervisor);
    supervisor.shutdown();
}

#[test]
fn many_outcomes_leave_no_fd_behind() {
    let _serial = serial();
    let supervisor = supervisor();
    let options = defaults()
        .supervisor(supervisor.clone())
        .timeout(Duration::from_millis(100))
        .shutdown_grace(Duration::ZERO);
    // Warm up so the shepherd's socket exists in the baseline.
    let _ = execute_isolated(
        &Misbehave,
        Plan::SetsidGrandchild,
        &Context::new(),
        &options,
    );
    let fds_before = procs::open_fds();
    for _ in 0..5 {
        let _ = execute_isolated(
            &Misbehave,
            Plan::SetsidGrandchild,
            &Context::new(),
            &options,
        );
        let _ = execute_isolated(&Misbehave, Plan::IgnoreTerm, &Context::new(), &options);
    }
    assert_eq!(procs::open_fds(), fds_before);
    procs::assert_shepherds_idle_and_childless(&supervisor);
    supervisor.shutdown();
}
