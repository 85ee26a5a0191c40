//! Every row of the outcome table, end to end with real children.

isolated_executor::enable_test_support!();

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use isolated_executor::{
    Context, CrashReason, Handler, IsolationError, KillReason, Options, Supervisor,
    SupervisorConfig, defaults, execute_isolated, execute_isolated_report,
};
use serde::{Deserialize, Serialize};

/// What the test handler does in the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Scenario {
    Return(u64),
    Fail(String),
    Sleep(u64),
    PanicStr,
    PanicString(u32),
    PanicAny,
    Overflow,
    Abort,
    PanicInDrop,
    NullWrite,
    WaitForKill(String),
    Exit(i32),
    ExecTrue,
    EchoContext(String),
    Print(String),
}

#[derive(Serialize, Deserialize)]
struct Act;

struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("panic in drop");
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 32];
    std::hint::black_box(&frame);
    recurse(depth + 1) + frame[1]
}

impl Handler for Act {
    type Args = Scenario;
    type Output = String;
    type Error = String;

    fn execute(&self, scenario: Scenario, context: &Context) -> Result<String, String> {
        match scenario {
            Scenario::Return(n) => Ok(n.to_string()),
            Scenario::Fail(message) => Err(message),
            Scenario::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(format!("slept {ms}"))
            }
            Scenario::PanicStr => panic!("static message"),
            Scenario::PanicString(n) => panic!("formatted message {n}"),
            Scenario::PanicAny => std::panic::panic_any(42u32),
            Scenario::Overflow => Ok(recurse(0).to_string()),
            Scenario::Abort => std::process::abort(),
            Scenario::PanicInDrop => {
                let _guard = PanicsOnDrop;
                panic!("first panic");
            }
            Scenario::NullWrite => {
                // SAFETY: none; writing through a null pointer is the crash
                // this scenario exists to produce.
                unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
                Ok("unreachable".into())
            }
            Scenario::WaitForKill(pid_file) => {
                std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
                std::thread::sleep(Duration::from_secs(30));
                Ok("not killed".into())
            }
            Scenario::Exit(code) => std::process::exit(code),
            Scenario::ExecTrue => {
                let error = std::process::Command::new("/bin/true").exec();
                Err(format!("exec failed: {error}"))
            }
            Scenario::EchoContext(key) => context
                .get(&key)
                .map(str::to_owned)
                .ok_or_else(|| format!("{key} missing")),
            Scenario::Print(text) => {
                println!("{text}");
                eprintln!("err: {text}");
                Ok(text)
            }
        }
    }
}

fn run(scenario: Scenario) -> Result<String, IsolationError<String>> {
    execute_isolated(&Act, scenario, &Context::new(), &quick())
}

fn quick() -> Options {
    defaults().timeout(Duration::from_secs(10))
}

fn crash(scenario: Scenario) -> CrashReason {
    match run(scenario.clone()) {
        Err(IsolationError::Crashed(reason)) => reason,
        other => panic!("{scenario:?} gave {other:?}, expected Crashed"),
    }
}

#[test]
fn ok_value_is_returned() {
    assert_eq!(run(Scenario::Return(7)), Ok("7".into()));
}

#[test]
fn handler_error_is_returned_unchanged() {
    assert_eq!(
        run(Scenario::Fail("bad input".into())),
        Err(IsolationError::Handler("bad input".into()))
    );
}

#[test]
fn context_reaches_the_handler() {
    let context = Context::new().with("session_id", "abc-123");
    let result = execute_isolated(
        &Act,
        Scenario::EchoContext("session_id".into()),
        &context,
        &quick(),
    );
    assert_eq!(result, Ok("abc-123".into()));
}

#[test]
fn slow_handler_times_out() {
    let options = defaults().timeout(Duration::from_millis(100));
    let started = Instant::now();
    let result = execute_isolated(&Act, Scenario::Sleep(500), &Context::new(), &options);
    assert!(
        matches!(result, Err(IsolationError::Timeout { timeout, .. }) if timeout == Duration::from_millis(100)),
        "{result:?}"
    );
    // Generous safety bound: the call must not wait for the whole sleep.
    assert!(
        started.elapsed() < Duration::from_millis(480),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn fast_handler_completes_within_timeout() {
    let options = defaults().timeout(Duration::from_millis(500));
    let result = execute_isolated(&Act, Scenario::Sleep(50), &Context::new(), &options);
    assert_eq!(result, Ok("slept 50".into()));
}

#[test]
fn default_timeout_is_thirty_seconds() {
    assert_eq!(defaults().timeout, Duration::from_secs(30));
    assert_eq!(Options::default().timeout, Duration::from_secs(30));
}

#[test]
fn panic_with_str_is_crash_with_message() {
    let CrashReason::Panic { message, location } = crash(Scenario::PanicStr) else {
        panic!("expected a panic");
    };
    assert_eq!(message, "static message");
    let location = location.expect("location recorded");
    assert!(location.contains("outcomes.rs"), "{location}");
}

#[test]
fn panic_with_string_is_crash_with_message() {
    let reason = crash(Scenario::PanicString(5));
    assert!(
        matches!(&reason, CrashReason::Panic { message, .. } if message == "formatted message 5"),
        "{reason:?}"
    );
}

#[test]
fn panic_with_other_payload_is_crash() {
    let reason = crash(Scenario::PanicAny);
    assert!(
        matches!(&reason, CrashReason::Panic { message, .. } if message == "Box<dyn Any>"),
        "{reason:?}"
    );
}

#[test]
fn stack_overflow_is_named() {
    let reason = crash(Scenario::Overflow);
    assert!(
        matches!(reason, CrashReason::StackOverflow { .. }),
        "{reason:?}"
    );
}

#[test]
fn abort_is_named_with_stderr() {
    let reason = crash(Scenario::Abort);
    assert!(matches!(reason, CrashReason::Abort { .. }), "{reason:?}");
}

#[test]
fn panic_in_drop_while_unwinding_aborts() {
    let CrashReason::Abort { stderr_tail } = crash(Scenario::PanicInDrop) else {
        panic!("expected an abort");
    };
    assert!(stderr_tail.contains("panic in drop"), "{stderr_tail}");
}

#[test]
fn null_write_is_sigsegv() {
    assert_eq!(
        crash(Scenario::NullWrite),
        CrashReason::Signal {
            number: 11,
            name: "SIGSEGV".into(),
            core_dumped: false
        }
    );
}

#[test]
fn sigkill_from_outside_is_signal() {
    let dir = std::env::temp_dir().join(format!("ie-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let file_arg = pid_file.display().to_string();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    // SAFETY: kill with a pid this test's child wrote itself.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return pid;
                }
            }
            assert!(Instant::now() < deadline, "the child never wrote its pid");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let reason = crash(Scenario::WaitForKill(file_arg));
    killer.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        reason,
        CrashReason::Signal {
            number: 9,
            name: "SIGKILL".into(),
            core_dumped: false
        }
    );
}

#[test]
fn exit_zero_and_three_are_exit() {
    assert_eq!(crash(Scenario::Exit(0)), CrashReason::Exit { code: 0 });
    assert_eq!(crash(Scenario::Exit(3)), CrashReason::Exit { code: 3 });
}

#[test]
fn exec_is_no_result() {
    assert_eq!(crash(Scenario::ExecTrue), CrashReason::NoResult { code: 0 });
}

#[test]
fn output_tails_are_captured() {
    let report = execute_isolated_report(
        &Act,
        Scenario::Print("hello".into()),
        &Context::new(),
        &quick(),
    );
    assert_eq!(report.outcome, Ok("hello".into()));
    assert_eq!(report.stdout_tail, "hello\n");
    assert_eq!(report.stderr_tail, "err: hello\n");
    assert!(report.pid.is_some());
    assert!(report.peak_rss_bytes > 0);
}

#[test]
fn caller_survives_five_crashes_then_succeeds() {
    for scenario in [
        Scenario::PanicStr,
        Scenario::Abort,
        Scenario::NullWrite,
        Scenario::Exit(1),
        Scenario::Overflow,
    ] {
        assert!(matches!(run(scenario), Err(IsolationError::Crashed(_))));
    }
    assert_eq!(run(Scenario::Return(1)), Ok("1".into()));
}

#[test]
fn heap_kill_is_not_a_crash() {
    #[derive(Serialize, Deserialize)]
    struct Allocate;
    impl Handler for Allocate {
        type Args = usize;
        type Output = usize;
        type Error = ();
        fn execute(&self, bytes: usize, _: &Context) -> Result<usize, ()> {
            Ok(std::hint::black_box(vec![1u8; bytes]).len())
        }
    }
    let result = execute_isolated(&Allocate, 100 << 20, &Context::new(), &defaults());
    assert!(
        matches!(
            result,
            Err(IsolationError::Killed(KillReason::MaxHeapSize {
                limit: 8_000_000,
                ..
            }))
        ),
        "{result:?}"
    );
}

#[test]
fn blocked_and_ignored_signals_are_not_inherited() {
    // Block SIGTERM and ignore SIGINT in this thread; the child must still
    // die of SIGTERM at the deadline without needing SIGKILL.
    #[derive(Serialize, Deserialize)]
    struct ReportMask;
    impl Handler for ReportMask {
        type Args = ();
        type Output = (bool, bool);
        type Error = ();
        fn execute(&self, _: (), _: &Context) -> Result<(bool, bool), ()> {
            // SAFETY: sigprocmask and sigaction only read into local values.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                let blocked = libc::sigismember(&set, libc::SIGTERM) == 1;
                let mut action: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGINT, std::ptr::null(), &mut action);
                Ok((blocked, action.sa_sigaction == libc::SIG_IGN))
            }
        }
    }
    let supervisor = Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..Default::default()
    })
    .unwrap();
    // SAFETY: blocks SIGTERM in this test thread and ignores SIGINT in the
    // whole test process. An ignored disposition survives fork and exec, so
    // the shepherd inherits it and the child must reset it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let options = defaults().supervisor(supervisor.clone());
    let result = execute_isolated(&ReportMask, (), &Context::new(), &options);
    supervisor.shutdown();
    assert_eq!(result, Ok((false, false)));
}
