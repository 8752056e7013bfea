//! What [`HostBuilder::build`](crate::HostBuilder::build) validated and
//! [`Host::run`](crate::Host::run) runs: the settings ([`Config`]) and the registered
//! services ([`ServiceSpec`]).

use std::borrow::Cow;
use std::time::Duration;

use crate::options::ServiceOptions;
use crate::service::ErasedService;

/// The validated settings.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) shutdown_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) pre_stop_delay: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) handle_signals: bool,
    pub(crate) log_report: bool,
}

/// A registered service.
pub(crate) struct ServiceSpec {
    pub(crate) name: Cow<'static, str>,
    pub(crate) service: Box<dyn ErasedService>,
    pub(crate) options: ServiceOptions,
}
