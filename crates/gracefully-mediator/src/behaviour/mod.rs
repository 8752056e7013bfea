//! The built-in behaviours, each a tower [`Layer`](tower::Layer) over services of
//! [`Call`](crate::Call)s: [`LoggingLayer`], [`TimeoutLayer`], [`ValidateLayer`],
//! [`RetryLayer`].
//!
//! Each is generic over the request type, so one layer wraps every handler of the
//! mediator. None of them threads the token: it travels in the `Call`, and the one that
//! changes it ([`TimeoutLayer`]) narrows it.

mod logging;
mod retry;
mod timeout;
mod validate;

pub use logging::{Logging, LoggingFuture, LoggingLayer};
pub use retry::{Retry, RetryFuture, RetryLayer};
pub use timeout::{Timeout, TimeoutLayer};
pub use validate::{Validate, ValidateLayer};
