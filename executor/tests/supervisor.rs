//! Supervisors with real shepherds: availability, selection through
//! `Options::supervisor`, the `max_children` bound, FIFO order of waiting
//! callers, shutdown of running children, and recovery from a lost
//! shepherd.

isolated_executor::enable_test_support!();

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, Options, Supervisor, SupervisorConfig, defaults,
    execute_isolated, execute_isolated_report, supervisor_available,
};
use serde::{Deserialize, Serialize};

use common::LeakCheck;

/// Pids seen from inside a handler child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pids {
    /// The child's own pid.
    child: u32,
    /// Its parent, the shepherd.
    shepherd: u32,
}

impl Pids {
    fn current() -> Pids {
        Pids {
            child: std::process::id(),
            shepherd: std::os::unix::process::parent_id(),
        }
    }
}

/// Runs one probe action and returns the child's pids.
#[derive(Serialize, Deserialize)]
struct Probe;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Action {
    /// Sleeps for the milliseconds given.
    Sleep(u64),
    /// Ignores SIGTERM, then sleeps for the milliseconds given.
    IgnoreTermAndSleep(u64),
    /// Appends a line to the file, then returns.
    Record(PathBuf),
    /// Appends a line to the file, then kills its own shepherd with SIGKILL.
    KillShepherd(PathBuf),
}

fn append_line(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the run log opens");
    writeln!(file, "{}", std::process::id()).expect("the run log is writable");
}

impl Handler for Probe {
    type Args = Action;
    type Output = Pids;
    type Error = String;

    fn execute(&self, action: Action, _: &Context) -> Result<Pids, String> {
        match action {
            Action::Sleep(millis) => std::thread::sleep(Duration::from_millis(millis)),
            Action::IgnoreTermAndSleep(millis) => {
                // SAFETY: the handler child runs this before it starts any
                // thread, and SIG_IGN installs no handler code.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                std::thread::sleep(Duration::from_millis(millis));
            }
            Action::Record(path) => append_line(&path),
            Action::KillShepherd(path) => {
                append_line(&path);
                // SAFETY: kill with integer arguments; the target is this
                // child's own shepherd, which the test means to lose.
                unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
                // The parent-death signal ends this child shortly.
                std::thread::sleep(Duration::from_secs(10));
            }
        }
        Ok(Pids::current())
    }
}

fn start(max_children: usize, prestart: usize) -> Supervisor {
    Supervisor::start(SupervisorConfig {
        max_children,
        prestart,
        ..Default::default()
    })
    .expect("the supervisor starts")
}

fn on(supervisor: &Supervisor) -> Options {
    defaults().supervisor(supervisor.clone())
}

/// Number of callers queued on `supervisor`, read from its `Debug` text,
/// which is the only public view of the queue.
fn waiting(supervisor: &Supervisor) -> usize {
    let text = format!("{supervisor:?}");
    let start = text.find("waiting: ").expect("Debug shows the queue") + "waiting: ".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("the queue length is a number")
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A file a handler appends a line to per run; removed on drop.
struct RunLog(PathBuf);

impl RunLog {
    fn new(name: &str) -> RunLog {
        let path = std::env::temp_dir().join(format!(
            "isolated-executor-{}-{name}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        RunLog(path)
    }

    /// Returns the pids of the children that ran, one per run.
    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(|line| line.parse().expect("the run log holds pids"))
            .collect()
    }

    fn runs(&self) -> usize {
        self.pids().len()
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn availability_follows_shutdown() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 0);
    assert!(supervisor.is_available());
    assert!(supervisor_available(&supervisor));

    supervisor.shutdown();
    assert!(!supervisor.is_available());
    assert!(!supervisor_available(&supervisor));
    assert!(
        Supervisor::global().is_available(),
        "the global supervisor is separate"
    );

    supervisor.shutdown();
    assert!(
        !supervisor.is_available(),
        "a second shutdown changes nothing"
    );
    leak.finish(&[&supervisor]);
}

#[test]
fn custom_supervisor_runs_executions() {
    let leak = LeakCheck::start();
    let global_before = Supervisor::global().idle_shepherd_pids();
    let supervisor = start(2, 0);
    assert!(supervisor.idle_shepherd_pids().is_empty(), "no prestart");

    let first = execute_isolated(&Probe, Action::Sleep(0), &Context::new(), &on(&supervisor))
        .expect("the execution succeeds");
    assert_eq!(supervisor.idle_shepherd_pids(), [first.shepherd]);
    assert_eq!(Supervisor::global().idle_shepherd_pids(), global_before);
    assert!(!global_before.contains(&first.shepherd));

    let second = execute_isolated(&Probe, Action::Sleep(0), &Context::new(), &on(&supervisor))
        .expect("the execution succeeds");
    assert_eq!(
        second.shepherd, first.shepherd,
        "the idle shepherd is reused"
    );
    assert_ne!(
        second.child, first.child,
        "each execution has a fresh child"
    );

    supervisor.shutdown();
    assert!(supervisor.idle_shepherd_pids().is_empty());
    assert!(
        common::process_info(first.shepherd).is_none(),
        "shutdown reaps idle shepherds"
    );
    leak.finish(&[&supervisor]);
}

#[test]
fn max_children_bounds_running_children() {
    let leak = LeakCheck::start();
    let supervisor = start(2, 0);
    let options = on(&supervisor);

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut max_running = 0;
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let running = common::grandchildren();
                max_running = max_running.max(running.len());
                seen.extend(running.iter().map(|child| child.pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            (max_running, seen)
        })
    };

    let started = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let options = options.clone();
            std::thread::spawn(move || {
                execute_isolated(&Probe, Action::Sleep(300), &Context::new(), &options)
            })
        })
        .collect();
    let results: Vec<Pids> = callers
        .into_iter()
        .map(|caller| caller.join().unwrap().expect("the execution succeeds"))
        .collect();
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_running, seen) = monitor.join().unwrap();

    assert!(
        elapsed >= Duration::from_millis(600),
        "4 calls of 300 ms with 2 children took only {elapsed:?}"
    );
    assert!(max_running <= 2, "{max_running} children ran at once");
    assert_eq!(max_running, 2, "the two children overlapped");
    for pids in &results {
        assert!(
            seen.contains(&pids.child),
            "child {} never seen",
            pids.child
        );
    }
    let shepherds: std::collections::BTreeSet<u32> =
        results.iter().map(|pids| pids.shepherd).collect();
    assert!(shepherds.len() <= 2, "shepherds used: {shepherds:?}");

    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn waiting_callers_run_in_fifo_order() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);

    let blocker = {
        let options = options.clone();
        std::thread::spawn(move || {
            execute_isolated(&Probe, Action::Sleep(300), &Context::new(), &options)
        })
    };
    common::wait_for_grandchild(Duration::from_secs(10));

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut queued = Vec::new();
    for index in 0..4 {
        let options = options.clone();
        let order = Arc::clone(&order);
        queued.push(std::thread::spawn(move || {
            let result = execute_isolated(&Probe, Action::Sleep(20), &Context::new(), &options);
            order.lock().unwrap().push(index);
            result
        }));
        wait_until("the caller is queued", || waiting(&supervisor) == index + 1);
    }

    blocker
        .join()
        .unwrap()
        .expect("the first execution succeeds");
    for caller in queued {
        caller.join().unwrap().expect("a queued execution succeeds");
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);

    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn queued_call_timeout_starts_with_child() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);

    let blocker = {
        let options = options.clone();
        std::thread::spawn(move || {
            execute_isolated(&Probe, Action::Sleep(700), &Context::new(), &options)
        })
    };
    common::wait_for_grandchild(Duration::from_secs(10));

    let report = execute_isolated_report(
        &Probe,
        Action::Sleep(300),
        &Context::new(),
        &options.clone().timeout(Duration::from_millis(400)),
    );
    assert!(
        report.queue_wait >= Duration::from_millis(500),
        "queued for only {:?}",
        report.queue_wait
    );
    assert!(
        report.outcome.is_ok(),
        "a 300 ms handler with a 400 ms timeout gave {:?} after {:?} in the queue",
        report.outcome,
        report.queue_wait
    );

    blocker
        .join()
        .unwrap()
        .expect("the first execution succeeds");
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, IsolationError<String>>) -> bool {
    matches!(result, Err(IsolationError::Unavailable { .. }))
}

#[test]
fn shutdown_stops_running_and_queued_calls() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor).shutdown_grace(Duration::from_secs(3));

    let running = {
        let options = options.clone();
        std::thread::spawn(move || {
            let result = execute_isolated(&Probe, Action::Sleep(10_000), &Context::new(), &options);
            (result, Instant::now())
        })
    };
    let child = common::wait_for_grandchild(Duration::from_secs(10));
    let queued = {
        let options = options.clone();
        std::thread::spawn(move || {
            let result = execute_isolated(&Probe, Action::Sleep(0), &Context::new(), &options);
            (result, Instant::now())
        })
    };
    wait_until("the second caller is queued", || waiting(&supervisor) == 1);

    let shutdown_at = Instant::now();
    supervisor.shutdown();
    assert!(!supervisor.is_available());

    let new_call = execute_isolated_report(&Probe, Action::Sleep(0), &Context::new(), &options);
    assert!(
        matches!(new_call.outcome, Err(IsolationError::Unavailable { .. })),
        "{:?}",
        new_call.outcome
    );
    assert_eq!(new_call.pid, None, "no child starts after shutdown");
    assert!(
        new_call.duration < Duration::from_millis(200),
        "a call after shutdown took {:?}",
        new_call.duration
    );

    let (queued_result, queued_end) = queued.join().unwrap();
    assert!(is_unavailable(&queued_result), "{queued_result:?}");
    assert!(queued_end.duration_since(shutdown_at) < Duration::from_secs(1));

    // The sleeping child dies of SIGTERM at once, well before the grace
    // period would send SIGKILL.
    let (running_result, running_end) = running.join().unwrap();
    assert!(is_unavailable(&running_result), "{running_result:?}");
    let stop_time = running_end.duration_since(shutdown_at);
    assert!(
        stop_time < Duration::from_secs(2),
        "the running call took {stop_time:?} to stop"
    );
    assert!(
        common::wait_gone(&child, Duration::from_secs(2)),
        "child {} is still there",
        child.pid
    );
    leak.finish(&[&supervisor]);
}

#[test]
fn shutdown_sends_sigkill_after_grace() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let grace = Duration::from_millis(600);
    let options = on(&supervisor).shutdown_grace(grace);

    let running = {
        let options = options.clone();
        std::thread::spawn(move || {
            let result = execute_isolated(
                &Probe,
                Action::IgnoreTermAndSleep(10_000),
                &Context::new(),
                &options,
            );
            (result, Instant::now())
        })
    };
    let child = common::wait_for_grandchild(Duration::from_secs(10));
    wait_until("the child ignores SIGTERM", || ignores_sigterm(child.pid));

    let shutdown_at = Instant::now();
    supervisor.shutdown();
    let (result, end) = running.join().unwrap();
    assert!(is_unavailable(&result), "{result:?}");
    let stop_time = end.duration_since(shutdown_at);
    assert!(
        stop_time >= grace,
        "a child ignoring SIGTERM stopped after {stop_time:?}, before the grace period"
    );
    assert!(
        stop_time < grace + Duration::from_secs(3),
        "the child took {stop_time:?} to stop"
    );
    assert!(common::wait_gone(&child, Duration::from_secs(2)));
    leak.finish(&[&supervisor]);
}

/// Returns whether `/proc/<pid>/status` lists SIGTERM among the ignored signals.
fn ignores_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Rounds of `handler_killing_its_shepherd_fails_one_call`. The shepherd
/// dies before it reports the child's start in some rounds only, so several
/// rounds make a second run of the handler likely to show.
const SHEPHERD_LOSS_ROUNDS: usize = 10;

#[test]
fn handler_killing_its_shepherd_fails_one_call() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);

    for round in 0..SHEPHERD_LOSS_ROUNDS {
        let lost_shepherd = supervisor.idle_shepherd_pids()[0];
        let log = RunLog::new("kill-shepherd");

        let report = execute_isolated_report(
            &Probe,
            Action::KillShepherd(log.0.clone()),
            &Context::new(),
            &options,
        );
        assert_eq!(log.runs(), 1, "round {round}: the handler ran again");
        match &report.outcome {
            Err(IsolationError::Crashed(CrashReason::ShepherdLost { detail })) => {
                assert!(
                    detail.contains("shepherd closed its socket"),
                    "round {round}: detail: {detail}"
                );
                assert!(
                    detail.contains(&format!("shepherd pid {lost_shepherd} ")),
                    "round {round}: detail names another shepherd: {detail}"
                );
            }
            other => panic!("round {round}: expected ShepherdLost, got {other:?}"),
        }
        assert!(
            common::process_info(lost_shepherd).is_none(),
            "round {round}: the lost shepherd is reaped"
        );

        // The child dies with its shepherd through its parent-death signal.
        // The report may lack its pid, because the shepherd can die before
        // it reports the start, so the pid comes from the run log.
        let child = log.pids()[0];
        if let Some(pid) = report.pid {
            assert_eq!(pid, child, "round {round}");
        }
        assert!(
            common::wait_dead(child, Duration::from_secs(2)),
            "round {round}: child {child} outlived its shepherd"
        );

        let next = execute_isolated(&Probe, Action::Sleep(0), &Context::new(), &options)
            .expect("the next call succeeds");
        assert_ne!(
            next.shepherd, lost_shepherd,
            "round {round}: a new shepherd runs it"
        );
    }

    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn idle_shepherd_killed_outside_is_replaced() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);
    let killed = supervisor.idle_shepherd_pids()[0];

    // SAFETY: kill with integer arguments; the target is an idle shepherd
    // of this test's own supervisor.
    let sent = unsafe { libc::kill(killed as libc::pid_t, libc::SIGKILL) };
    assert_eq!(sent, 0);
    assert!(common::wait_dead(killed, Duration::from_secs(5)));

    let log = RunLog::new("after-idle-kill");
    let pids = execute_isolated(
        &Probe,
        Action::Record(log.0.clone()),
        &Context::new(),
        &options,
    )
    .expect("the call retries on a new shepherd");
    assert_ne!(pids.shepherd, killed);
    assert_eq!(log.runs(), 1, "the handler ran once");
    assert!(
        common::process_info(killed).is_none(),
        "the dead shepherd is reaped"
    );

    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}
