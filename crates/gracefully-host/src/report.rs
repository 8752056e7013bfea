//! The [`ShutdownReport`]: what stopped, when, and how.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use gracefully::Reason;
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::phase::Phase;

/// Whether a [`ReportEntry`] is a background service or tracked tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A registered [`BackgroundService`](crate::BackgroundService).
    Service,
    /// One or more tracked tasks (from [`Lifetime::spawn`](crate::Lifetime::spawn) or
    /// [`Lifetime::shield`](crate::Lifetime::shield)) of the same name that ended alike.
    Task,
}

/// One line of the [`ShutdownReport`]: a service, or tracked tasks of one name that ended
/// in the same phase with the same outcome (counted, so 10,000 idle workers make one line).
#[derive(Clone, Debug)]
pub struct ReportEntry {
    name: Cow<'static, str>,
    kind: EntryKind,
    count: usize,
    phase: Phase,
    elapsed: Option<Duration>,
    outcome: Outcome,
    restarts: u32,
    still_dropping: usize,
    details: Vec<(Cow<'static, str>, String)>,
}

impl ReportEntry {
    /// The service's or task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Service or tracked tasks.
    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    /// How many tasks this line stands for (1 for a service).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The phase in which it ended.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Time from the stop request to its end (for a line of several tasks, the latest);
    /// `None` if it ended before the stop request.
    pub fn elapsed(&self) -> Option<Duration> {
        self.elapsed
    }

    /// How it ended.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// How often the [restart policy](crate::RestartPolicy) restarted it (services only).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// How many of this line's aborted tasks (0 or 1 for a service) had not been dropped
    /// yet when the report was made: a destructor that blocks its thread (or a poll that
    /// does) was still running. The host drops aborted work on a thread of its own and
    /// waits for it only briefly (200 ms), so such a destructor delays neither the host
    /// nor its report; it finishes, if ever, after `run` returned.
    pub fn still_dropping(&self) -> usize {
        self.still_dropping
    }

    /// What the service recorded with [`ServiceContext::detail`](crate::ServiceContext::detail)
    /// and [`ServiceContext::count`](crate::ServiceContext::count), in the order first
    /// recorded, plus notes from the host (a failed restart, a skipped start).
    pub fn details(&self) -> &[(Cow<'static, str>, String)] {
        &self.details
    }

    /// The value recorded under `key`, if any.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Counts of tracked tasks by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskCounts {
    /// Completed normally.
    pub completed: u64,
    /// Stopped because they were cancelled.
    pub cancelled: u64,
    /// Returned an error or panicked (either makes the exit code 1).
    pub failed: u64,
}

impl TaskCounts {
    pub(crate) fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::Failed(_) | Outcome::Aborted => self.failed += 1,
        }
    }

    fn total(&self) -> u64 {
        self.completed + self.cancelled + self.failed
    }
}

/// What [`Host::run`](crate::Host::run) returns (and logs): for each service and tracked
/// task, the phase in which it ended, the time from the stop request to its end, and its
/// outcome; plus the trigger, the phase timings and the exit code.
///
/// Its `Display` is a readable table:
///
/// ```text
/// shutdown report: exit code 2 (aborted stragglers); trigger: shutdown: SIGTERM (at …); took 2.0s
///   phases: drain at 0ns, cancel at 1.5s, abort at 2.0s
///   NAME            KIND     PHASE  AFTER    OUTCOME    DETAILS
///   ticker          service  drain  1.2ms    completed  ticks: 41
///   stubborn        service  abort  2.0s     aborted
///   idle ×10000     task     drain  3.1ms    completed
/// ```
///
/// # Exit codes
///
/// [`exit_code`](Self::exit_code) is 0 only when every service and every tracked task
/// stopped cleanly (completed, or cancelled cooperatively) and none ever failed. In order
/// of precedence:
///
/// | code | constant | meaning |
/// |---|---|---|
/// | 3 | [`EXIT_FORCED`](Self::EXIT_FORCED) | a second signal forced the shutdown (skipped to abort) |
/// | 1 | [`EXIT_FAILED`](Self::EXIT_FAILED) | a service or tracked task failed, at any time: an error, a panic, a start step that failed or timed out, restarts exhausted, a failure under [`FailurePolicy::Ignore`](crate::FailurePolicy::Ignore) |
/// | 2 | [`EXIT_ABORTED`](Self::EXIT_ABORTED) | stragglers were still running at the shutdown timeout and were aborted |
/// | 0 | [`EXIT_CLEAN`](Self::EXIT_CLEAN) | clean |
///
/// A failure outranks an abort because it is usually the cause. A panic is always a
/// failure. Tracked tasks that ended *before* the stop request are only counted
/// ([`finished_before_stop`](Self::finished_before_stop)), not listed, so a long-running
/// host does not accumulate a line per task; their failures (logged with the task's name
/// when they happened) still make the code 1.
///
/// *Anchors:* .NET logs "Application is shutting down..." and exits 0 even after a
/// BackgroundService failed (unless `BackgroundServiceExceptionBehavior.StopHost`, which
/// still exits 0 before .NET 8); tokio-graceful-shutdown returns an error listing failed
/// subsystems but no timings or phases. Neither says who held the shutdown up.
#[derive(Clone, Debug)]
pub struct ShutdownReport {
    trigger: Reason,
    forced: bool,
    total: Duration,
    /// When each phase began, after the stop request, by `phase as usize` (only the
    /// shutdown phases, `PreStop` to `Abort`, are ever set).
    phase_starts: [Option<Duration>; Phase::ALL.len()],
    entries: Vec<ReportEntry>,
    before_stop: TaskCounts,
}

/// One service's end, as the supervisor hands it to the report.
pub(crate) struct ServiceRecord {
    pub(crate) name: Cow<'static, str>,
    pub(crate) phase: Phase,
    pub(crate) at: Instant,
    pub(crate) outcome: Outcome,
    pub(crate) restarts: u32,
    pub(crate) still_dropping: bool,
    pub(crate) details: Vec<(Cow<'static, str>, String)>,
}

/// One tracked task's end after the stop request, as the tracker hands it to the report.
pub(crate) struct TaskRecord {
    pub(crate) name: Cow<'static, str>,
    pub(crate) phase: Phase,
    pub(crate) at: Instant,
    pub(crate) outcome: Outcome,
    /// Aborted, and not yet dropped when the report was made.
    pub(crate) still_dropping: bool,
}

/// Everything the supervisor gathered, before aggregation.
pub(crate) struct RawReport {
    pub(crate) trigger: Reason,
    pub(crate) forced: bool,
    pub(crate) stop_requested_at: Instant,
    pub(crate) ended_at: Instant,
    /// When each shutdown phase began, by `phase as usize`.
    pub(crate) phase_starts: [Option<Instant>; Phase::ALL.len()],
    pub(crate) services: Vec<ServiceRecord>,
    pub(crate) tasks: Vec<TaskRecord>,
    pub(crate) before_stop: TaskCounts,
}

impl ShutdownReport {
    /// Every service and task stopped cleanly.
    pub const EXIT_CLEAN: i32 = 0;
    /// A service or task failed.
    pub const EXIT_FAILED: i32 = 1;
    /// Stragglers were aborted at the shutdown timeout.
    pub const EXIT_ABORTED: i32 = 2;
    /// A second signal forced the shutdown.
    pub const EXIT_FORCED: i32 = 3;

    pub(crate) fn build(raw: RawReport) -> ShutdownReport {
        let t0 = raw.stop_requested_at;
        let mut entries = Vec::with_capacity(raw.services.len() + 4);
        entries.extend(raw.services.into_iter().map(|s| ReportEntry {
            name: s.name,
            kind: EntryKind::Service,
            count: 1,
            phase: s.phase,
            elapsed: elapsed_since(t0, s.phase, s.at),
            outcome: s.outcome,
            restarts: s.restarts,
            still_dropping: usize::from(s.still_dropping),
            details: s.details,
        }));
        let first_task = entries.len();
        aggregate_tasks(&mut entries, raw.tasks, t0);
        // Tasks by phase, so stragglers come last; stable, so ties keep their order.
        entries[first_task..].sort_by_key(|e| e.phase);
        ShutdownReport {
            trigger: raw.trigger,
            forced: raw.forced,
            total: raw.ended_at.saturating_duration_since(t0),
            phase_starts: raw
                .phase_starts
                .map(|p| p.and_then(|at| at.checked_duration_since(t0))),
            entries,
            before_stop: raw.before_stop,
        }
    }

    /// The exit code for the process; see [the table above](Self#exit-codes).
    pub fn exit_code(&self) -> i32 {
        if self.forced {
            Self::EXIT_FORCED
        } else if self.before_stop.failed > 0
            || self
                .entries
                .iter()
                .any(|e| matches!(e.outcome, Outcome::Failed(_)))
        {
            Self::EXIT_FAILED
        } else if self.entries.iter().any(|e| e.outcome == Outcome::Aborted) {
            Self::EXIT_ABORTED
        } else {
            Self::EXIT_CLEAN
        }
    }

    /// `exit_code() == 0`.
    pub fn is_clean(&self) -> bool {
        self.exit_code() == Self::EXIT_CLEAN
    }

    /// Why the host stopped: the reason given to [`Lifetime::stop`](crate::Lifetime::stop),
    /// e.g. `Shutdown` with message `"SIGTERM"`, or `Failed` naming the failed service.
    pub fn trigger(&self) -> &Reason {
        &self.trigger
    }

    /// Whether a second signal forced the shutdown straight to the abort phase.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// Time from the stop request until the host stopped.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// When `phase` began, measured from the stop request; `None` if the shutdown never
    /// reached it (and for `Starting`, `Running` and `Stopped`).
    pub fn phase_started(&self, phase: Phase) -> Option<Duration> {
        self.phase_starts[phase as usize]
    }

    /// Every line: services in registration order, then tracked tasks.
    pub fn entries(&self) -> &[ReportEntry] {
        &self.entries
    }

    /// The first line named `name` (a service, or tasks of that name).
    pub fn entry(&self, name: &str) -> Option<&ReportEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The services' lines, in registration order.
    pub fn services(&self) -> impl Iterator<Item = &ReportEntry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::Service)
    }

    /// The tracked tasks' lines.
    pub fn tasks(&self) -> impl Iterator<Item = &ReportEntry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::Task)
    }

    /// Tracked tasks that ended before the stop request, by outcome. Any `failed` among
    /// them makes the exit code [`EXIT_FAILED`](Self::EXIT_FAILED).
    pub fn finished_before_stop(&self) -> TaskCounts {
        self.before_stop
    }

    fn exit_meaning(&self) -> &'static str {
        match self.exit_code() {
            Self::EXIT_CLEAN => "clean",
            Self::EXIT_FAILED => "a service or task failed",
            Self::EXIT_ABORTED => "stragglers aborted",
            _ => "forced by a second signal",
        }
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "shutdown report: exit code {} ({}); trigger: {}; took {:.1?}",
            self.exit_code(),
            self.exit_meaning(),
            self.trigger,
            self.total
        )?;
        let mut phases = String::new();
        for phase in Phase::ALL {
            if let Some(at) = self.phase_started(phase) {
                if !phases.is_empty() {
                    phases.push_str(", ");
                }
                let _ = write!(phases, "{phase} at {at:.1?}");
            }
        }
        writeln!(f, "  phases: {phases}")?;
        let rows: Vec<[String; 6]> = self.entries.iter().map(ReportEntry::cells).collect();
        write_table(
            f,
            ["NAME", "KIND", "PHASE", "AFTER", "OUTCOME", "DETAILS"],
            &rows,
        )?;
        if self.before_stop.total() > 0 {
            let c = self.before_stop;
            writeln!(
                f,
                "  tracked tasks that ended before the stop request: {} completed, {} cancelled, {} failed",
                c.completed, c.cancelled, c.failed
            )?;
        }
        Ok(())
    }
}

impl ReportEntry {
    /// Counts one more task on this line.
    fn add(&mut self, elapsed: Option<Duration>, still_dropping: usize) {
        self.count += 1;
        self.elapsed = self.elapsed.max(elapsed);
        self.still_dropping += still_dropping;
    }

    /// This line's cells in the report's table.
    fn cells(&self) -> [String; 6] {
        let name = if self.count > 1 {
            format!("{} ×{}", self.name, self.count)
        } else {
            self.name.to_string()
        };
        let kind = match self.kind {
            EntryKind::Service => "service",
            EntryKind::Task => "task",
        };
        let after = match self.elapsed {
            Some(d) => format!("{d:.1?}"),
            None => "before stop".to_string(),
        };
        let mut details: Vec<String> = Vec::new();
        if self.restarts > 0 {
            details.push(format!("restarts: {}", self.restarts));
        }
        match self.still_dropping {
            0 => {}
            _ if self.count == 1 => details.push("still dropping".to_string()),
            n => details.push(format!("{n} still dropping")),
        }
        details.extend(self.details.iter().map(|(k, v)| format!("{k}: {v}")));
        [
            name,
            kind.to_string(),
            self.phase.to_string(),
            after,
            self.outcome.to_string(),
            details.join(", "),
        ]
    }
}

/// Writes `header` and `rows` as columns padded to their widest cell, each line indented
/// by two spaces and without trailing blanks.
fn write_table<const N: usize>(
    f: &mut fmt::Formatter<'_>,
    header: [&str; N],
    rows: &[[String; N]],
) -> fmt::Result {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| -> fmt::Result {
        let mut out = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            out.push(' ');
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad + 1));
            }
        }
        writeln!(f, "{}", out.trim_end())
    };
    line(&header)?;
    for row in rows {
        line(&row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

/// Time from the stop request `t0` to `at`, for work that ended in `phase`; `None` for work
/// that ended before the stop request, even when the paused test clock gives both the same
/// instant.
fn elapsed_since(t0: Instant, phase: Phase, at: Instant) -> Option<Duration> {
    phase
        .is_shutdown()
        .then(|| at.saturating_duration_since(t0))
}

/// Appends `tasks` to `entries`, one line per name, phase and outcome (counted, the latest
/// end kept), in the order each line's first task ended.
fn aggregate_tasks(entries: &mut Vec<ReportEntry>, tasks: Vec<TaskRecord>, t0: Instant) {
    let mut index: HashMap<(Cow<'static, str>, Phase, Outcome), usize> = HashMap::new();
    let mut last: Option<usize> = None;
    for task in tasks {
        let elapsed = elapsed_since(t0, task.phase, task.at);
        let still_dropping = usize::from(task.still_dropping);
        // Fast path: tasks that end alike tend to end together.
        if let Some(i) = last {
            let entry: &mut ReportEntry = &mut entries[i];
            if entry.name == task.name && entry.phase == task.phase && entry.outcome == task.outcome
            {
                entry.add(elapsed, still_dropping);
                continue;
            }
        }
        let key = (task.name, task.phase, task.outcome);
        if let Some(&i) = index.get(&key) {
            entries[i].add(elapsed, still_dropping);
            last = Some(i);
            continue;
        }
        last = Some(entries.len());
        index.insert(key.clone(), entries.len());
        let (name, phase, outcome) = key;
        entries.push(ReportEntry {
            name,
            kind: EntryKind::Task,
            count: 1,
            phase,
            elapsed,
            outcome,
            restarts: 0,
            still_dropping,
            details: Vec::new(),
        });
    }
}
