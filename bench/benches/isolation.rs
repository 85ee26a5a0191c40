//! Isolated execution measured side by side with the fork floor, `Command`
//! running `/bin/true`, procspawn and rusty-fork, plus timeout precision,
//! 64 MiB payload rates and start-up times.
//!
//! Run: `cargo bench -p isolated-bench`. Environment:
//! - `ISOLATED_BENCH_QUICK=1` cuts every run count by about ten;
//! - `ISOLATED_BENCH_ONLY=a,b` runs only the named sections (`floor`,
//!   `startup`, `sequential`, `parallel`, `peers`, `timeout`, `data`); the
//!   fork floor always runs, because every ratio needs it.
//!
//! This binary is re-executed three ways: as a shepherd of the executor
//! (`ISOLATED_EXECUTOR_SHEPHERD_FD` set), as a procspawn child
//! (`__PROCSPAWN_CONTENT_PROCESS_ID` set) and as a rusty-fork child
//! (`RUSTY_FORK_OCCURS` set). Each hook at the top of `main` diverts only
//! on its own variable, so their order does not matter.

use std::time::{Duration, Instant};

use isolated_bench::{
    Samples, fork_exit_wait, megabytes_per_second, micros, millis, ratio, time_each,
};
use isolated_executor::{
    Context, Handler, IsolationError, Supervisor, SupervisorConfig, defaults, execute_isolated,
    execute_isolated_report,
};
use serde::{Deserialize, Serialize};

/// Adds one to its argument: the smallest useful execution.
#[derive(Serialize, Deserialize)]
struct Increment;

impl Handler for Increment {
    type Args = u64;
    type Output = u64;
    type Error = String;
    fn execute(&self, value: u64, _: &Context) -> Result<u64, String> {
        Ok(value + 1)
    }
}

/// Sleeps for the given milliseconds, so the timeout fires first.
#[derive(Serialize, Deserialize)]
struct Sleep;

impl Handler for Sleep {
    type Args = u64;
    type Output = ();
    type Error = String;
    fn execute(&self, millis: u64, _: &Context) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(millis));
        Ok(())
    }
}

/// Takes a large argument and returns its length and a checksum of its
/// first and last byte, so the bytes are known to have arrived.
#[derive(Serialize, Deserialize)]
struct Consume;

impl Handler for Consume {
    type Args = Vec<u8>;
    type Output = (u64, u8);
    type Error = String;
    fn execute(&self, bytes: Vec<u8>, _: &Context) -> Result<(u64, u8), String> {
        let edge = bytes.first().copied().unwrap_or(0) ^ bytes.last().copied().unwrap_or(0);
        Ok((bytes.len() as u64, edge))
    }
}

/// Returns a vector of the requested length.
#[derive(Serialize, Deserialize)]
struct Produce;

impl Handler for Produce {
    type Args = u64;
    type Output = Vec<u8>;
    type Error = String;
    fn execute(&self, len: u64, _: &Context) -> Result<Vec<u8>, String> {
        Ok(vec![0x5a; len as usize])
    }
}

/// The procspawn counterpart of `Increment`.
fn increment(value: u64) -> u64 {
    value + 1
}

/// Runs one rusty-fork child that does nothing and waits for it. The child
/// is this binary re-executed with `RUSTY_FORK_OCCURS` set; `main` calls
/// this function again there, and the same call site gives the same fork
/// id, so rusty-fork runs the empty closure and exits the child.
fn rusty_fork_trivial() {
    let status = rusty_fork::fork(
        "isolated_bench_rusty_fork_trivial",
        rusty_fork::rusty_fork_id!(),
        |_| {},
        |child, _| child.wait(),
        || {},
    )
    .expect("rusty-fork failed to start its child")
    .expect("waiting for the rusty-fork child failed");
    assert!(status.success(), "rusty-fork child ended with {status}");
}

const DATA_LEN: usize = 64 << 20;

struct Settings {
    quick: bool,
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var_os("ISOLATED_BENCH_QUICK").is_some_and(|v| v != "0");
        let only = std::env::var("ISOLATED_BENCH_ONLY")
            .ok()
            .map(|list| list.split(',').map(|s| s.trim().to_owned()).collect());
        Settings { quick, only }
    }

    /// `full` runs, or about a tenth of them in quick mode.
    fn runs(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(3) } else { full }
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == section))
    }
}

/// One row of the latency table.
struct Row {
    name: String,
    samples: Samples,
}

fn print_latency_table(rows: &[Row], floor: Duration) {
    println!();
    println!(
        "{:<46} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "figure (µs per execution)", "n", "mean", "p50", "p90", "p99", "x floor"
    );
    for row in rows {
        let s = &row.samples;
        println!(
            "{:<46} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
            row.name,
            s.len(),
            micros(s.mean()),
            micros(s.percentile(50.0)),
            micros(s.percentile(90.0)),
            micros(s.percentile(99.0)),
            ratio(s.mean(), floor),
        );
    }
}

fn main() {
    isolated_executor::init();
    procspawn::init();
    if std::env::var_os("RUSTY_FORK_OCCURS").is_some() {
        rusty_fork_trivial();
        unreachable!("rusty-fork exits its child after the closure");
    }

    let settings = Settings::from_env();
    let mut rows = Vec::new();

    // The floor comes first, while this process still has one thread.
    let floor_samples = time_each(settings.runs(200), settings.runs(2000), || {
        fork_exit_wait().expect("fork floor")
    });
    let floor = floor_samples.mean();
    rows.push(Row {
        name: "fork + _exit + waitpid (floor)".into(),
        samples: floor_samples,
    });

    if settings.wants("floor") {
        let samples = time_each(settings.runs(50), settings.runs(500), || {
            let status = std::process::Command::new("/bin/true")
                .status()
                .expect("running /bin/true");
            assert!(status.success());
        });
        rows.push(Row {
            name: "Command::new(\"/bin/true\").status()".into(),
            samples,
        });
    }

    if settings.wants("startup") {
        startup(&settings);
    }

    let mut sequential_mean = None;
    if settings.wants("sequential") {
        let options = defaults();
        let samples = time_each(settings.runs(300), settings.runs(3000), || {
            assert_eq!(
                execute_isolated(&Increment, 41, &Context::new(), &options),
                Ok(42)
            );
        });
        sequential_mean = Some(samples.mean());
        rows.push(Row {
            name: "isolated, sequential (default options)".into(),
            samples,
        });

        let options = defaults().max_heap_size(None);
        let samples = time_each(settings.runs(300), settings.runs(3000), || {
            assert_eq!(
                execute_isolated(&Increment, 41, &Context::new(), &options),
                Ok(42)
            );
        });
        rows.push(Row {
            name: "isolated, sequential, no heap budget".into(),
            samples,
        });
    }

    let mut parallel = None;
    if settings.wants("parallel") {
        parallel = Some(parallel_throughput(&settings));
    }

    if settings.wants("peers") {
        let samples = time_each(settings.runs(10), settings.runs(200), || {
            let result = procspawn::spawn(41u64, increment).join();
            assert_eq!(result.expect("procspawn join"), 42);
        });
        rows.push(Row {
            name: "procspawn spawn + join".into(),
            samples,
        });

        let samples = time_each(settings.runs(10), settings.runs(200), rusty_fork_trivial);
        rows.push(Row {
            name: "rusty-fork fork + wait".into(),
            samples,
        });
    }

    print_latency_table(&rows, floor);
    if let Some((per_execution, callers)) = parallel {
        println!(
            "{:<46} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
            format!("isolated, {callers} callers (wall time / executions)"),
            "",
            micros(per_execution),
            "",
            "",
            "",
            ratio(per_execution, floor),
        );
        if let Some(sequential) = sequential_mean {
            println!(
                "parallel throughput / sequential throughput: {:.2}x",
                sequential.as_secs_f64() / per_execution.as_secs_f64()
            );
        }
    }
    if let (Some(sequential), Some(procspawn)) = (
        sequential_mean,
        rows.iter()
            .find(|r| r.name.starts_with("procspawn"))
            .map(|r| r.samples.mean()),
    ) {
        println!(
            "procspawn spawn + join / isolated sequential: {:.1}x",
            procspawn.as_secs_f64() / sequential.as_secs_f64()
        );
    }

    if settings.wants("timeout") {
        timeout_precision(&settings);
    }
    if settings.wants("data") {
        data_rates(&settings);
    }
}

/// Runs `Increment` from two threads at once and returns the wall time per
/// execution and the number of callers.
fn parallel_throughput(settings: &Settings) -> (Duration, usize) {
    const CALLERS: usize = 2;
    let per_caller = settings.runs(3000);
    let run = |count: usize| {
        std::thread::scope(|scope| {
            for _ in 0..CALLERS {
                scope.spawn(|| {
                    let options = defaults();
                    for i in 0..count as u64 {
                        assert_eq!(
                            execute_isolated(&Increment, i, &Context::new(), &options),
                            Ok(i + 1)
                        );
                    }
                });
            }
        });
    };
    // Warm-up starts a second shepherd in the global pool.
    run(settings.runs(300));
    let start = Instant::now();
    run(per_caller);
    (start.elapsed() / (CALLERS * per_caller) as u32, CALLERS)
}

/// The first execution through a supervisor, which starts its shepherd,
/// and `Supervisor::start` with eight prestarted shepherds.
fn startup(settings: &Settings) {
    println!("start-up");

    // The very first call of the process also starts the spawner thread.
    let start = Instant::now();
    assert_eq!(
        execute_isolated(&Increment, 1, &Context::new(), &defaults()),
        Ok(2)
    );
    println!(
        "  first call of the process (global supervisor): {} ms",
        millis(start.elapsed())
    );

    let mut first_calls = Vec::new();
    for _ in 0..settings.runs(20) {
        let supervisor = Supervisor::start(SupervisorConfig::default()).expect("supervisor");
        let options = defaults().supervisor(supervisor.clone());
        let start = Instant::now();
        assert_eq!(
            execute_isolated(&Increment, 1, &Context::new(), &options),
            Ok(2)
        );
        first_calls.push(start.elapsed());
        supervisor.shutdown();
    }
    let first_calls = Samples::new(first_calls);
    println!(
        "  first call through a new supervisor (n={}): mean {} ms, p50 {} ms, max {} ms",
        first_calls.len(),
        millis(first_calls.mean()),
        millis(first_calls.percentile(50.0)),
        millis(first_calls.max())
    );

    let mut starts = Vec::new();
    for _ in 0..settings.runs(10) {
        let config = SupervisorConfig {
            max_children: 8,
            prestart: 8,
            ..SupervisorConfig::default()
        };
        let start = Instant::now();
        let supervisor = Supervisor::start(config).expect("supervisor with prestart 8");
        starts.push(start.elapsed());
        assert_eq!(supervisor.idle_shepherd_pids().len(), 8);
        supervisor.shutdown();
    }
    let starts = Samples::new(starts);
    println!(
        "  Supervisor::start with prestart 8 (n={}): mean {} ms, p50 {} ms, max {} ms",
        starts.len(),
        millis(starts.mean()),
        millis(starts.percentile(50.0)),
        millis(starts.max())
    );
}

/// How late a 50 ms timeout with no grace period returns.
fn timeout_precision(settings: &Settings) {
    const TIMEOUT: Duration = Duration::from_millis(50);
    let options = defaults().timeout(TIMEOUT).shutdown_grace(Duration::ZERO);
    let mut caller_late = Vec::new();
    let mut shepherd_late = Vec::new();
    for _ in 0..settings.runs(200) {
        let report = execute_isolated_report(&Sleep, 10_000, &Context::new(), &options);
        assert!(
            matches!(report.outcome, Err(IsolationError::Timeout { .. })),
            "expected a timeout, got {:?}",
            report.outcome
        );
        caller_late.push(report.duration.saturating_sub(TIMEOUT));
        shepherd_late.push(report.child_duration.saturating_sub(TIMEOUT));
    }
    println!();
    println!("timeout precision: 50 ms timeout, zero grace, handler sleeps 10 s");
    for (name, samples) in [
        (
            "  call returned after the timeout (caller)",
            Samples::new(caller_late),
        ),
        (
            "  child reaped after the timeout (shepherd)",
            Samples::new(shepherd_late),
        ),
    ] {
        println!(
            "{name} (n={}): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            samples.len(),
            millis(samples.percentile(50.0)),
            millis(samples.percentile(90.0)),
            millis(samples.percentile(99.0)),
            millis(samples.max())
        );
    }
}

/// Rates of a 64 MiB argument and a 64 MiB result, whole calls included.
fn data_rates(settings: &Settings) {
    let options = defaults().max_heap_size(None);
    let template: Vec<u8> = (0..DATA_LEN).map(|i| i as u8).collect();
    let expected_edge = template[0] ^ template[DATA_LEN - 1];

    let mut argument = Vec::new();
    for round in 0..settings.runs(10) + 1 {
        let bytes = template.clone();
        let start = Instant::now();
        let result = execute_isolated(&Consume, bytes, &Context::new(), &options);
        let elapsed = start.elapsed();
        assert_eq!(result, Ok((DATA_LEN as u64, expected_edge)));
        // The first round is a warm-up.
        if round > 0 {
            argument.push(elapsed);
        }
    }

    let mut result = Vec::new();
    for round in 0..settings.runs(10) + 1 {
        let start = Instant::now();
        let output = execute_isolated(&Produce, DATA_LEN as u64, &Context::new(), &options)
            .expect("64 MiB result");
        let elapsed = start.elapsed();
        assert_eq!(output.len(), DATA_LEN);
        assert!(output.iter().all(|&b| b == 0x5a));
        if round > 0 {
            result.push(elapsed);
        }
    }

    println!();
    println!("data: 64 MiB Vec<u8>, max_heap_size(None), whole call timed");
    for (name, samples) in [
        ("  argument", Samples::new(argument)),
        ("  result", Samples::new(result)),
    ] {
        println!(
            "{name} (n={}): mean {} ms ({:.0} MB/s), p50 {} ms ({:.0} MB/s), max {} ms",
            samples.len(),
            millis(samples.mean()),
            megabytes_per_second(DATA_LEN as u64, samples.mean()),
            millis(samples.percentile(50.0)),
            megabytes_per_second(DATA_LEN as u64, samples.percentile(50.0)),
            millis(samples.max()),
        );
    }
}
