//! A `tracing` layer that turns the executor's telemetry events back into
//! typed [`IsolationEvent`]s for assertions and snapshots.
//!
//! The executor emits one event per execution, with target
//! [`isolated_executor::telemetry::TARGET`], from the thread (or task) that
//! called it. [`Recorder`] is a [`Layer`] that keeps those events and
//! ignores every other one.
//!
//! # Recording one closure
//!
//! [`record`] installs a subscriber with a fresh recorder as the calling
//! thread's default while a closure runs, and returns the closure's value
//! with the events:
//!
//! ```no_run
//! use isolated_executor::{Context, defaults, execute_isolated};
//! use isolated_harness::fixtures::SuccessHandler;
//! use isolated_harness::recorder::record;
//!
//! let (outcome, events) = record(|| {
//!     execute_isolated(&SuccessHandler::default(), None, &Context::new(), &defaults())
//! });
//! assert!(outcome.is_ok());
//! assert_eq!(events.len(), 1);
//! assert_eq!(events[0].result, "ok");
//! ```
//!
//! Only events emitted on the calling thread are seen. For async code, run a
//! current-thread tokio runtime inside the closure, or install the layer
//! globally (below).
//!
//! # Composing the layer
//!
//! [`Recorder`] is `Clone`, and every clone shares the same store, so one
//! clone goes into a subscriber and the test keeps another to read from:
//!
//! ```
//! use isolated_harness::recorder::Recorder;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let recorder = Recorder::new();
//! let subscriber = tracing_subscriber::registry().with(recorder.clone());
//! tracing::subscriber::with_default(subscriber, || {
//!     // executions here are recorded
//! });
//! assert!(recorder.events().is_empty());
//! ```
//!
//! The same subscriber can be installed with
//! `tracing::subscriber::set_global_default` to see events from every
//! thread of the test binary. Tests that share a global recorder then see
//! each other's events, so filter them by [`IsolationEvent::handler`].
//!
//! # With tracing-test
//!
//! `#[tracing_test::traced_test]` installs a global subscriber that, unless
//! its `no-env-filter` feature is on, keeps only events whose target starts
//! with the test crate's name, so the executor's events never reach
//! `logs_contain`. Inside a traced test, wrap the executions in [`record`]:
//! the recorder sees the executor's events, and every event the previous
//! subscriber accepts is forwarded to it, so the test crate's own log lines
//! still reach `logs_contain` while the closure runs.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use isolated_executor::telemetry::TARGET;
use serde::{Serialize, Serializer};
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};

/// One telemetry event of an isolated execution, with the executor's fields
/// as typed values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IsolationEvent {
    /// The handler's `Handler::name`.
    pub handler: String,
    /// `ok`, `error`, `timeout`, `killed`, `crashed` or `unavailable`.
    pub result: String,
    /// The `Display` text of the error; empty for `ok`.
    pub reason: String,
    /// Wall-clock time of the whole call in microseconds.
    pub duration_us: u64,
    /// Time spent waiting for a free shepherd in microseconds.
    pub queue_wait_us: u64,
    /// The child's pid; 0 when no child started.
    pub pid: u64,
    /// Peak resident set size of the child in bytes; 0 when no child ran.
    pub peak_rss_bytes: u64,
    /// The event's level: `INFO` for `ok` and `error`, `WARN` for
    /// `timeout`, `killed` and `crashed`, `ERROR` for `unavailable`.
    #[serde(serialize_with = "serialize_level")]
    pub level: Level,
}

fn serialize_level<S: Serializer>(level: &Level, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(level.as_str())
}

impl IsolationEvent {
    fn empty(level: Level) -> Self {
        IsolationEvent {
            handler: String::new(),
            result: String::new(),
            reason: String::new(),
            duration_us: 0,
            queue_wait_us: 0,
            pid: 0,
            peak_rss_bytes: 0,
            level,
        }
    }
}

/// Copies the known fields of an event into an [`IsolationEvent`].
struct FieldVisitor<'a>(&'a mut IsolationEvent);

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "handler" => self.0.handler = value.to_owned(),
            "result" => self.0.result = value.to_owned(),
            "reason" => self.0.reason = value.to_owned(),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "duration_us" => self.0.duration_us = value,
            "queue_wait_us" => self.0.queue_wait_us = value,
            "pid" => self.0.pid = value,
            "peak_rss_bytes" => self.0.peak_rss_bytes = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Strings recorded through `?` or `%` arrive here; keep them too.
        if matches!(field.name(), "handler" | "result" | "reason") {
            let text = format!("{value:?}");
            let text = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(&text);
            self.record_str(field, text);
        }
    }
}

/// A [`Layer`] that keeps every event with target
/// [`isolated_executor::telemetry::TARGET`] as an [`IsolationEvent`].
///
/// Clones share one store.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<IsolationEvent>>>,
}

impl Recorder {
    /// Creates a recorder with an empty store.
    pub fn new() -> Self {
        Recorder::default()
    }

    fn store(&self) -> MutexGuard<'_, Vec<IsolationEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a copy of the events recorded so far, oldest first.
    pub fn events(&self) -> Vec<IsolationEvent> {
        self.store().clone()
    }

    /// Removes and returns the events recorded so far, oldest first.
    pub fn take(&self) -> Vec<IsolationEvent> {
        std::mem::take(&mut *self.store())
    }

    /// Returns the events of the handler named `handler`, oldest first.
    pub fn events_of(&self, handler: &str) -> Vec<IsolationEvent> {
        self.store()
            .iter()
            .filter(|event| event.handler == handler)
            .cloned()
            .collect()
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _context: LayerContext<'_, S>) {
        let metadata = event.metadata();
        if metadata.target() != TARGET {
            return;
        }
        let mut recorded = IsolationEvent::empty(*metadata.level());
        event.record(&mut FieldVisitor(&mut recorded));
        self.store().push(recorded);
    }
}

/// Passes each event on to the dispatcher that was the default before
/// [`record`] replaced it, when that dispatcher accepts the event.
struct Forward(Dispatch);

impl<S: Subscriber> Layer<S> for Forward {
    fn on_event(&self, event: &Event<'_>, _context: LayerContext<'_, S>) {
        if self.0.enabled(event.metadata()) {
            self.0.event(event);
        }
    }
}

/// Runs `f` with a fresh [`Recorder`] installed for the calling thread and
/// returns `f`'s value with the events recorded while it ran.
///
/// Events are also forwarded to the subscriber that was the thread's default
/// before, when it accepts them; spans are not forwarded.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<IsolationEvent>) {
    let previous = tracing::dispatcher::get_default(Dispatch::clone);
    let recorder = Recorder::new();
    let subscriber = tracing_subscriber::registry()
        .with(recorder.clone())
        .with(Forward(previous));
    let value = tracing::subscriber::with_default(subscriber, f);
    (value, recorder.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_only_isolation_events() {
        let (_, events) = record(|| {
            tracing::info!(target: "somewhere_else", handler = "x", "ignored");
            tracing::warn!(
                target: "isolated_executor::isolation",
                handler = "demo::Handler",
                result = "crashed",
                reason = "crashed: signal: 11 (SIGSEGV)",
                duration_us = 1200u64,
                queue_wait_us = 3u64,
                pid = 4242u64,
                peak_rss_bytes = 1_048_576u64,
                "isolated execution finished"
            );
        });
        assert_eq!(
            events,
            vec![IsolationEvent {
                handler: "demo::Handler".into(),
                result: "crashed".into(),
                reason: "crashed: signal: 11 (SIGSEGV)".into(),
                duration_us: 1200,
                queue_wait_us: 3,
                pid: 4242,
                peak_rss_bytes: 1_048_576,
                level: Level::WARN,
            }]
        );
    }

    #[test]
    fn level_serializes_as_its_name() {
        let event = IsolationEvent::empty(Level::ERROR);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["level"], "ERROR");
    }

    #[test]
    fn clones_share_one_store() {
        let recorder = Recorder::new();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "isolated_executor::isolation", handler = "a", result = "ok");
            tracing::info!(target: "isolated_executor::isolation", handler = "b", result = "ok");
        });
        assert_eq!(recorder.events_of("a").len(), 1);
        assert_eq!(recorder.take().len(), 2);
        assert!(recorder.events().is_empty());
    }
}
