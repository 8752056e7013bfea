//! Property test: random sequences of tree operations, run against the real tree and against
//! a simple reference model, must agree on cancellation state, reasons, callback runs (and
//! their order) and liveness (which nodes are still allocated).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use crate::tree::debug::live_nodes;
use crate::{CancellationSource, CancellationToken, ManualClock, Reason, ReasonKind, Registration};

#[derive(Debug, Clone)]
enum Op {
    Root,
    Child(usize),
    Linked(usize, usize),
    /// `child_with_timeout` (seconds).
    ChildTimeout(usize, u8),
    /// `cancel_after` on an existing source (seconds).
    CancelAfter(usize, u8),
    Cancel(usize),
    Advance(u8),
    DropSource(usize),
    DropToken(usize),
    Register(usize),
    Unregister(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Root),
        4 => any::<usize>().prop_map(Op::Child),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Linked(a, b)),
        2 => (any::<usize>(), 1u8..5).prop_map(|(a, s)| Op::ChildTimeout(a, s)),
        1 => (any::<usize>(), 1u8..5).prop_map(|(a, s)| Op::CancelAfter(a, s)),
        3 => any::<usize>().prop_map(Op::Cancel),
        2 => (1u8..4).prop_map(Op::Advance),
        2 => any::<usize>().prop_map(Op::DropSource),
        2 => any::<usize>().prop_map(Op::DropToken),
        4 => any::<usize>().prop_map(Op::Register),
        2 => any::<usize>().prop_map(Op::Unregister),
    ]
}

/// The reference model of one node.
#[derive(Debug, Clone)]
struct MNode {
    parents: Vec<usize>,
    /// (firing id, kind, message)
    cancelled: Option<(usize, ReasonKind, Option<String>)>,
    /// (at in seconds, arming sequence number)
    deadline: Option<(u64, u64)>,
    has_source: bool,
    has_token: bool,
}

#[derive(Debug, Clone)]
struct MReg {
    node: usize,
    live: bool,
    ran: bool,
    /// Whether the registration holds its node (not if it ran inline: it is then empty).
    holds: bool,
}

#[derive(Default)]
struct Model {
    nodes: Vec<MNode>,
    regs: Vec<MReg>,
    now: u64,
    seq: u64,
    firings: usize,
}

impl Model {
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        // Is `a` a proper ancestor of `b`?
        let mut stack = self.nodes[b].parents.clone();
        while let Some(n) = stack.pop() {
            if n == a {
                return true;
            }
            stack.extend(self.nodes[n].parents.iter().copied());
        }
        false
    }

    /// Cancels `n` and its descendants; returns the registrations that run.
    fn cancel(&mut self, n: usize, kind: ReasonKind, message: Option<String>) -> Vec<usize> {
        if self.nodes[n].cancelled.is_some() {
            return vec![];
        }
        let firing = self.firings;
        self.firings += 1;
        let mut newly = vec![n];
        self.nodes[n].cancelled = Some((firing, kind, message.clone()));
        // Children always have higher indices than their parents.
        for c in n + 1..self.nodes.len() {
            if self.nodes[c].cancelled.is_none()
                && self.nodes[c].parents.iter().any(|p| newly.contains(p))
            {
                self.nodes[c].cancelled = Some((firing, kind, message.clone()));
                newly.push(c);
            }
        }
        let mut ran = vec![];
        for (id, reg) in self.regs.iter_mut().enumerate() {
            if reg.live && !reg.ran && newly.contains(&reg.node) {
                reg.ran = true;
                ran.push(id);
            }
        }
        ran
    }

    fn alive(&self) -> Vec<bool> {
        let mut alive: Vec<bool> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.has_source
                    || n.has_token
                    || self.regs.iter().any(|r| r.live && r.holds && r.node == i)
            })
            .collect();
        for c in (0..self.nodes.len()).rev() {
            if alive[c] {
                for &p in &self.nodes[c].parents {
                    alive[p] = true;
                }
            }
        }
        alive
    }

    fn set_deadline(&mut self, n: usize, secs: u64) {
        let at = self.now + secs;
        if self.nodes[n].deadline.is_none_or(|(d, _)| at < d) {
            self.nodes[n].deadline = Some((at, self.seq));
        }
        self.seq += 1;
    }
}

struct Real {
    clock: ManualClock,
    sources: Vec<Option<CancellationSource>>,
    tokens: Vec<Option<CancellationToken>>,
    regs: Vec<Option<Registration>>,
    log: Arc<Mutex<Vec<usize>>>,
}

impl Real {
    fn handle(&self, n: usize) -> Option<&CancellationToken> {
        self.tokens[n]
            .as_ref()
            .or_else(|| self.sources[n].as_ref().map(|s| s.as_token()))
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let baseline = live_nodes();
    let mut model = Model::default();
    let mut real = Real {
        clock: ManualClock::new(),
        sources: vec![],
        tokens: vec![],
        regs: vec![],
        log: Arc::new(Mutex::new(vec![])),
    };
    let start = real.clock.now();

    for (step, op) in ops.into_iter().enumerate() {
        let log_before = real.log.lock().unwrap().len();
        let mut expected_runs: Vec<usize> = vec![];
        let mut check_order = false;
        let count = model.nodes.len();
        let pick = |i: usize| if count == 0 { None } else { Some(i % count) };
        match op {
            Op::Root => {
                real.sources
                    .push(Some(CancellationSource::with_clock(&real.clock)));
                real.tokens.push(None);
                model.nodes.push(MNode {
                    parents: vec![],
                    cancelled: None,
                    deadline: None,
                    has_source: true,
                    has_token: false,
                });
            }
            Op::Child(i) | Op::ChildTimeout(i, _) => {
                let Some(p) = pick(i) else { continue };
                let Some(token) = real.handle(p) else {
                    continue;
                };
                let secs = match op {
                    Op::ChildTimeout(_, s) => Some(u64::from(s)),
                    _ => None,
                };
                let source = match secs {
                    Some(s) => token.child_with_timeout(Duration::from_secs(s)),
                    None => token.child(),
                };
                let token = source.token();
                real.sources.push(Some(source));
                real.tokens.push(Some(token));
                let cancelled = model.nodes[p].cancelled.clone();
                model.nodes.push(MNode {
                    parents: vec![p],
                    cancelled,
                    deadline: None,
                    has_source: true,
                    has_token: true,
                });
                if let Some(s) = secs {
                    let n = model.nodes.len() - 1;
                    if model.nodes[n].cancelled.is_none() {
                        model.set_deadline(n, s);
                    }
                }
            }
            Op::Linked(a, b) => {
                let (Some(a), Some(b)) = (pick(a), pick(b)) else {
                    continue;
                };
                let (Some(ta), Some(tb)) = (real.handle(a), real.handle(b)) else {
                    continue;
                };
                let source = CancellationSource::linked([ta, tb]);
                real.sources.push(Some(source));
                real.tokens.push(None);
                let cancelled = model.nodes[a]
                    .cancelled
                    .clone()
                    .or_else(|| model.nodes[b].cancelled.clone());
                model.nodes.push(MNode {
                    parents: vec![a, b],
                    cancelled,
                    deadline: None,
                    has_source: true,
                    has_token: false,
                });
            }
            Op::CancelAfter(i, s) => {
                let Some(n) = pick(i) else { continue };
                let Some(source) = &real.sources[n] else {
                    continue;
                };
                source.cancel_after(Duration::from_secs(u64::from(s)));
                if model.nodes[n].cancelled.is_none() {
                    model.set_deadline(n, u64::from(s));
                }
            }
            Op::Cancel(i) => {
                let Some(n) = pick(i) else { continue };
                let Some(source) = &real.sources[n] else {
                    continue;
                };
                let message = format!("step {step}");
                let won = source
                    .cancel_with(Reason::new(ReasonKind::Failed).with_message(message.clone()));
                prop_assert_eq!(won, model.nodes[n].cancelled.is_none());
                expected_runs = model.cancel(n, ReasonKind::Failed, Some(message));
                check_order = true;
            }
            Op::Advance(s) => {
                model.now += u64::from(s);
                real.clock.advance(Duration::from_secs(u64::from(s)));
                loop {
                    let due = model
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| n.cancelled.is_none())
                        .filter_map(|(i, n)| n.deadline.map(|(at, seq)| (at, seq, i)))
                        .filter(|&(at, _, _)| at <= model.now)
                        .min();
                    let Some((_, _, n)) = due else { break };
                    expected_runs.extend(model.cancel(n, ReasonKind::DeadlineExceeded, None));
                }
            }
            Op::DropSource(i) => {
                let Some(n) = pick(i) else { continue };
                real.sources[n] = None;
                model.nodes[n].has_source = false;
            }
            Op::DropToken(i) => {
                let Some(n) = pick(i) else { continue };
                real.tokens[n] = None;
                model.nodes[n].has_token = false;
            }
            Op::Register(i) => {
                let Some(n) = pick(i) else { continue };
                let Some(token) = real.handle(n) else {
                    continue;
                };
                let id = real.regs.len();
                let log = real.log.clone();
                let registration = token.on_cancel(move |_| log.lock().unwrap().push(id));
                real.regs.push(Some(registration));
                let ran = model.nodes[n].cancelled.is_some();
                if ran {
                    expected_runs.push(id); // inline
                }
                model.regs.push(MReg {
                    node: n,
                    live: true,
                    ran,
                    holds: !ran,
                });
            }
            Op::Unregister(i) => {
                if real.regs.is_empty() {
                    continue;
                }
                let k = i % real.regs.len();
                if let Some(registration) = real.regs[k].take() {
                    let unregistered = registration.unregister();
                    prop_assert_eq!(unregistered, !model.regs[k].ran);
                    model.regs[k].live = false;
                }
            }
        }

        // Callbacks: exactly the expected ones ran during this step, each once.
        let log = real.log.lock().unwrap().clone();
        let new_runs = &log[log_before..];
        let got: BTreeSet<usize> = new_runs.iter().copied().collect();
        prop_assert_eq!(got.len(), new_runs.len(), "a callback ran twice");
        let want: BTreeSet<usize> = expected_runs.iter().copied().collect();
        prop_assert_eq!(got, want, "callbacks run at step {}", step);
        if check_order {
            // Descendants before ancestors; on one node, newest first.
            for (x_pos, &x) in new_runs.iter().enumerate() {
                for &y in &new_runs[x_pos + 1..] {
                    let (nx, ny) = (model.regs[x].node, model.regs[y].node);
                    prop_assert!(
                        !model.is_ancestor(nx, ny),
                        "callback on {} ran before one on its descendant {}",
                        nx,
                        ny
                    );
                    if nx == ny {
                        prop_assert!(x > y, "newest first on one node");
                    }
                }
            }
        }

        // State and reasons of every node we can still observe.
        let mut reasons_by_firing: HashMap<usize, Reason> = HashMap::new();
        for (n, mnode) in model.nodes.iter().enumerate() {
            let Some(token) = real.handle(n) else {
                continue;
            };
            prop_assert_eq!(
                token.is_cancelled(),
                mnode.cancelled.is_some(),
                "node {}",
                n
            );
            if let Some((firing, kind, message)) = &mnode.cancelled {
                let reason = token.reason().unwrap();
                prop_assert_eq!(reason.kind(), *kind);
                prop_assert_eq!(reason.message(), message.as_deref());
                let first = reasons_by_firing.entry(*firing).or_insert(reason.clone());
                prop_assert!(first.same_as(&reason), "one firing, one reason");
            }
            // Deadlines: the minimum over the node and its ancestors.
            let mut expect: Option<u64> = None;
            let mut stack = vec![n];
            while let Some(m) = stack.pop() {
                if let Some((at, _)) = model.nodes[m].deadline {
                    expect = Some(expect.map_or(at, |e| e.min(at)));
                }
                stack.extend(model.nodes[m].parents.iter().copied());
            }
            if mnode.cancelled.is_none() {
                prop_assert_eq!(
                    token.deadline(),
                    expect.map(|s| start + Duration::from_secs(s)),
                    "deadline of node {}",
                    n
                );
            }
        }

        // Liveness: exactly the nodes something observes are allocated.
        let alive = model.alive().iter().filter(|a| **a).count() as isize;
        prop_assert_eq!(
            live_nodes() - baseline,
            alive,
            "live nodes after step {}",
            step
        );
    }

    drop(real);
    prop_assert_eq!(live_nodes(), baseline, "everything freed at the end");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES overrides (CI runs the default; longer soaks locally).
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if cfg!(miri) { 4 } else { 512 }),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_tree_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
