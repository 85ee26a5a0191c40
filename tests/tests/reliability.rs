//! Children that misbehave on purpose: each test checks the outcome the
//! executor returns and that the caller is left with no extra fd, process
//! or zombie afterwards.
//!
//! The fixture programs come from the isolated-fixtures crate; `cargo test
//! --workspace` and `cargo nextest run --workspace` build them.
#![forbid(unsafe_code)]

isolated_executor::enable_test_support!();

mod common;

use std::time::Duration;

use common::{Baseline, ScratchDir, assert_gone, rss_bytes, serial};
use isolated_executor::{
    Context, CrashReason, ExecutionReport, Handler, IsolationError, Options, defaults,
    execute_isolated, execute_isolated_report,
};
use isolated_harness::misbehave::{
    ArgsFailToDecode, ArgsFailToEncode, ErrorFailsToDecode, Misbehave, Misbehaviour,
    OutputFailsToDecode, OutputFailsToEncode, PATTERN_LINE, Returned, fill_pattern,
};

/// Time past the deadline and grace period that a terminated call may take
/// to return: starting a shepherd, killing, reaping and reporting. This is
/// a generous safety bound; a call usually needs a few milliseconds.
const RETURN_MARGIN: Duration = Duration::from_secs(3);

/// Upper bound for a call that should return at once. It is far below the
/// hour that the misbehaving processes sleep.
const PROMPT: Duration = Duration::from_secs(10);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn exec(program: &str, args: &[&str]) -> Misbehaviour {
    Misbehaviour::Exec {
        program: isolated_fixtures::path(program),
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
    }
}

fn run(misbehaviour: Misbehaviour, options: &Options) -> ExecutionReport<Returned, String> {
    execute_isolated_report(&Misbehave, misbehaviour, &Context::new(), options)
}

/// Returns the pid of the child that ran the execution.
fn child_pid<T, E>(report: &ExecutionReport<T, E>) -> u32 {
    report.pid.expect("the report names the child's pid")
}

fn timeout_error(timeout: Duration, escalated_to_kill: bool) -> IsolationError<String> {
    IsolationError::Timeout {
        timeout,
        escalated_to_kill,
    }
}

fn returned_pids(report: &ExecutionReport<Returned, String>) -> Vec<u32> {
    match &report.outcome {
        Ok(Returned::Pids(pids)) => pids.clone(),
        other => panic!("expected pids, got {other:?}"),
    }
}

fn protocol_detail<T: std::fmt::Debug, E: std::fmt::Debug>(
    outcome: Result<T, IsolationError<E>>,
) -> String {
    match outcome {
        Err(IsolationError::Crashed(CrashReason::Protocol { detail })) => detail,
        other => panic!("expected Crashed(Protocol), got {other:?}"),
    }
}

#[test]
fn ignored_sigterm_is_killed_after_grace() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let (timeout, grace) = (ms(400), ms(300));
    let options = defaults().timeout(timeout).shutdown_grace(grace);

    let report = run(exec("ignore_sigterm", &[]), &options);

    assert_eq!(report.outcome, Err(timeout_error(timeout, true)));
    assert!(
        report.stderr_tail.contains("ignoring SIGTERM"),
        "the fixture ignored SIGTERM before the deadline: {:?}",
        report.stderr_tail
    );
    assert!(
        report.child_duration >= timeout + grace,
        "SIGKILL came only after the grace period: {:?}",
        report.child_duration
    );
    assert!(
        report.duration < timeout + grace + RETURN_MARGIN,
        "returned within deadline, grace and margin: {:?}",
        report.duration
    );
    assert_gone(child_pid(&report), "the child");
    baseline.assert_clean();
}

#[test]
fn in_process_ignored_sigterm_is_killed() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let (timeout, grace) = (ms(300), ms(200));
    let options = defaults().timeout(timeout).shutdown_grace(grace);

    let report = run(Misbehaviour::IgnoreSigterm, &options);

    assert_eq!(report.outcome, Err(timeout_error(timeout, true)));
    assert!(report.stderr_tail.contains("ignoring SIGTERM"));
    assert!(report.child_duration >= timeout + grace);
    assert!(report.duration < timeout + grace + RETURN_MARGIN);
    assert_gone(child_pid(&report), "the child");
    baseline.assert_clean();
}

#[test]
fn slow_sigterm_handler_is_killed_after_grace() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let (timeout, grace) = (ms(400), ms(300));
    let options = defaults().timeout(timeout).shutdown_grace(grace);

    let report = run(exec("slow_sigterm", &[]), &options);

    assert_eq!(report.outcome, Err(timeout_error(timeout, true)));
    assert!(
        report.stderr_tail.contains("SIGTERM received"),
        "SIGTERM reached the handler before SIGKILL: {:?}",
        report.stderr_tail
    );
    assert!(
        report.child_duration >= timeout + grace,
        "SIGKILL came only after the grace period: {:?}",
        report.child_duration
    );
    assert!(report.duration < timeout + grace + RETURN_MARGIN);
    assert_gone(child_pid(&report), "the child");
    baseline.assert_clean();
}

#[test]
fn self_stopped_child_is_killed() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let (timeout, grace) = (ms(400), ms(200));
    let options = defaults().timeout(timeout).shutdown_grace(grace);

    let report = run(exec("stop_self", &[]), &options);

    // A stopped process does not act on SIGTERM, so only the escalation
    // (SIGCONT and SIGKILL) can end it.
    assert_eq!(report.outcome, Err(timeout_error(timeout, true)));
    assert!(
        report.stderr_tail.contains("stop_self: stopping"),
        "{:?}",
        report.stderr_tail
    );
    assert!(report.duration < timeout + grace + RETURN_MARGIN);
    assert_gone(child_pid(&report), "the stopped child");
    baseline.assert_clean();
}

#[test]
fn grandchild_holding_stdio_does_not_delay_result() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let program = isolated_fixtures::path("hold_stdio");

    let report = run(
        Misbehaviour::ReturnWhileGrandchildHoldsStdio { program },
        &defaults(),
    );

    let pids = returned_pids(&report);
    assert_eq!(pids.len(), 1);
    assert!(
        report.duration < PROMPT,
        "the result came back while the grandchild held stdout: {:?}",
        report.duration
    );
    assert!(report.descendants_killed >= 1, "{report:?}");
    assert_gone(pids[0], "the grandchild holding stdout and stderr");
    assert_gone(child_pid(&report), "the child");
    baseline.assert_clean();
}

#[test]
fn double_forked_daemon_is_killed_and_reaped() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let program = isolated_fixtures::path("double_fork_daemon");

    let report = run(Misbehaviour::DetachDaemon { program }, &defaults());

    let pids = returned_pids(&report);
    assert_eq!(pids.len(), 2, "the middle process and the daemon");
    assert!(report.duration < PROMPT, "{:?}", report.duration);
    assert!(report.descendants_killed >= 1, "{report:?}");
    assert_gone(pids[0], "the middle process of the double fork");
    assert_gone(pids[1], "the daemon");
    baseline.assert_clean();
}

#[test]
fn setsid_grandchild_is_killed_and_reaped() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let program = isolated_fixtures::path("setsid_sleeper");

    let report = run(Misbehaviour::SpawnSetsidSleeper { program }, &defaults());

    let pids = returned_pids(&report);
    assert_eq!(pids.len(), 1);
    assert!(report.duration < PROMPT, "{:?}", report.duration);
    assert!(report.descendants_killed >= 1, "{report:?}");
    assert_gone(pids[0], "the grandchild in its own session");
    baseline.assert_clean();
}

#[test]
fn bounded_fork_bomb_is_killed_entirely() {
    const COUNT: usize = 300;
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let scratch = ScratchDir::new("fork-bomb");
    let pidfile = scratch.path().join("pids");
    let (timeout, grace) = (ms(2000), ms(200));
    let options = defaults().timeout(timeout).shutdown_grace(grace);

    let report = run(
        exec(
            "fork_bomb",
            &[
                &COUNT.to_string(),
                pidfile.to_str().expect("UTF-8 temp path"),
            ],
        ),
        &options,
    );

    assert!(
        matches!(report.outcome, Err(IsolationError::Timeout { timeout: t, .. }) if t == timeout),
        "{:?}",
        report.outcome
    );
    assert!(
        report
            .stderr_tail
            .contains(&format!("fork_bomb: forked {COUNT} processes")),
        "the whole bomb forked before the deadline: {:?}",
        report.stderr_tail
    );
    assert!(report.duration < timeout + grace + RETURN_MARGIN);
    let pids: Vec<u32> = std::fs::read_to_string(&pidfile)
        .expect("the bomb wrote its pids")
        .lines()
        .map(|line| line.parse().expect("a pid per line"))
        .collect();
    assert_eq!(pids.len(), COUNT);
    assert!(
        report.descendants_killed as usize >= COUNT / 2,
        "the sweep reaped at least the half in new sessions: {}",
        report.descendants_killed
    );
    for pid in pids {
        assert_gone(pid, "a process of the fork bomb");
    }
    assert_gone(child_pid(&report), "the bomb's root");
    baseline.assert_clean();
}

#[test]
fn huge_output_keeps_bounded_tail() {
    const BYTES: u64 = 100 << 20;
    let _serial = serial();
    // Start the shepherd first, so its start-up does not count as growth.
    let warm = run(Misbehaviour::CloseStdio, &defaults());
    assert_eq!(warm.outcome, Ok(Returned::Done));
    let baseline = Baseline::capture(&[]);
    let rss_before = rss_bytes();
    let tail = 8 << 10;

    let report = run(
        Misbehaviour::FloodOutput {
            stdout_bytes: BYTES,
            stderr_bytes: BYTES,
        },
        &defaults().output_tail(tail),
    );
    let rss_after = rss_bytes();

    assert_eq!(
        report.outcome,
        Ok(Returned::Written {
            stdout: BYTES,
            stderr: BYTES
        })
    );
    assert_eq!(report.stdout_bytes, BYTES);
    assert_eq!(report.stderr_bytes, BYTES);
    // The streams end on a whole pattern line, so the kept tail is whole
    // lines too.
    let expected_tail = PATTERN_LINE.repeat(tail / PATTERN_LINE.len());
    assert_eq!(report.stdout_tail.as_bytes(), expected_tail.as_slice());
    assert_eq!(report.stderr_tail.as_bytes(), expected_tail.as_slice());
    assert!(
        rss_after < rss_before + (20 << 20),
        "caller RSS grew from {rss_before} to {rss_after} bytes"
    );
    drop(report);
    baseline.assert_clean();
}

#[test]
fn closed_stdio_still_returns_result() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let report = run(Misbehaviour::CloseStdio, &defaults());

    assert_eq!(report.outcome, Ok(Returned::Done));
    assert!(report.duration < PROMPT);
    baseline.assert_clean();
}

#[test]
fn closed_result_pipe_is_no_result() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let report = run(Misbehaviour::CloseResultPipe, &defaults());

    assert_eq!(
        report.outcome,
        Err(IsolationError::Crashed(CrashReason::NoResult { code: 0 }))
    );
    assert!(report.duration < PROMPT);
    baseline.assert_clean();
}

#[test]
fn large_result_comes_back() {
    const BYTES: usize = 64 << 20;
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let options = defaults().max_heap_size(None);

    let outcome = execute_isolated(
        &Misbehave,
        Misbehaviour::LargeResult { bytes: BYTES },
        &Context::new(),
        &options,
    );

    let Ok(Returned::Bytes(bytes)) = outcome else {
        panic!("expected the 64 MiB buffer, got {outcome:?}");
    };
    assert_eq!(bytes.len(), BYTES);
    let mut expected = vec![0; BYTES];
    fill_pattern(&mut expected);
    assert!(bytes == expected, "the buffer came back changed");
    baseline.assert_clean();
}

#[test]
fn oversized_result_names_limit_and_fix() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let options = defaults().max_result_size(1 << 20);

    let outcome = execute_isolated(
        &Misbehave,
        Misbehaviour::LargeResult { bytes: 2 << 20 },
        &Context::new(),
        &options,
    );

    let detail = protocol_detail(outcome);
    assert!(
        detail.contains("max_result_size of 1048576 bytes"),
        "{detail}"
    );
    assert!(
        detail.contains("raise Options::max_result_size"),
        "{detail}"
    );
    baseline.assert_clean();
}

#[test]
fn killed_shepherd_is_shepherd_lost() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let report = run(Misbehaviour::KillShepherd, &defaults());

    match &report.outcome {
        Err(IsolationError::Crashed(CrashReason::ShepherdLost { detail })) => {
            assert!(detail.contains("shepherd"), "{detail}");
        }
        other => panic!("expected Crashed(ShepherdLost), got {other:?}"),
    }
    assert!(report.duration < PROMPT, "{:?}", report.duration);
    // The child dies of its parent-death signal. Its new parent is outside
    // this process tree, so it may linger as that parent's zombie for a
    // moment; it must not keep running.
    if let Some(pid) = report.pid {
        wait_not_running(pid);
    }

    let next = run(Misbehaviour::LargeResult { bytes: 16 }, &defaults());
    let mut expected = vec![0; 16];
    fill_pattern(&mut expected);
    assert_eq!(next.outcome, Ok(Returned::Bytes(expected)));
    baseline.assert_clean();
}

#[test]
fn killed_shepherd_leaves_no_setsid_grandchild() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);
    let scratch = ScratchDir::new("killed-shepherd-setsid");
    let pidfile = scratch.path().join("pid");
    let program = isolated_fixtures::path("setsid_sleeper");

    let report = run(
        Misbehaviour::KillShepherdAfterSetsid {
            program,
            pidfile: pidfile.clone(),
        },
        &defaults(),
    );

    assert!(
        matches!(
            report.outcome,
            Err(IsolationError::Crashed(CrashReason::ShepherdLost { .. }))
        ),
        "{:?}",
        report.outcome
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the handler wrote the sleeper's pid")
        .trim()
        .parse()
        .expect("a decimal pid");
    let survived = wait_not_running_within(pid, ms(2000)).is_err();
    if survived {
        // This test started the sleeper, so it ends it by its pid.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(
        !survived,
        "the setsid grandchild {pid} outlived its killed shepherd"
    );
    baseline.assert_clean();
}

/// Waits until process `pid` is gone or a zombie; `Err` with its state
/// when it still runs after `limit`.
fn wait_not_running_within(pid: u32, limit: Duration) -> Result<(), common::ProcessStat> {
    let start = std::time::Instant::now();
    loop {
        match common::process_stat(pid).filter(|stat| stat.state != 'Z') {
            None => return Ok(()),
            Some(stat) if start.elapsed() >= limit => return Err(stat),
            Some(_) => std::thread::sleep(ms(10)),
        }
    }
}

fn wait_not_running(pid: u32) {
    if let Err(stat) = wait_not_running_within(pid, PROMPT) {
        panic!("process {pid} still runs after {PROMPT:?}: {stat:?}");
    }
}

/// Runs `handler` and returns the protocol error it must give, after
/// checking that the call did not hang.
fn serde_failure<H: Handler>(handler: &H, args: H::Args) -> String
where
    H::Output: std::fmt::Debug,
    H::Error: std::fmt::Debug,
{
    let report = execute_isolated_report(handler, args, &Context::new(), &defaults());
    assert!(report.duration < PROMPT, "{:?}", report.duration);
    protocol_detail(report.outcome)
}

#[test]
fn undecodable_args_name_handler_and_fix() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let detail = serde_failure(&ArgsFailToDecode, Default::default());

    assert!(detail.contains("ArgsFailToDecode"), "{detail}");
    assert!(detail.contains("failed to decode"), "{detail}");
    assert!(
        detail.contains("check that their Serialize and Deserialize impls round-trip"),
        "{detail}"
    );
    baseline.assert_clean();
}

#[test]
fn unencodable_args_fail_in_caller() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let report = execute_isolated_report(
        &ArgsFailToEncode,
        Default::default(),
        &Context::new(),
        &defaults(),
    );

    assert_eq!(report.pid, None, "no child was started");
    let detail = protocol_detail(report.outcome);
    assert!(detail.contains("ArgsFailToEncode"), "{detail}");
    assert!(detail.contains("failed to serialize"), "{detail}");
    assert!(detail.contains("check their Serialize impls"), "{detail}");
    baseline.assert_clean();
}

#[test]
fn unencodable_output_names_handler_and_fix() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let detail = serde_failure(&OutputFailsToEncode, ());

    assert!(detail.contains("OutputFailsToEncode"), "{detail}");
    assert!(detail.contains("failed to encode the output"), "{detail}");
    assert!(detail.contains("check its Serialize impl"), "{detail}");
    baseline.assert_clean();
}

#[test]
fn undecodable_output_names_type_and_fix() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let detail = serde_failure(&OutputFailsToDecode, ());

    assert!(detail.contains("RejectOnDecode"), "{detail}");
    assert!(
        detail.contains("failed to decode the handler's output"),
        "{detail}"
    );
    assert!(detail.contains("round-trip"), "{detail}");
    baseline.assert_clean();
}

#[test]
fn undecodable_error_names_type_and_fix() {
    let _serial = serial();
    let baseline = Baseline::capture(&[]);

    let detail = serde_failure(&ErrorFailsToDecode, ());

    assert!(detail.contains("RejectOnDecode"), "{detail}");
    assert!(
        detail.contains("failed to decode the handler's error"),
        "{detail}"
    );
    assert!(detail.contains("round-trip"), "{detail}");
    baseline.assert_clean();
}
