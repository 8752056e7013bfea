//! [`HostBuilder`] and the validation behind [`ConfigError`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::config::{Config, ServiceSpec};
use crate::host::Host;
use crate::lifetime::Lifetime;
use crate::operations::Operations;
use crate::options::ServiceOptions;
use crate::policy::FailurePolicy;
use crate::service::BackgroundService;
use crate::signals::EarlySignals;

/// The longest `shutdown_timeout` accepted: one day.
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Builds a [`Host`]: its services and its shutdown budgets. Made by [`Host::builder`].
///
/// ```
/// use std::time::Duration;
/// use gracefully_host::{Host, ServiceOptions, FailurePolicy, service_fn};
///
/// let host = Host::builder()
///     .shutdown_timeout(Duration::from_secs(30))   // the whole shutdown, from the trigger
///     .cancel_grace(Duration::from_secs(5))        // the last part: after hard stop fires
///     .pre_stop_delay(Duration::from_secs(2))      // the first part: readiness already fails
///     .service("consumer", service_fn(|stopping, _cx| async move { stopping.cancelled().await; }))
///     .service_with(
///         "metrics",
///         service_fn(|stopping, _cx| async move { stopping.cancelled().await; }),
///         ServiceOptions::new().on_failure(FailurePolicy::Ignore).depends_on(Vec::<String>::new()),
///     )
///     .build()
///     .expect("valid configuration");
/// # let _ = host;
///
/// let err = Host::builder()
///     .shutdown_timeout(Duration::from_secs(10))
///     .cancel_grace(Duration::from_secs(15))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "cancel_grace");
/// ```
///
/// *Anchors:* .NET's `HostBuilder` + `HostOptions` (`ShutdownTimeout`,
/// `StartupTimeout`, `ServicesStartConcurrently`); tokio-graceful-shutdown's `Toplevel`.
#[must_use = "a builder does nothing until `build` is called"]
pub struct HostBuilder {
    config: Config,
    services: Vec<ServiceSpec>,
    operations: Option<Operations>,
    early_signals: Option<EarlySignals>,
}

impl HostBuilder {
    pub(crate) fn new() -> HostBuilder {
        HostBuilder {
            config: Config {
                shutdown_timeout: Duration::from_secs(30),
                cancel_grace: Duration::from_secs(5),
                pre_stop_delay: Duration::ZERO,
                startup_timeout: Duration::from_secs(30),
                handle_signals: true,
                log_report: true,
            },
            services: Vec::new(),
            operations: None,
            early_signals: None,
        }
    }

    /// The whole shutdown's budget, from the trigger to the abort: the pre-stop delay, the
    /// drain and the cancel grace together. Default 30 s (Kubernetes' `terminationGracePeriodSeconds` and .NET's
    /// `HostOptions.ShutdownTimeout`). Valid: more than 0, at most one day.
    ///
    /// Like Kubernetes' grace period, which includes the preStop hook, it includes the
    /// pre-stop delay, so a host configured with the pod's grace period finishes before the
    /// kubelet's SIGKILL.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The cancel phase's budget: how long in-flight work gets, after the hard-stop token
    /// fired, to stop cooperatively before it is aborted. The last part of
    /// `shutdown_timeout`. Default 5 s. Valid: `0 ..= shutdown_timeout − pre_stop_delay`.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.config.cancel_grace = grace;
        self
    }

    /// How long to keep running normally after the trigger, with readiness already
    /// failing, so load balancers stop sending traffic before the drain begins. The first
    /// part of `shutdown_timeout`. Default 0. Valid: `0 ..= shutdown_timeout − cancel_grace`.
    pub fn pre_stop_delay(mut self, delay: Duration) -> Self {
        self.config.pre_stop_delay = delay;
        self
    }

    /// How long each start step may take (a service can override it with
    /// [`ServiceOptions::startup_timeout`]). Default 30 s. Valid: more than 0.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.config.startup_timeout = timeout;
        self
    }

    /// Whether [`Host::run`] handles SIGINT, SIGTERM, SIGQUIT and SIGHUP (Ctrl-C on
    /// Windows): the first starts a graceful shutdown, the second skips to the abort.
    /// Default `true`. SIGHUP (the terminal or SSH session closed) is among them because
    /// its default action kills the process with no drain; .NET's console lifetime leaves
    /// it out. An application that uses SIGHUP to reload its configuration turns this off
    /// and forwards the others to [`Lifetime::stop`](crate::Lifetime::stop) itself.
    /// Turn it off in tests, or when something else owns the signals (then call
    /// [`Lifetime::stop`](crate::Lifetime::stop) yourself).
    ///
    /// The handlers run on a thread of their own (with a small runtime of their own), so
    /// they work on any runtime — one without tokio's IO driver too — and a second signal
    /// gets through even when every worker is busy. If they cannot be installed, `run`
    /// logs an error and goes on; stop the host with `Lifetime::stop` then.
    ///
    /// As with any tokio signal handler, once installed the handlers replace the default
    /// action (terminate) for the rest of the process, also after `run` returned: end the
    /// process then, as [`Host::run_and_exit`] does.
    pub fn handle_signals(mut self, enabled: bool) -> Self {
        self.config.handle_signals = enabled;
        self
    }

    /// Handles the signals through `signals`, installed earlier (before the program's own
    /// start-up work: see [`EarlySignals`]), instead of installing handlers when it runs:
    /// no signal is missed between the two, and one that already arrived stops the host as
    /// soon as it has started. Implies [`handle_signals(true)`](Self::handle_signals) and
    /// wins over a later `handle_signals(false)`: the signals are already taken.
    pub fn signals(mut self, signals: EarlySignals) -> Self {
        self.config.handle_signals = true;
        self.early_signals = Some(signals);
        self
    }

    /// Whether [`Host::run`] logs the shutdown report when it is done (at `info` for a clean
    /// stop, at `error` otherwise). Default `true`. Turn it off when the program prints the
    /// report it gets back from `run` itself, so it appears once (a CLI, the demo service).
    pub fn log_report(mut self, enabled: bool) -> Self {
        self.config.log_report = enabled;
        self
    }

    /// Installs an operations registry (default: none, and nothing is recorded): each
    /// service and tracked task then registers as an operation, and so does everything
    /// that begins while they run (requests, queries, outbound calls), under the operation
    /// it runs in. Keep a clone to show it (`gracefully-axum` serves it as a page and JSON).
    ///
    /// ```
    /// use gracefully_host::{Host, Operations};
    ///
    /// let operations = Operations::new();
    /// let host = Host::builder().operations(operations.clone()).build().unwrap();
    /// assert!(host.lifetime().operations().is_some());
    /// ```
    pub fn operations(mut self, operations: Operations) -> Self {
        self.operations = Some(operations);
        self
    }

    /// Registers a service under `name` with the default [`ServiceOptions`]: stop the host
    /// if it fails; start after the service registered before it.
    pub fn service<S: BackgroundService>(
        self,
        name: impl Into<Cow<'static, str>>,
        service: S,
    ) -> Self {
        self.service_with(name, service, ServiceOptions::new())
    }

    /// Registers a service under `name` with `options`.
    pub fn service_with<S: BackgroundService>(
        mut self,
        name: impl Into<Cow<'static, str>>,
        service: S,
        options: ServiceOptions,
    ) -> Self {
        self.services.push(ServiceSpec {
            name: name.into(),
            service: Box::new(service),
            options,
        });
        self
    }

    /// Checks the configuration and builds the host. Never panics: every problem is a
    /// [`ConfigError`] naming the field and the valid range.
    pub fn build(self) -> Result<Host, ConfigError> {
        validate_budgets(&self.config)?;
        let index = index_services(&self.services)?;
        let dependencies = resolve_dependencies(&self.services, &index)?;
        if let Some(cycle) = find_cycle(&dependencies) {
            let path: Vec<&str> = cycle
                .iter()
                .map(|&i| self.services[i].name.as_ref())
                .collect();
            return Err(ConfigError::new(
                format!("services[\"{}\"].depends_on", path[0]),
                format!(
                    "forms a dependency cycle: {}; dependencies must form a tree or a chain",
                    path.join(" → ")
                ),
            ));
        }
        let lifetime = Lifetime::new(self.services.len(), self.operations);
        Ok(Host {
            config: self.config,
            services: self.services,
            dependencies,
            lifetime,
            early_signals: self.early_signals,
        })
    }
}

/// The shutdown budgets fit together and the startup timeout is positive.
fn validate_budgets(c: &Config) -> Result<(), ConfigError> {
    if c.shutdown_timeout.is_zero() || c.shutdown_timeout > MAX_SHUTDOWN_TIMEOUT {
        return Err(ConfigError::new(
            "shutdown_timeout",
            format!(
                "is {:?}; valid: more than 0 and at most {:?} (default 30 s)",
                c.shutdown_timeout, MAX_SHUTDOWN_TIMEOUT
            ),
        ));
    }
    if c.cancel_grace > c.shutdown_timeout {
        return Err(ConfigError::new(
            "cancel_grace",
            format!(
                "({:?}) is longer than shutdown_timeout ({:?}); the cancel phase is the last part of the shutdown timeout, so valid: 0 ..= shutdown_timeout",
                c.cancel_grace, c.shutdown_timeout
            ),
        ));
    }
    if c.pre_stop_delay > c.shutdown_timeout - c.cancel_grace {
        return Err(ConfigError::new(
            "pre_stop_delay",
            format!(
                "({:?}) + cancel_grace ({:?}) exceed shutdown_timeout ({:?}); the pre-stop delay counts toward the shutdown timeout, so valid: 0 ..= shutdown_timeout − cancel_grace ({:?})",
                c.pre_stop_delay,
                c.cancel_grace,
                c.shutdown_timeout,
                c.shutdown_timeout - c.cancel_grace
            ),
        ));
    }
    if c.startup_timeout.is_zero() {
        return Err(ConfigError::new(
            "startup_timeout",
            "is 0; valid: more than 0 (default 30 s)",
        ));
    }
    Ok(())
}

/// Each service's index by name, once every name is non-empty and unique and every
/// service's own options are valid.
fn index_services(services: &[ServiceSpec]) -> Result<HashMap<&str, usize>, ConfigError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, spec) in services.iter().enumerate() {
        if spec.name.is_empty() {
            return Err(ConfigError::new(
                format!("services[{i}]"),
                "has an empty name; every service needs a unique, non-empty name (it names the service's row in the report)",
            ));
        }
        if index.insert(&spec.name, i).is_some() {
            return Err(ConfigError::new(
                format!("services[\"{}\"]", spec.name),
                "is registered twice; service names must be unique (they name the report's rows)",
            ));
        }
        let options = &spec.options;
        if options.startup_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                format!("services[\"{}\"].startup_timeout", spec.name),
                "is 0; valid: more than 0",
            ));
        }
        if let FailurePolicy::Restart(policy) = &options.failure_policy
            && let Err((field, message)) = policy.validate()
        {
            return Err(ConfigError::new(
                format!("services[\"{}\"].on_failure.{field}", spec.name),
                message,
            ));
        }
    }
    Ok(index)
}

/// `dependencies[i]`: the indexes of the services service `i` depends on — the one
/// registered before it unless it declared its own, which must be registered names.
fn resolve_dependencies(
    services: &[ServiceSpec],
    index: &HashMap<&str, usize>,
) -> Result<Vec<Vec<usize>>, ConfigError> {
    let mut dependencies: Vec<Vec<usize>> = Vec::with_capacity(services.len());
    for (i, spec) in services.iter().enumerate() {
        let Some(names) = &spec.options.depends_on else {
            dependencies.push(i.checked_sub(1).into_iter().collect());
            continue;
        };
        let mut deps = Vec::with_capacity(names.len());
        for name in names {
            let Some(&d) = index.get(name.as_ref()) else {
                let known: Vec<&str> = services.iter().map(|s| s.name.as_ref()).collect();
                return Err(ConfigError::new(
                    format!("services[\"{}\"].depends_on", spec.name),
                    format!(
                        "names \"{name}\", which is not a registered service; registered: {}",
                        known.join(", ")
                    ),
                ));
            };
            deps.push(d);
        }
        deps.sort_unstable();
        deps.dedup();
        dependencies.push(deps);
    }
    Ok(dependencies)
}

impl fmt::Debug for HostBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_ref()).collect();
        f.debug_struct("HostBuilder")
            .field("config", &self.config)
            .field("services", &names)
            .finish()
    }
}

/// A cycle in the dependency graph, as a path that starts and ends at the same service.
fn find_cycle(dependencies: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: usize,
        dependencies: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[node] = Mark::OnPath;
        path.push(node);
        for &next in &dependencies[node] {
            match marks[next] {
                Mark::OnPath => {
                    let start = path.iter().position(|&n| n == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, dependencies, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[node] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; dependencies.len()];
    let mut path = Vec::new();
    for node in 0..dependencies.len() {
        if marks[node] == Mark::New
            && let Some(cycle) = visit(node, dependencies, &mut marks, &mut path)
        {
            return Some(cycle);
        }
    }
    None
}

/// A configuration [`HostBuilder::build`] rejected: which field, and what would be valid.
///
/// ```
/// use std::time::Duration;
/// use gracefully_host::Host;
///
/// let err = Host::builder().shutdown_timeout(Duration::ZERO).build().unwrap_err();
/// assert_eq!(err.field(), "shutdown_timeout");
/// assert!(err.to_string().contains("valid: more than 0"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field at fault: `"cancel_grace"`, `"services[\"db\"].depends_on"`, …
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it and what would be valid.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid host configuration: {} {}",
            self.field, self.message
        )
    }
}

impl Error for ConfigError {}
