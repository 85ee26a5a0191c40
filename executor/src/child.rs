//! The child side of an execution that is ordinary safe Rust: decoding the
//! request, running the handler under `catch_unwind`, encoding the result.
//!
//! The trampoline below is monomorphised for each handler type. A request
//! names it by its offset from an anchor function (see `sys::identity`), so
//! the shepherd, which runs the same executable, can call it without any
//! registry.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use crate::handler::{Context, Handler};
use crate::protocol::{encode_panic, encode_record, record};

/// Inputs the trampoline gets from the child setup code.
pub(crate) struct ChildCall<'a> {
    /// `type_name` of the handler the caller meant.
    pub handler_type: &'a str,
    /// postcard-encoded `(H, H::Args, Context)`.
    pub payload: &'a [u8],
    /// Applies the heap budget right before `execute` runs.
    pub apply_heap_budget: fn(),
    /// Lifts the heap budget after `execute` returns.
    pub lift_heap_budget: fn(),
    /// Writes a whole record to the result pipe.
    pub write_record: fn(&[u8]),
}

/// The signature shared by every monomorphised trampoline. It returns the
/// record to write, or an empty vector when it wrote the record itself.
pub(crate) type Trampoline = fn(&ChildCall<'_>) -> Vec<u8>;

/// Returns the trampoline of `H`.
pub(crate) fn trampoline_of<H: Handler>() -> Trampoline {
    run_handler::<H>
}

/// The location of the last panic in this process, set by the panic hook.
static PANIC_LOCATION: Mutex<Option<String>> = Mutex::new(None);

/// Installs a hook that records the panic location and then runs the
/// previous hook. The heap budget is lifted while the previous hook runs,
/// because printing a backtrace (`RUST_BACKTRACE`) allocates megabytes and
/// would otherwise turn a panic into an allocation failure.
///
/// The shepherd installs it once at start-up and every child inherits it,
/// which spares each child the hook's allocation and the page faults of
/// writing it.
#[cfg_attr(
    any(not(target_os = "linux"), isolated_executor_unsupported),
    allow(dead_code)
)]
pub(crate) fn install_panic_hook(lift_budget: fn(), restore_budget: fn()) {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if let Some(location) = info.location() {
            let text = format!(
                "{}:{}:{}",
                location.file(),
                location.line(),
                location.column()
            );
            if let Ok(mut slot) = PANIC_LOCATION.lock() {
                *slot = Some(text);
            }
        }
        lift_budget();
        default_hook(info);
        restore_budget();
    }));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Size of the stack buffer `emit_record` tries first.
const SMALL_RECORD: usize = 512;

/// Writes a record of type `tag` containing `value` through
/// `call.write_record` when it fits in a stack buffer, and returns an empty
/// vector. Otherwise returns the record to write. Writing a small result
/// from the stack allocates nothing, which spares a forked child the
/// copy-on-write faults on malloc's pages.
fn emit_record<T: serde::Serialize>(
    call: &ChildCall<'_>,
    tag: u8,
    value: &T,
) -> postcard::Result<Vec<u8>> {
    let mut small = [0u8; SMALL_RECORD];
    let len = match postcard::to_slice(value, &mut small[record::HEADER_LEN..]) {
        Ok(encoded) => encoded.len(),
        Err(postcard::Error::SerializeBufferFull) => return serialize_record(tag, value),
        Err(e) => return Err(e),
    };
    small[0] = tag;
    small[1..record::HEADER_LEN].copy_from_slice(&(len as u64).to_le_bytes());
    (call.write_record)(&small[..record::HEADER_LEN + len]);
    Ok(Vec::new())
}

/// Serializes `value` with postcard into a record of type `tag`, writing the
/// bytes right after the record header, so a large output is not copied
/// into a record after it is serialized.
fn serialize_record<T: serde::Serialize>(tag: u8, value: &T) -> postcard::Result<Vec<u8>> {
    let mut start = Vec::with_capacity(256);
    start.push(tag);
    start.extend_from_slice(&[0; 8]);
    let mut record = postcard::serialize_with_flavor(value, Appending(start))?;
    let len = (record.len() - record::HEADER_LEN) as u64;
    record[1..record::HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(record)
}

/// A postcard output that appends to a vector which already has content.
struct Appending(Vec<u8>);

impl postcard::ser_flavors::Flavor for Appending {
    type Output = Vec<u8>;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

fn failure(message: String) -> Vec<u8> {
    encode_record(record::FAILURE, message.as_bytes())
}

/// Runs `H` in the child and returns the result record to write.
fn run_handler<H: Handler>(call: &ChildCall<'_>) -> Vec<u8> {
    let expected = std::any::type_name::<H>();
    if call.handler_type != expected {
        return failure(format!(
            "handler type mismatch: the request names {} but the trampoline is for {expected}",
            call.handler_type
        ));
    }

    let (handler, args, context): (H, H::Args, Context) = match postcard::from_bytes(call.payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            return failure(format!(
                "failed to decode the handler and arguments of {expected} in the child: {e}; check that their Serialize and Deserialize impls round-trip"
            ));
        }
    };

    (call.apply_heap_budget)();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| handler.execute(args, &context)));
    (call.lift_heap_budget)();

    match outcome {
        Ok(Ok(output)) => match emit_record(call, record::OK, &output) {
            Ok(record) => record,
            Err(e) => failure(format!(
                "failed to encode the output of {expected}: {e}; check its Serialize impl"
            )),
        },
        Ok(Err(error)) => match emit_record(call, record::ERR, &error) {
            Ok(record) => record,
            Err(e) => failure(format!(
                "failed to encode the error of {expected}: {e}; check its Serialize impl"
            )),
        },
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            // Dropping a payload can panic again; the child exits right after.
            std::mem::forget(payload);
            let location = PANIC_LOCATION.lock().ok().and_then(|mut slot| slot.take());
            encode_record(record::PANIC, &encode_panic(&message, location.as_deref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_record_equals_encoded_record() {
        let value = (7u32, String::from("seven"), vec![1u8, 2, 3]);
        let bytes = postcard::to_stdvec(&value).unwrap();
        assert_eq!(
            serialize_record(record::OK, &value).unwrap(),
            encode_record(record::OK, &bytes)
        );
        assert_eq!(
            serialize_record(record::ERR, &()).unwrap(),
            encode_record(record::ERR, &[])
        );
    }

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn capture(bytes: &[u8]) {
        WRITTEN.lock().unwrap().extend_from_slice(bytes);
    }

    fn nothing() {}

    #[test]
    fn small_record_written_from_stack_and_large_returned() {
        let call = ChildCall {
            handler_type: "",
            payload: &[],
            apply_heap_budget: nothing,
            lift_heap_budget: nothing,
            write_record: capture,
        };
        let small = String::from("small");
        let returned = emit_record(&call, record::OK, &small).unwrap();
        assert!(returned.is_empty());
        let written = std::mem::take(&mut *WRITTEN.lock().unwrap());
        let bytes = postcard::to_stdvec(&small).unwrap();
        assert_eq!(written, encode_record(record::OK, &bytes));

        let large = vec![7u8; SMALL_RECORD * 2];
        let returned = emit_record(&call, record::ERR, &large).unwrap();
        let bytes = postcard::to_stdvec(&large).unwrap();
        assert_eq!(returned, encode_record(record::ERR, &bytes));
        assert!(WRITTEN.lock().unwrap().is_empty());
    }

    #[test]
    fn panic_message_handles_payload_kinds() {
        let text: Box<dyn std::any::Any + Send> = Box::new("static");
        assert_eq!(panic_message(text.as_ref()), "static");
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(owned.as_ref()), "owned");
        let other: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(other.as_ref()), "Box<dyn Any>");
    }
}
