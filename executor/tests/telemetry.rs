//! The telemetry event and span of each execution, seen through a
//! thread-local subscriber with a recording layer, and through
//! `tracing-test`.

isolated_executor::enable_test_support!();

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use isolated_executor::{
    Context, ExecutionReport, Handler, Supervisor, SupervisorConfig, defaults, execute_isolated,
    execute_isolated_async, execute_isolated_report, execute_isolated_report_async, telemetry,
};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_test::traced_test;

use common::LeakCheck;

/// Runs one scripted step.
#[derive(Serialize, Deserialize)]
struct Scripted;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Step {
    Return(u32),
    Fail(String),
    Sleep(u64),
    Panic,
    Allocate(usize),
}

impl Handler for Scripted {
    type Args = Step;
    type Output = u32;
    type Error = String;

    fn execute(&self, step: Step, _: &Context) -> Result<u32, String> {
        match step {
            Step::Return(value) => Ok(value),
            Step::Fail(message) => Err(message),
            Step::Sleep(millis) => {
                std::thread::sleep(Duration::from_millis(millis));
                Ok(0)
            }
            Step::Panic => panic!("scripted panic"),
            Step::Allocate(bytes) => {
                let block = vec![1u8; bytes];
                Ok(std::hint::black_box(block).len() as u32)
            }
        }
    }
}

/// The fields of the telemetry event, besides `message`.
const EVENT_FIELDS: [&str; 7] = [
    "handler",
    "result",
    "reason",
    "duration_us",
    "queue_wait_us",
    "pid",
    "peak_rss_bytes",
];

/// Field values as text: strings as they are, numbers in decimal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fields(BTreeMap<String, String>);

impl Fields {
    fn get(&self, name: &str) -> &str {
        self.0
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("field {name} missing from {self:?}"))
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.to_string());
    }
}

#[derive(Debug, Clone)]
struct SeenSpan {
    name: &'static str,
    level: Level,
    fields: Fields,
    parent: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct SeenEvent {
    target: String,
    level: Level,
    fields: Fields,
    /// The spans the event is in, innermost first.
    scope: Vec<SeenSpan>,
    thread: ThreadId,
}

impl SeenEvent {
    fn scope_names(&self) -> Vec<&'static str> {
        self.scope.iter().map(|span| span.name).collect()
    }
}

/// A layer that stores every span and event it receives.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    events: Arc<Mutex<Vec<SeenEvent>>>,
}

impl Recorder {
    /// Returns the telemetry events recorded so far.
    fn isolation_events(&self) -> Vec<SeenEvent> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|event| event.target == "isolated_executor::isolation")
            .cloned()
            .collect()
    }

    fn spans_named(&self, name: &str) -> Vec<SeenSpan> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    }

    /// Runs `body` with this recorder as the thread's subscriber.
    fn run<T>(&self, body: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::with_default(subscriber, body)
    }
}

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let span = ctx.span(id).expect("a new span is in the registry");
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let seen = SeenSpan {
            name: attrs.metadata().name(),
            level: *attrs.metadata().level(),
            fields,
            parent: span.parent().map(|parent| parent.name()),
        };
        self.spans.lock().unwrap().push(seen.clone());
        span.extensions_mut().insert(seen);
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        span.extensions()
                            .get::<SeenSpan>()
                            .cloned()
                            .expect("every span was recorded")
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.events.lock().unwrap().push(SeenEvent {
            target: event.metadata().target().into(),
            level: *event.metadata().level(),
            fields,
            scope,
            thread: std::thread::current().id(),
        });
    }
}

fn level_for(category: &str) -> Level {
    match category {
        "ok" | "error" => Level::INFO,
        "timeout" | "killed" | "crashed" => Level::WARN,
        "unavailable" => Level::ERROR,
        other => panic!("unknown category {other}"),
    }
}

/// Checks the one event recorded for `report` against the report itself.
fn check_event(event: &SeenEvent, report: &ExecutionReport<u32, String>, case: &str) {
    let category = report.category();
    assert_eq!(event.level, level_for(category), "{case}: level");

    let mut names: Vec<&str> = event.fields.0.keys().map(String::as_str).collect();
    names.retain(|name| *name != "message");
    let mut expected = EVENT_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "{case}: field names");
    assert_eq!(
        event.fields.get("message"),
        "isolated execution finished",
        "{case}: message"
    );

    assert_eq!(
        event.fields.get("handler"),
        Scripted.name(),
        "{case}: handler"
    );
    assert_eq!(event.fields.get("result"), category, "{case}: result");
    let reason = match &report.outcome {
        Ok(_) => String::new(),
        Err(error) => error.to_string(),
    };
    assert_eq!(event.fields.get("reason"), reason, "{case}: reason");
    if report.outcome.is_err() {
        assert!(!reason.is_empty(), "{case}: an error has a reason");
    }
    assert_eq!(
        event.fields.get("duration_us"),
        report.duration.as_micros().to_string(),
        "{case}: duration_us"
    );
    assert_eq!(
        event.fields.get("queue_wait_us"),
        report.queue_wait.as_micros().to_string(),
        "{case}: queue_wait_us"
    );
    assert_eq!(
        event.fields.get("pid"),
        report.pid.unwrap_or(0).to_string(),
        "{case}: pid"
    );
    assert_eq!(
        event.fields.get("peak_rss_bytes"),
        report.peak_rss_bytes.to_string(),
        "{case}: peak_rss_bytes"
    );
}

#[test]
fn constants_name_target_and_span() {
    assert_eq!(telemetry::TARGET, "isolated_executor::isolation");
    assert_eq!(telemetry::SPAN_NAME, "isolated_execution");
    for (category, level) in [
        ("ok", Level::INFO),
        ("error", Level::INFO),
        ("timeout", Level::WARN),
        ("killed", Level::WARN),
        ("crashed", Level::WARN),
        ("unavailable", Level::ERROR),
    ] {
        assert_eq!(telemetry::level_of(category), level, "{category}");
    }
}

#[test]
fn every_result_emits_one_event_at_its_level() {
    let leak = LeakCheck::start();
    let stopped = Supervisor::start(SupervisorConfig {
        max_children: 1,
        ..Default::default()
    })
    .unwrap();
    stopped.shutdown();

    let quick = defaults().timeout(Duration::from_millis(300));
    let cases = [
        ("ok", Step::Return(7), quick.clone()),
        ("error", Step::Fail("scripted error".into()), quick.clone()),
        ("timeout", Step::Sleep(10_000), quick.clone()),
        ("killed", Step::Allocate(64 << 20), defaults()),
        ("crashed", Step::Panic, quick.clone()),
        (
            "unavailable",
            Step::Return(1),
            quick.supervisor(stopped.clone()),
        ),
    ];
    for (category, step, options) in cases {
        let recorder = Recorder::default();
        let caller = std::thread::current().id();
        let report = recorder.run(|| {
            let span = tracing::info_span!("caller");
            let _entered = span.enter();
            execute_isolated_report(&Scripted, step.clone(), &Context::new(), &options)
        });
        assert_eq!(
            report.category(),
            category,
            "{step:?} gave {:?}",
            report.outcome
        );

        let events = recorder.isolation_events();
        assert_eq!(events.len(), 1, "{category}: events {events:?}");
        let event = &events[0];
        check_event(event, &report, category);
        assert_eq!(
            event.thread, caller,
            "{category}: emitted on another thread"
        );
        assert_eq!(
            event.scope_names(),
            ["isolated_execution", "caller"],
            "{category}: spans around the event"
        );
        assert_eq!(
            event.scope[0].fields.get("handler"),
            Scripted.name(),
            "{category}: span field"
        );
        if category == "unavailable" {
            assert_eq!(event.fields.get("pid"), "0", "no child started");
        } else {
            assert_ne!(event.fields.get("pid"), "0", "{category}: a child started");
        }
    }
    leak.finish(&[&stopped]);
}

#[test]
fn one_event_per_call_in_call_order() {
    let leak = LeakCheck::start();
    let recorder = Recorder::default();
    let steps = [
        Step::Return(1),
        Step::Fail("first".into()),
        Step::Return(2),
        Step::Return(3),
        Step::Fail("second".into()),
    ];
    let expected: Vec<&str> = steps
        .iter()
        .map(|step| match step {
            Step::Fail(_) => "error",
            _ => "ok",
        })
        .collect();
    recorder.run(|| {
        for step in &steps {
            let _ = execute_isolated(&Scripted, step.clone(), &Context::new(), &defaults());
        }
    });
    let results: Vec<String> = recorder
        .isolation_events()
        .iter()
        .map(|event| event.fields.get("result").to_owned())
        .collect();
    assert_eq!(results, expected);
    leak.finish(&[]);
}

#[test]
fn span_is_debug_and_child_of_caller() {
    let leak = LeakCheck::start();
    let recorder = Recorder::default();
    recorder.run(|| {
        let span = tracing::info_span!("caller");
        let _entered = span.enter();
        execute_isolated(&Scripted, Step::Return(5), &Context::new(), &defaults()).unwrap();
    });
    let spans = recorder.spans_named("isolated_execution");
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].level, Level::DEBUG);
    assert_eq!(spans[0].parent, Some("caller"));
    assert_eq!(spans[0].fields.get("handler"), Scripted.name());
    assert_eq!(spans[0].fields.0.len(), 1, "only the handler field");
    leak.finish(&[]);
}

#[test]
fn async_call_emits_one_event_in_caller_span() {
    let leak = LeakCheck::start();
    let recorder = Recorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = recorder.run(|| {
        let span = tracing::info_span!("caller");
        let _entered = span.enter();
        runtime.block_on(execute_isolated_report_async(
            &Scripted,
            Step::Fail("async error".into()),
            &Context::new(),
            &defaults(),
        ))
    });
    drop(runtime);

    assert_eq!(report.category(), "error");
    let events = recorder.isolation_events();
    assert_eq!(events.len(), 1, "{events:?}");
    check_event(&events[0], &report, "async");
    assert_eq!(events[0].scope_names(), ["isolated_execution", "caller"]);
    leak.finish(&[]);
}

#[test]
fn dropped_future_emits_no_event() {
    let leak = LeakCheck::start();
    let supervisor = Supervisor::start(SupervisorConfig {
        max_children: 1,
        prestart: 1,
        ..Default::default()
    })
    .unwrap();
    let options = defaults().supervisor(supervisor.clone());
    let recorder = Recorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    recorder.run(|| {
        runtime.block_on(async {
            let call =
                execute_isolated_async(&Scripted, Step::Sleep(10_000), &Context::new(), &options);
            let outcome = tokio::time::timeout(Duration::from_millis(200), call).await;
            assert!(outcome.is_err(), "the call should still be running");
        });
    });
    assert!(
        recorder.isolation_events().is_empty(),
        "a dropped future emitted {:?}",
        recorder.isolation_events()
    );

    recorder.run(|| {
        let value = runtime
            .block_on(execute_isolated_async(
                &Scripted,
                Step::Return(9),
                &Context::new(),
                &options,
            ))
            .unwrap();
        assert_eq!(value, 9);
    });
    assert_eq!(recorder.isolation_events().len(), 1);

    drop(runtime);
    supervisor.shutdown();
    leak.finish(&[&supervisor]);
}

#[test]
#[traced_test]
fn event_text_lists_fields() {
    let leak = LeakCheck::start();
    let value = execute_isolated(&Scripted, Step::Return(11), &Context::new(), &defaults());
    assert_eq!(value, Ok(11));
    let error = execute_isolated(
        &Scripted,
        Step::Fail("text check".into()),
        &Context::new(),
        &defaults(),
    );
    assert!(error.is_err());

    assert!(logs_contain("isolated execution finished"));
    assert!(logs_contain("isolated_executor::isolation"));
    assert!(logs_contain(&format!(
        "isolated_execution{{handler=\"{}\"}}",
        Scripted.name()
    )));
    assert!(logs_contain(&format!("handler=\"{}\"", Scripted.name())));
    assert!(logs_contain("result=\"ok\" reason=\"\""));
    assert!(logs_contain(
        "result=\"error\" reason=\"handler returned an error\""
    ));
    assert!(logs_contain("duration_us="));
    assert!(logs_contain("queue_wait_us="));
    assert!(logs_contain("peak_rss_bytes="));
    logs_assert(|lines: &[&str]| {
        let finished: Vec<&&str> = lines
            .iter()
            .filter(|line| line.contains("isolated execution finished"))
            .collect();
        match finished.as_slice() {
            [ok, error] if ok.contains(" INFO ") && error.contains(" INFO ") => Ok(()),
            other => Err(format!("expected two INFO events, got {other:?}")),
        }
    });
    leak.finish(&[]);
}
