//! insta helpers that make outcomes, reports and telemetry events stable
//! across runs and machines.
//!
//! Two tools:
//!
//! - [`normalize_text`] rewrites the parts of a text that change from run to
//!   run: thread ids, addresses, durations, pids, memory figures, absolute
//!   paths, `file:line:column` positions and backtraces.
//! - [`settings`] returns [`insta::Settings`] whose redactions replace the
//!   volatile fields of serialized values (`pid`, `duration_us`,
//!   `peak_rss_bytes`, ...) with placeholders and pass every text field
//!   that can carry such data through [`normalize_text`]. Redactions apply to
//!   serialized snapshots (`assert_json_snapshot!`, `assert_yaml_snapshot!`),
//!   not to `assert_snapshot!` of a string, so normalise strings yourself.
//!
//! ```no_run
//! use isolated_executor::{Context, defaults, execute_isolated};
//! use isolated_harness::fixtures::{CrashHandler, CrashMode};
//! use isolated_harness::recorder::record;
//! use isolated_harness::snapshot::{normalize_text, settings};
//!
//! let handler = CrashHandler::new(CrashMode::Segfault);
//! let (outcome, events) = record(|| execute_isolated(&handler, (), &Context::new(), &defaults()));
//! let error = outcome.unwrap_err();
//! settings().bind(|| {
//!     insta::assert_snapshot!("segfault_display", normalize_text(&error.to_string()));
//!     insta::assert_json_snapshot!("segfault_json", serde_json::to_value(&error).unwrap());
//!     insta::assert_json_snapshot!("segfault_event", events[0]);
//! });
//! ```
//!
//! Backtraces are dropped whole, so a snapshot taken with `RUST_BACKTRACE`
//! set matches one taken without it.

use insta::internals::{Content, ContentPath};

/// Placeholder for a thread id in a panic message.
pub const TID: &str = "[tid]";
/// Placeholder for a pid.
pub const PID: &str = "[pid]";
/// Placeholder for a memory address.
pub const ADDRESS: &str = "[addr]";
/// Placeholder for a measured duration.
pub const DURATION: &str = "[duration]";
/// Placeholder for a byte count that varies between runs.
pub const BYTES: &str = "[bytes]";
/// Placeholder for a line or column number.
pub const LINE: &str = "[line]";
/// Placeholder for the directories of an absolute path.
pub const PATH: &str = "[path]";

/// Fields replaced with a placeholder wherever they appear.
const VOLATILE_FIELDS: [(&str, &str); 8] = [
    ("duration_us", DURATION),
    ("queue_wait_us", DURATION),
    ("duration", DURATION),
    ("queue_wait", DURATION),
    ("child_duration", DURATION),
    ("requested", BYTES),
    ("stderr_bytes", BYTES),
    ("descendants_killed", "[count]"),
];

/// Fields replaced with a placeholder unless they are 0, which means that no
/// child ran and is the same in every run.
const VOLATILE_UNLESS_ZERO: [(&str, &str); 2] = [("pid", PID), ("peak_rss_bytes", BYTES)];

/// Text fields passed through [`normalize_text`] wherever they appear.
const TEXT_FIELDS: [&str; 6] = [
    "reason",
    "message",
    "location",
    "detail",
    "stderr_tail",
    "stdout_tail",
];

/// Returns insta settings with the redactions described in the module docs,
/// based on the settings currently in effect (so the snapshot path and other
/// choices of the caller are kept).
///
/// A `null` field stays `null`, so a snapshot still shows whether an
/// optional value such as `requested` was present. A `pid` or
/// `peak_rss_bytes` of 0 stays 0, so a snapshot still shows that no child
/// ran.
pub fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    for (field, placeholder) in VOLATILE_FIELDS {
        settings.add_dynamic_redaction(&format!(".**.{field}"), move |value, _path| {
            redact_unless_null(value, placeholder)
        });
    }
    for (field, placeholder) in VOLATILE_UNLESS_ZERO {
        settings.add_dynamic_redaction(&format!(".**.{field}"), move |value, _path| {
            if matches!(value.as_u64(), Some(0)) {
                value
            } else {
                redact_unless_null(value, placeholder)
            }
        });
    }
    for field in TEXT_FIELDS {
        settings.add_dynamic_redaction(&format!(".**.{field}"), normalize_content);
    }
    settings
}

fn redact_unless_null(value: Content, placeholder: &str) -> Content {
    match value {
        Content::None | Content::Unit => value,
        Content::Some(inner) if matches!(*inner, Content::None | Content::Unit) => {
            Content::Some(inner)
        }
        _ => Content::from(placeholder),
    }
}

fn normalize_content(value: Content, _path: ContentPath<'_>) -> Content {
    normalize_strings(value)
}

/// Passes a string, or a string inside `Some`, through [`normalize_text`].
fn normalize_strings(value: Content) -> Content {
    match value.as_str() {
        Some(text) => Content::from(normalize_text(text)),
        None => match value {
            Content::Some(inner) => Content::Some(Box::new(normalize_strings(*inner))),
            other => other,
        },
    }
}

/// Rewrites the parts of `text` that change between runs and machines.
///
/// - A backtrace (from a `stack backtrace:` line through its frames and the
///   trailing `note:` or "skipping backtrace printing" line) and the note
///   suggesting `RUST_BACKTRACE=1` are removed.
/// - `thread 'name' (4719)` becomes `thread 'name' ([tid])`.
/// - `0x7ffd5c3e` becomes `[addr]`.
/// - `pid 4719`, `pid=4719` and `pid: 4719` become `pid [pid]`.
/// - `peak RSS 1234 bytes` and `allocation of 1234 bytes` get `[bytes]`.
/// - A duration printed by `Debug`, such as `1.5ms` or `300µs`, becomes
///   `[duration]`; a configured value with a space (`100 ms`) is kept.
/// - `/home/me/src/lib.rs` becomes `[path]/lib.rs`.
/// - `src/lib.rs:12:5` becomes `src/lib.rs:[line]:[line]`.
///
/// ```
/// use isolated_harness::snapshot::normalize_text;
///
/// let raw = "thread '<unnamed>' (4719) panicked at src/lib.rs:12:5:\nboom\n\
///            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
/// assert_eq!(
///     normalize_text(raw),
///     "thread '<unnamed>' ([tid]) panicked at src/lib.rs:[line]:[line]:\nboom\n"
/// );
/// ```
pub fn normalize_text(text: &str) -> String {
    let without_backtraces = remove_backtraces(text);
    let mut out = String::with_capacity(without_backtraces.len());
    for (i, line) in without_backtraces.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&normalize_line(line));
    }
    out
}

/// Returns whether `line` is a frame of a printed backtrace: `  12: symbol` or
/// `at file:line`.
fn is_frame_line(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.starts_with("at ") && line.len() > trimmed.len() {
        return true;
    }
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && trimmed[digits..].starts_with(':') && line.len() > trimmed.len()
}

fn remove_backtraces(text: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut in_backtrace = false;
    for line in text.split('\n') {
        let trimmed = line.trim();
        if trimmed == "stack backtrace:" {
            in_backtrace = true;
            continue;
        }
        if in_backtrace {
            if is_frame_line(line) {
                continue;
            }
            in_backtrace = false;
            if trimmed.starts_with("note: Some details are omitted")
                || trimmed.starts_with("skipping backtrace printing")
            {
                continue;
            }
            // std's allocation-failure hook can fail again while it prints the
            // backtrace; that second failure belongs to the backtrace.
            if trimmed.starts_with("memory allocation of ") && trimmed.ends_with(" bytes failed") {
                in_backtrace = true;
                continue;
            }
        }
        if trimmed.starts_with("note: run with `RUST_BACKTRACE=") {
            continue;
        }
        kept.push(line);
    }
    kept.join("\n")
}

fn normalize_line(line: &str) -> String {
    let line = replace_thread_ids(line);
    let line = replace_after_marker(&line, &["peak RSS ", "allocation of "], BYTES);
    let line = replace_after_marker(&line, &["pid ", "pid=", "pid: "], PID);
    let line = replace_tokens(&line);
    replace_positions(&line)
}

/// Replaces the id in `thread 'name' (4719)` with `[tid]`.
fn replace_thread_ids(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("thread '") {
        let after_name = &rest[start + "thread '".len()..];
        let Some(quote) = after_name.find('\'') else {
            break;
        };
        let tail = &after_name[quote + 1..];
        let consumed = start + "thread '".len() + quote + 1;
        out.push_str(&rest[..consumed]);
        rest = &rest[consumed..];
        if let Some(id_part) = tail.strip_prefix(" (") {
            let digits = id_part.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && id_part[digits..].starts_with(')') {
                out.push_str(" (");
                out.push_str(TID);
                out.push(')');
                rest = &id_part[digits + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Replaces the number right after any of `markers` with `placeholder`.
fn replace_after_marker(line: &str, markers: &[&str], placeholder: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let next = markers
            .iter()
            .filter_map(|marker| rest.find(marker).map(|at| (at, marker.len())))
            .min();
        let Some((at, len)) = next else {
            break;
        };
        let after = &rest[at + len..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..at + len]);
        if digits > 0 {
            out.push_str(placeholder);
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

const DURATION_UNITS: [&str; 5] = ["ns", "µs", "us", "ms", "s"];

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | '~')
}

/// Replaces addresses, `Debug` durations and absolute paths, token by token.
fn replace_tokens(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let at_token_start = previous.is_none_or(|p| !(p.is_alphanumeric() || p == '_'));
        if at_token_start {
            if let Some(len) = address_len(rest) {
                out.push_str(ADDRESS);
                previous = rest[..len].chars().last();
                rest = &rest[len..];
                continue;
            }
            if let Some(len) = duration_len(rest) {
                out.push_str(DURATION);
                previous = rest[..len].chars().last();
                rest = &rest[len..];
                continue;
            }
            if c == '/' && previous.is_none_or(|p| !is_path_char(p)) {
                let len = rest
                    .char_indices()
                    .find(|&(_, ch)| !is_path_char(ch))
                    .map_or(rest.len(), |(i, _)| i);
                let path = &rest[..len];
                if let Some(slash) = path.rfind('/').filter(|&s| s > 0) {
                    out.push_str(PATH);
                    out.push_str(&path[slash..]);
                    previous = path.chars().last();
                    rest = &rest[len..];
                    continue;
                }
            }
        }
        out.push(c);
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Length of a `0x` hexadecimal address at the start of `text`.
fn address_len(text: &str) -> Option<usize> {
    let hex = text.strip_prefix("0x")?;
    let digits = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
    (digits > 0 && !next_is_word_char(&hex[digits..])).then_some(2 + digits)
}

/// Length of a `Debug` duration (`12ms`, `1.5s`, `300µs`) at the start of
/// `text`.
fn duration_len(text: &str) -> Option<usize> {
    let int = text.bytes().take_while(u8::is_ascii_digit).count();
    if int == 0 {
        return None;
    }
    let mut len = int;
    if let Some(fraction) = text[len..].strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        len += 1 + digits;
    }
    let unit = DURATION_UNITS
        .iter()
        .filter(|unit| text[len..].starts_with(**unit))
        .max_by_key(|unit| unit.len())?;
    len += unit.len();
    (!next_is_word_char(&text[len..])).then_some(len)
}

fn next_is_word_char(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Replaces `file.rs:12:5` with `file.rs:[line]:[line]`, and `file.rs:12` with
/// `file.rs:[line]`.
fn replace_positions(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(".rs:") {
        let head = at + ".rs:".len();
        out.push_str(&rest[..head]);
        rest = &rest[head..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            continue;
        }
        out.push_str(LINE);
        rest = &rest[digits..];
        if let Some(column) = rest.strip_prefix(':') {
            let digits = column.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                out.push(':');
                out.push_str(LINE);
                rest = &column[digits..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PANIC_WITH_BACKTRACE: &str = "\nthread '<unnamed>' (24751) panicked at executor/tests/smoke.rs:34:27:\nboom\nstack backtrace:\n   0: __rustc::rust_begin_unwind\n             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/panicking.rs:689:5\n   1: core::panicking::panic_fmt\n             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/panicking.rs:80:14\n  18: _start\nnote: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n";
    const PANIC_WITHOUT_BACKTRACE: &str = "\nthread '<unnamed>' (31) panicked at executor/tests/smoke.rs:34:27:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";

    #[test]
    fn backtrace_and_its_absence_normalize_alike() {
        let expected = "\nthread '<unnamed>' ([tid]) panicked at executor/tests/smoke.rs:[line]:[line]:\nboom\n";
        assert_eq!(normalize_text(PANIC_WITH_BACKTRACE), expected);
        assert_eq!(normalize_text(PANIC_WITHOUT_BACKTRACE), expected);
    }

    #[test]
    fn full_backtrace_frames_are_removed() {
        let text = "boom\nstack backtrace:\n   0:     0x55d4c3e1a2b3 - std::backtrace::capture\n                               at /rustc/abc/library/std/src/backtrace.rs:331:13\nafter\n";
        assert_eq!(normalize_text(text), "boom\nafter\n");
    }

    #[test]
    fn allocation_failure_backtrace_is_removed() {
        let with = "memory allocation of 104857600 bytes failed\nstack backtrace:\nmemory allocation of 7168 bytes failed\nskipping backtrace printing to avoid potential recursion\n";
        let without = "memory allocation of 104857600 bytes failed\n";
        assert_eq!(normalize_text(with), normalize_text(without));
        assert_eq!(
            normalize_text(without),
            "memory allocation of [bytes] bytes failed\n"
        );
    }

    #[test]
    fn volatile_numbers_become_placeholders() {
        assert_eq!(
            normalize_text(
                "killed: heap budget of 8000000 bytes exceeded by an allocation of 104857600 bytes (peak RSS 16551936 bytes)"
            ),
            "killed: heap budget of 8000000 bytes exceeded by an allocation of [bytes] bytes (peak RSS [bytes] bytes)"
        );
        assert_eq!(
            normalize_text("shepherd pid 1234 ended; pid=99, pid: 7"),
            "shepherd pid [pid] ended; pid=[pid], pid: [pid]"
        );
        assert_eq!(
            normalize_text("took 1.870ms and 353µs, timed out after 100 ms at 0x7ffd12ab"),
            "took [duration] and [duration], timed out after 100 ms at [addr]"
        );
    }

    #[test]
    fn absolute_paths_keep_only_the_file_name() {
        assert_eq!(
            normalize_text(
                "at /home/me/.cargo/registry/src/x-1.0/src/lib.rs:10:2 and harness/src/a.rs"
            ),
            "at [path]/lib.rs:[line]:[line] and harness/src/a.rs"
        );
        assert_eq!(normalize_text("a / b and 1/2"), "a / b and 1/2");
    }

    #[test]
    fn plain_text_is_unchanged() {
        let text = "crashed: signal: 11 (SIGSEGV)\nhandler called exit with code 3";
        assert_eq!(normalize_text(text), text);
    }

    #[test]
    fn normalization_is_idempotent() {
        for text in [PANIC_WITH_BACKTRACE, PANIC_WITHOUT_BACKTRACE] {
            let once = normalize_text(text);
            assert_eq!(normalize_text(&once), once);
        }
    }

    #[test]
    fn settings_redact_volatile_fields() {
        let value = serde_json::json!({
            "handler": "demo::H",
            "pid": 4242,
            "duration_us": 17,
            "peak_rss_bytes": 1234,
            "requested": null,
            "reason": "crashed: panicked at src/a.rs:1:2: thread 'x' (12) died",
            "without_child": { "pid": 0, "peak_rss_bytes": 0, "duration_us": 0 }
        });
        settings().bind(|| {
            insta::assert_json_snapshot!("settings_redact_volatile_fields", value);
        });
    }
}
