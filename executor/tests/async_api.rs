//! `execute_isolated_async` on a tokio runtime: many executions in flight
//! without a thread each, and what dropping the future does to the child.

isolated_executor::enable_test_support!();

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, Options, Supervisor, SupervisorConfig, defaults,
    execute_isolated_async, execute_isolated_report_async,
};
use serde::{Deserialize, Serialize};

use common::LeakCheck;

/// Runs one action and returns the child's pid.
#[derive(Serialize, Deserialize)]
struct Task;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Action {
    /// Sleeps for the milliseconds given.
    Sleep(u64),
    /// Returns the handler's own error.
    Fail,
    /// Panics.
    Panic,
    /// Appends the child's pid to the file, then kills its own shepherd
    /// with SIGKILL.
    KillShepherd(PathBuf),
}

impl Handler for Task {
    type Args = Action;
    type Output = u32;
    type Error = String;

    fn execute(&self, action: Action, _: &Context) -> Result<u32, String> {
        match action {
            Action::Sleep(millis) => std::thread::sleep(Duration::from_millis(millis)),
            Action::Fail => return Err("task failed".into()),
            Action::Panic => panic!("task panicked"),
            Action::KillShepherd(path) => {
                append_pid(&path);
                // SAFETY: kill with integer arguments; the target is this
                // child's own shepherd, which the test means to lose.
                unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
                // The parent-death signal ends this child shortly.
                std::thread::sleep(Duration::from_secs(10));
            }
        }
        Ok(std::process::id())
    }
}

fn append_pid(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the run log opens");
    writeln!(file, "{}", std::process::id()).expect("the run log is writable");
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

/// Waits, without blocking the runtime, until a handler child is running.
async fn wait_for_child() -> common::ProcessInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(child) = common::grandchildren().into_iter().next() {
            return child;
        }
        assert!(Instant::now() < deadline, "no handler child appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the runtime starts")
}

/// Name the executor gives its spawner thread, cut to the 15 bytes that
/// `/proc/<pid>/task/<tid>/comm` keeps.
const SPAWNER_COMM: &str = "isolated-execut";

/// Executions in flight at once in `many_calls_share_one_thread`.
const IN_FLIGHT: usize = 200;

#[test]
fn many_calls_share_one_thread() {
    let leak = LeakCheck::start();
    let supervisor = start(IN_FLIGHT, 0);
    let options = on(&supervisor);
    let runtime = current_thread_runtime();
    let before = common::threads();

    let started = Instant::now();
    let (results, new_threads, max_threads_added, max_children) = runtime.block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            calls.spawn(execute_isolated_async(
                &Task,
                Action::Sleep(200),
                &Context::new(),
                &options,
            ));
        }

        // Sample threads and running children until every call is done. A
        // thread per execution would live at least the 200 ms of its
        // handler, so 10 ms samples see it.
        let mut new_threads = BTreeSet::new();
        let mut max_threads_added = 0;
        let mut max_children = 0;
        let mut results = Vec::new();
        let mut sampler = tokio::time::interval(Duration::from_millis(10));
        while !calls.is_empty() {
            tokio::select! {
                joined = calls.join_next() => {
                    results.push(joined.expect("a call is pending").expect("the task ran"));
                }
                _ = sampler.tick() => {
                    let added: Vec<u32> = common::threads()
                        .into_keys()
                        .filter(|tid| !before.contains_key(tid))
                        .collect();
                    max_threads_added = max_threads_added.max(added.len());
                    new_threads.extend(added);
                    max_children = max_children.max(common::grandchildren().len());
                }
            }
        }
        (results, new_threads, max_threads_added, max_children)
    });
    let wall = started.elapsed();
    drop(runtime);
    eprintln!(
        "{IN_FLIGHT} async executions of 200 ms: {wall:?} wall time, \
         at most {max_children} children at once, {} threads before, \
         at most {max_threads_added} added",
        before.len()
    );

    assert_eq!(results.len(), IN_FLIGHT);
    let pids: BTreeSet<u32> = results
        .into_iter()
        .map(|result| result.expect("the execution succeeds"))
        .collect();
    assert_eq!(pids.len(), IN_FLIGHT, "each execution had its own child");
    assert!(max_children > 1, "the executions did not overlap");

    // The only thread the executor may add is its spawner, and only if no
    // earlier test started it. The spawner is named after it starts, so its
    // name is checked now rather than in the samples.
    let after = common::threads();
    assert!(
        new_threads.len() <= 1,
        "threads added during the run: {new_threads:?}, now {after:?}"
    );
    for tid in &new_threads {
        assert_eq!(
            after.get(tid).map(String::as_str),
            Some(SPAWNER_COMM),
            "thread {tid} is not the spawner"
        );
    }
    for (tid, name) in &after {
        assert!(
            before.contains_key(tid) || new_threads.contains(tid),
            "thread {tid} ({name}) started after the run"
        );
    }
    assert!(
        wall < Duration::from_secs(60),
        "{IN_FLIGHT} executions took {wall:?}"
    );

    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn dropped_future_terminates_child() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);
    let runtime = current_thread_runtime();
    let shepherds = supervisor.idle_shepherd_pids();

    let child = runtime.block_on(async {
        let call = execute_isolated_async(&Task, Action::Sleep(10_000), &Context::new(), &options);
        tokio::pin!(call);
        let first = tokio::time::timeout(Duration::from_millis(100), &mut call).await;
        assert!(first.is_err(), "a 10 s handler finished early: {first:?}");
        // The child is running unless starting it took longer than 100 ms.
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = loop {
            if let Some(child) = common::grandchildren().into_iter().next() {
                break child;
            }
            assert!(Instant::now() < deadline, "no child started");
            let more = tokio::time::timeout(Duration::from_millis(20), &mut call).await;
            assert!(more.is_err(), "a 10 s handler finished early: {more:?}");
        };
        // Dropping the pinned future here cancels the execution.
        child
    });

    let dropped_at = Instant::now();
    assert!(
        common::wait_gone(&child, Duration::from_secs(5)),
        "child {} still runs after the future was dropped",
        child.pid
    );
    let gone_after = dropped_at.elapsed();
    eprintln!("child gone {gone_after:?} after the drop");
    assert_eq!(
        supervisor.idle_shepherd_pids(),
        shepherds,
        "the shepherd went back to the pool"
    );

    let next_started = Instant::now();
    let next = runtime.block_on(execute_isolated_async(
        &Task,
        Action::Sleep(0),
        &Context::new(),
        &options,
    ));
    assert!(next.is_ok(), "{next:?}");
    assert!(
        next_started.elapsed() < Duration::from_secs(5),
        "the next call waited {:?}",
        next_started.elapsed()
    );

    drop(runtime);
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

/// Polls `call` once, runs `before_drop` without polling it again, and
/// drops it.
fn poll_once_then_drop(
    runtime: &tokio::runtime::Runtime,
    call: impl Future,
    before_drop: impl FnOnce(),
) {
    let _context = runtime.enter();
    let mut call = std::pin::pin!(call);
    let mut poll_context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        call.as_mut().poll(&mut poll_context).is_pending(),
        "the call finished in its first poll"
    );
    before_drop();
}

/// Waits until a child of this process that `known` does not list runs
/// the executable (its name is then `exe`, after `/proc/self/exe`) and is
/// sleeping or has exited. A shepherd is then past its `exec`, so the
/// spawner thread has handed it to the channel.
fn wait_for_new_shepherd(known: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = common::descendants().values().any(|info| {
            !known.contains(&info.pid) && info.comm == "exe" && matches!(info.state, 'S' | 'Z')
        });
        if started {
            // The spawner sends right after `exec` returns; leave it time.
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        assert!(Instant::now() < deadline, "no shepherd started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropped_future_while_starting_shepherd() {
    let leak = LeakCheck::start();
    let runtime = current_thread_runtime();
    let mut supervisors = Vec::new();

    // The first poll sends a shepherd start to the spawner thread. A drop
    // at once comes before the spawner hands the shepherd over; a later
    // drop comes after the spawner put it in the channel, where no poll
    // ever takes it out. Each case gets a supervisor without an idle
    // shepherd, so the call has to start one.
    // NOTE: when this thread is descheduled for long, the first poll can
    // get past the handshake; the case then checks a later drop point.
    for wait_for_spawner in [false, true] {
        let supervisor = start(1, 0);
        let options = on(&supervisor);
        let known: BTreeSet<u32> = common::descendants().into_keys().collect();
        let call = execute_isolated_async(&Task, Action::Sleep(0), &Context::new(), &options);
        poll_once_then_drop(&runtime, call, || {
            if wait_for_spawner {
                wait_for_new_shepherd(&known);
            }
        });

        let next = runtime.block_on(execute_isolated_async(
            &Task,
            Action::Sleep(0),
            &Context::new(),
            &options,
        ));
        assert!(
            next.is_ok(),
            "after a drop (waited for the spawner: {wait_for_spawner}): {next:?}"
        );
        supervisor.shutdown();
        supervisors.push(supervisor);
    }

    drop(runtime);
    let supervisors: Vec<&Supervisor> = supervisors.iter().collect();
    leak.finish(&supervisors);
}

#[test]
fn dropped_future_while_queued() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);
    let runtime = current_thread_runtime();

    runtime.block_on(async {
        let running = tokio::spawn(execute_isolated_async(
            &Task,
            Action::Sleep(300),
            &Context::new(),
            &options,
        ));
        wait_for_child().await;

        let queued = execute_isolated_async(&Task, Action::Sleep(0), &Context::new(), &options);
        let outcome = tokio::time::timeout(Duration::from_millis(50), queued).await;
        assert!(outcome.is_err(), "the queued call ran: {outcome:?}");

        let after = execute_isolated_async(&Task, Action::Sleep(0), &Context::new(), &options);
        let after = tokio::time::timeout(Duration::from_secs(10), after).await;
        assert!(
            matches!(after, Ok(Ok(_))),
            "a call after the dropped one: {after:?}"
        );
        assert!(running.await.expect("the task ran").is_ok());
    });
    let state = format!("{supervisor:?}");
    assert!(state.contains("running: 0"), "{state}");
    assert!(state.contains("waiting: 0"), "{state}");

    drop(runtime);
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn async_outcomes_match_blocking_ones() {
    let leak = LeakCheck::start();
    let runtime = current_thread_runtime();
    let quick = defaults().timeout(Duration::from_millis(300));
    for (action, category) in [
        (Action::Sleep(0), "ok"),
        (Action::Fail, "error"),
        (Action::Sleep(10_000), "timeout"),
        (Action::Panic, "crashed"),
    ] {
        let report = runtime.block_on(execute_isolated_report_async(
            &Task,
            action.clone(),
            &Context::new(),
            &quick,
        ));
        assert_eq!(
            report.category(),
            category,
            "{action:?}: {:?}",
            report.outcome
        );
        assert!(report.pid.is_some(), "{action:?}: a child started");
    }
    drop(runtime);
    leak.finish(&[]);
}

#[test]
fn async_handler_killing_shepherd() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);
    let runtime = current_thread_runtime();
    let log = std::env::temp_dir().join(format!(
        "isolated-executor-{}-async-kill-shepherd.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);

    let outcome = runtime.block_on(execute_isolated_async(
        &Task,
        Action::KillShepherd(log.clone()),
        &Context::new(),
        &options,
    ));
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(runs.lines().count(), 1, "the handler ran again: {runs:?}");
    match outcome {
        Err(IsolationError::Crashed(CrashReason::ShepherdLost { detail })) => {
            assert!(
                detail.contains("shepherd closed its socket"),
                "detail: {detail}"
            );
        }
        other => panic!("expected ShepherdLost, got {other:?}"),
    }

    let next = runtime.block_on(execute_isolated_async(
        &Task,
        Action::Sleep(0),
        &Context::new(),
        &options,
    ));
    assert!(next.is_ok(), "{next:?}");

    drop(runtime);
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn async_call_after_shutdown_is_unavailable() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);
    let runtime = current_thread_runtime();

    let outcome = runtime.block_on(async {
        let running = tokio::spawn(execute_isolated_async(
            &Task,
            Action::Sleep(10_000),
            &Context::new(),
            &options,
        ));
        let supervisor = supervisor.clone();
        tokio::task::spawn_blocking(move || {
            common::wait_for_grandchild(Duration::from_secs(10));
            supervisor.shutdown();
        })
        .await
        .expect("shutdown ran");
        tokio::time::timeout(Duration::from_secs(5), running).await
    });
    match outcome {
        Ok(Ok(Err(IsolationError::Unavailable { .. }))) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let late = runtime.block_on(execute_isolated_async(
        &Task,
        Action::Sleep(0),
        &Context::new(),
        &options,
    ));
    assert!(
        matches!(late, Err(IsolationError::Unavailable { .. })),
        "{late:?}"
    );

    drop(runtime);
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
fn cancel_arriving_with_request_stops_child() {
    let leak = LeakCheck::start();
    let supervisor = start(1, 1);
    let options = on(&supervisor);
    let runtime = current_thread_runtime();
    let shepherd = supervisor.idle_shepherd_pids()[0] as libc::pid_t;

    // A stopped shepherd reads nothing, so the request and the cancel that
    // dropping the future sends wait in its socket and arrive in one read.
    // SAFETY: kill with integer arguments; the target is an idle shepherd
    // of this test's own supervisor.
    assert_eq!(unsafe { libc::kill(shepherd, libc::SIGSTOP) }, 0);
    runtime.block_on(async {
        let call = execute_isolated_async(&Task, Action::Sleep(5_000), &Context::new(), &options);
        let outcome = tokio::time::timeout(Duration::ZERO, call).await;
        assert!(outcome.is_err(), "the call finished in its first poll");
    });
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(shepherd, libc::SIGCONT) }, 0);

    // The next call waits for the cancelled execution's report first.
    let next_started = Instant::now();
    let next = runtime.block_on(execute_isolated_async(
        &Task,
        Action::Sleep(0),
        &Context::new(),
        &options,
    ));
    assert!(next.is_ok(), "{next:?}");
    assert!(
        next_started.elapsed() < Duration::from_secs(2),
        "the cancelled child ran on for {:?}",
        next_started.elapsed()
    );

    drop(runtime);
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}
