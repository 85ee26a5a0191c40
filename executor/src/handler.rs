//! The `Handler` trait and the `Context` passed to every execution.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize as SerializeDerive};

/// Code that runs in an isolated child process.
///
/// The handler value itself is serialized and sent to the child together with
/// the arguments, so a handler may carry configuration. A unit struct with
/// `#[derive(Serialize, Deserialize)]` is the common case.
///
/// The child runs the same executable as the caller, and the request names the
/// handler by the address of a function monomorphised for `Self`, so no
/// registration is needed beyond implementing this trait.
///
/// # Examples
///
/// ```
/// use isolated_executor::{Context, Handler};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Double;
///
/// impl Handler for Double {
///     type Args = u64;
///     type Output = u64;
///     type Error = String;
///
///     fn execute(&self, args: u64, _context: &Context) -> Result<u64, String> {
///         args.checked_mul(2).ok_or_else(|| format!("{args} * 2 overflows"))
///     }
/// }
/// ```
pub trait Handler: Serialize + DeserializeOwned + 'static {
    /// The arguments of one execution.
    type Args: Serialize + DeserializeOwned;
    /// The value returned on success.
    type Output: Serialize + DeserializeOwned;
    /// The handler's own error, returned as `IsolationError::Handler`.
    type Error: Serialize + DeserializeOwned;

    /// Runs the handler. This is called in the child process only.
    fn execute(&self, args: Self::Args, context: &Context) -> Result<Self::Output, Self::Error>;

    /// The name used in telemetry and reports; the type name by default.
    fn name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// String key-value pairs passed to the handler beside its arguments, such as
/// a session or request id.
#[derive(Clone, Debug, Default, PartialEq, Eq, SerializeDerive, Deserialize)]
pub struct Context {
    values: BTreeMap<String, String>,
}

impl Context {
    /// Creates an empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the context with `key` set to `value`, replacing an earlier value.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    /// Returns the value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Iterates over the pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_with_replaces_value() {
        let context = Context::new().with("a", "1").with("a", "2");
        assert_eq!(context.get("a"), Some("2"));
        assert_eq!(context.get("b"), None);
    }

    #[test]
    fn context_round_trips_through_postcard() {
        let context = Context::new().with("session_id", "abc");
        let bytes = postcard::to_stdvec(&context).unwrap();
        let back: Context = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, context);
    }
}
