//! Sends every fixture handler through the executor with real limits and
//! prints a table of what happened.
//!
//! ```sh
//! cargo run -p isolated-harness --example tour
//! ```

use std::time::Duration;

use isolated_executor::{Context, ExecutionReport, Handler, IsolationError, Options, defaults};
use isolated_harness::fault::OutcomeKind;
use isolated_harness::fixtures::{
    AllocPattern, ContextHandler, CrashHandler, CrashMode, ErrorHandler, MemoryHogHandler,
    SlowHandler, SuccessHandler,
};

/// Heap budget of the memory rows: 4 MiB.
const BUDGET: u64 = 4 << 20;

/// Maximum width of the reason column.
const REASON_WIDTH: usize = 100;

/// One line of the table.
struct Row {
    fixture: String,
    outcome: String,
    reason: String,
    duration: Duration,
    peak_rss_bytes: u64,
}

fn run<H>(fixture: &str, handler: &H, args: H::Args, context: &Context, options: &Options) -> Row
where
    H: Handler,
    H::Error: std::fmt::Display,
{
    let report: ExecutionReport<H::Output, H::Error> =
        isolated_executor::execute_isolated_report(handler, args, context, options);
    let reason = match &report.outcome {
        Ok(_) => String::new(),
        Err(IsolationError::Handler(error)) => format!("handler returned an error: {error}"),
        Err(error) => first_line(&error.to_string()),
    };
    Row {
        fixture: fixture.to_owned(),
        outcome: OutcomeKind::of(&report.outcome).to_string(),
        reason,
        duration: report.duration,
        peak_rss_bytes: report.peak_rss_bytes,
    }
}

/// Returns the first line of `text`, cut to [`REASON_WIDTH`] characters.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= REASON_WIDTH {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(REASON_WIDTH - 3).collect();
        format!("{cut}...")
    }
}

fn main() {
    isolated_executor::init();

    let context = Context::new().with("session_id", "tour-42");
    let options = defaults().timeout(Duration::from_secs(5));
    let short_timeout = options.clone().timeout(Duration::from_millis(300));
    let budget = options.clone().max_heap_size(BUDGET);

    let mut rows = vec![
        run(
            "SuccessHandler(\"hello\")",
            &SuccessHandler::default(),
            Some("hello".into()),
            &context,
            &options,
        ),
        run(
            "SuccessHandler(None)",
            &SuccessHandler::default(),
            None,
            &context,
            &options,
        ),
        run(
            "SlowHandler 50 ms",
            &SlowHandler::new(Duration::from_millis(50)),
            (),
            &context,
            &options,
        ),
        run(
            "SlowHandler 60 s, timeout 300 ms",
            &SlowHandler::new(Duration::from_secs(60)),
            (),
            &context,
            &short_timeout,
        ),
    ];
    for mode in CrashMode::all() {
        rows.push(run(
            &format!("CrashHandler {}", mode.label()),
            &CrashHandler::new(mode),
            (),
            &context,
            &options,
        ));
    }
    for pattern in AllocPattern::ALL {
        rows.push(run(
            &format!("MemoryHog {} 64 MiB", pattern.label()),
            &MemoryHogHandler::new(pattern, 64 << 20),
            (),
            &context,
            &budget,
        ));
    }
    rows.push(run(
        "MemoryHog one_block 1 MiB",
        &MemoryHogHandler::new(AllocPattern::OneBlock, 1 << 20),
        (),
        &context,
        &budget,
    ));
    rows.push(run(
        "ErrorHandler",
        &ErrorHandler::new(7, "bad input"),
        (),
        &context,
        &options,
    ));
    rows.push(run(
        "ContextHandler session_id",
        &ContextHandler::new("session_id"),
        (),
        &context,
        &options,
    ));
    rows.push(run(
        "ContextHandler missing",
        &ContextHandler::new("missing"),
        (),
        &context,
        &options,
    ));

    println!(
        "timeout {:?} (300 ms for the slow row), heap budget {} bytes ({BUDGET} for the memory rows)\n",
        options.timeout,
        options.max_heap_size.unwrap_or(0),
    );
    print_table(&rows);
}

fn print_table(rows: &[Row]) {
    let fixture_width = rows.iter().map(|r| r.fixture.len()).max().unwrap_or(0);
    let outcome_width = rows.iter().map(|r| r.outcome.len()).max().unwrap_or(0);
    println!(
        "{:fixture_width$}  {:outcome_width$}  {:>10}  {:>9}  reason",
        "fixture", "outcome", "duration", "peak RSS"
    );
    println!(
        "{}",
        "-".repeat(fixture_width + outcome_width + 28 + REASON_WIDTH)
    );
    for row in rows {
        println!(
            "{:fixture_width$}  {:outcome_width$}  {:>8.1}ms  {:>6.1}MiB  {}",
            row.fixture,
            row.outcome,
            row.duration.as_secs_f64() * 1000.0,
            row.peak_rss_bytes as f64 / f64::from(1 << 20),
            row.reason,
        );
    }
}
