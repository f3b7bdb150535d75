//! Complex event processing: a pattern's automaton run per tenant and key, over the key's events
//! in event-time order (docs/cep.md).
//!
//! The semantics are Flink CEP's NFA: a partial match sits at a step with a count of events
//! taken there; each event may be *taken* (by the step, or by a later one after *proceeding*
//! past satisfied steps) or *ignored* (relaxed contiguity), and every possibility is a branch.
//! After an ignore a partial match may not proceed (Flink's separate "ignore" state), so a
//! branch that skipped the next step is created once, when it splits off. Matches found on one
//! event are emitted oldest first, each pruning what the after-match strategy says.
//!
//! Events wait in [`Cep::insert`]'s buffer until the watermark passes their time, so a key's
//! events are taken in time order whatever order they arrived in (equal times in the order of
//! their values, so that too is the same in every run).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use std::hash::BuildHasher;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use tenantflow_core::expr::CompiledExpr;
use tenantflow_core::pattern::{CondPlan, CondRef, Contiguity, PatternPlan, RefFunc, SkipStrategy};
use tenantflow_core::Value;

use crate::Aggregates;

/// An event a partial match holds, in its key's slab.
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    /// Order of the event within its key (event time, then arrival).
    id: u64,
    time: i64,
    row: Vec<Value>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Partial {
    step: u16,
    count: u32,
    /// The last event was ignored here: only taking (or ignoring) may follow, not proceeding.
    ignoring: bool,
    start_id: u64,
    start_time: i64,
    /// (step, slab slot) of each event taken, in order.
    events: Vec<(u16, u32)>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct KeyState {
    /// Tenant, then the key fields.
    key: Vec<Value>,
    slab: Vec<Option<Stored>>,
    free: Vec<u32>,
    partials: Vec<Partial>,
    /// Matches waiting for every partial match that started before them to end (skip
    /// strategies other than no_skip, as Flink's NFA: a match is emitted only once no earlier
    /// start can still produce one).
    completed: Vec<Partial>,
    next_id: u64,
    /// The deadline a timer is registered for (`i64::MAX`: none).
    timer: i64,
    /// Partial and completed matches of this key in `Cep::partial_count` and `Cep::blocked`.
    #[serde(skip)]
    counted: (usize, usize),
}

impl KeyState {
    fn store(&mut self, id: u64, time: i64, row: Vec<Value>) -> u32 {
        let s = Some(Stored { id, time, row });
        match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = s;
                i
            }
            None => {
                self.slab.push(s);
                (self.slab.len() - 1) as u32
            }
        }
    }

    fn get(&self, slot: u32) -> &Stored {
        // Slots in a partial match are live by construction (`collect` keeps them).
        static MISSING: Stored = Stored { id: 0, time: 0, row: Vec::new() };
        let stored = self.slab.get(slot as usize).and_then(Option::as_ref);
        debug_assert!(stored.is_some(), "partial match holds a freed event");
        stored.unwrap_or(&MISSING)
    }

    /// Frees the events no partial match holds any more.
    fn collect(&mut self, live: &mut Vec<bool>) {
        live.clear();
        live.resize(self.slab.len(), false);
        for p in self.partials.iter().chain(&self.completed) {
            for &(_, s) in &p.events {
                live[s as usize] = true;
            }
        }
        for (i, used) in live.iter().enumerate() {
            if !used && self.slab[i].is_some() {
                self.slab[i] = None;
                self.free.push(i as u32);
            }
        }
    }
}

/// A compiled step condition.
struct Cond {
    expr: CompiledExpr,
    refs: Vec<CondRef>,
}

impl Cond {
    fn compile(plan: &Option<CondPlan>) -> Option<Cond> {
        let p = plan.as_ref()?;
        Some(Cond { expr: p.compile()?, refs: p.refs.clone() })
    }
}

enum Branch {
    Take(usize, u32),
    Ignore(usize, u32),
}

/// Counters for the job's statistics.
#[derive(Default, Clone, Copy, Debug, Serialize, Deserialize)]
pub struct CepCounts {
    pub matches: u64,
    pub timeouts: u64,
    /// Partial matches dropped because their key reached `max_partial_matches`.
    pub dropped: u64,
}

/// The compiled pattern: what a partial match does with an event.
struct Nfa {
    plan: PatternPlan,
    conds: Vec<Option<Cond>>,
    untils: Vec<Option<Cond>>,
}

/// One worker's pattern state: every key it owns, and the events waiting for the watermark.
pub struct Cep {
    nfa: Nfa,
    plan: PatternPlan,
    measures: Vec<(Option<usize>, Aggregates)>,
    /// Tenant position, then the key positions.
    key_pos: Vec<usize>,
    timeouts_field: bool,
    /// Key ids by the key's values, which live in the key's state only (not twice).
    keys: HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    states: Vec<KeyState>,
    free_keys: Vec<u32>,
    /// Events waiting for the watermark, in the order they will be taken: time, then the
    /// row's values (so equal times never depend on arrival order), then arrival.
    pending: BTreeSet<(i64, Vec<Value>, u64)>,
    arrivals: u64,
    timers: BinaryHeap<Reverse<(i64, u32)>>,
    pub counts: CepCounts,
    partial_count: usize,
    /// Completed matches held back (`KeyState::completed`).
    blocked: usize,
    /// The last finite watermark `advance` saw: held-back matches are emitted no earlier.
    floor: i64,
    // Buffers kept across events.
    scratch: Vec<Value>,
    branches: Vec<Branch>,
    live: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
pub struct CepSnapshot {
    keys: Vec<KeyState>,
    pending: Vec<(i64, Vec<Value>, u64)>,
    arrivals: u64,
    counts: CepCounts,
    floor: i64,
}

#[derive(Serialize)]
pub struct CepSnapshotRef<'a> {
    keys: Vec<&'a KeyState>,
    pending: Vec<&'a (i64, Vec<Value>, u64)>,
    arrivals: u64,
    counts: CepCounts,
    floor: i64,
}

impl Cep {
    pub fn new(plan: &PatternPlan, tenant_pos: usize) -> Cep {
        let measures =
            plan.measures.iter().map(|m| (m.step, Aggregates::compile(std::slice::from_ref(&m.agg), &plan.measure_schema))).collect();
        Cep {
            nfa: Nfa {
                conds: plan.steps.iter().map(|s| Cond::compile(&s.cond)).collect(),
                untils: plan.steps.iter().map(|s| Cond::compile(&s.until)).collect(),
                plan: plan.clone(),
            },
            measures,
            key_pos: std::iter::once(tenant_pos).chain(plan.key_pos.iter().copied()).collect(),
            timeouts_field: plan.timeouts,
            plan: plan.clone(),
            keys: HashTable::new(),
            hasher: foldhash::fast::FixedState::default(),
            states: Vec::new(),
            free_keys: Vec::new(),
            pending: BTreeSet::new(),
            arrivals: 0,
            timers: BinaryHeap::new(),
            counts: CepCounts::default(),
            partial_count: 0,
            blocked: 0,
            floor: i64::MIN,
            scratch: Vec::new(),
            branches: Vec::new(),
            live: Vec::new(),
        }
    }

    /// Buffers an event until the watermark passes its time.
    pub fn insert(&mut self, time: i64, row: Vec<Value>) {
        self.arrivals += 1;
        self.pending.insert((time, row, self.arrivals));
    }

    /// The earliest time this store may still emit at: its first waiting event or timer.
    pub fn next_time(&mut self) -> Option<i64> {
        self.drop_stale_timers();
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let event = self.pending.first().map(|(t, ..)| *t);
        let held = (self.blocked > 0).then_some(self.floor);
        [timer, event, held].into_iter().flatten().min()
    }

    /// Active partial matches, over all keys.
    pub fn partial_matches(&self) -> usize {
        self.partial_count
    }

    /// Takes every waiting event before `upto` in time order, then fires the timers at or
    /// before it (the watermark: no event before `upto` can come any more). `emit(at, row)`
    /// receives each output row (tenant, keys, match_start, match_end, [timed_out], measures)
    /// with the event time it belongs to.
    pub fn advance(&mut self, upto: i64, emit: &mut dyn FnMut(i64, Vec<Value>)) {
        if upto < i64::MAX {
            self.floor = self.floor.max(upto);
        }
        while self.pending.first().is_some_and(|(t, ..)| *t < upto) {
            let Some((time, row, _)) = self.pending.pop_first() else { break };
            self.on_event(time, row, emit);
        }
        while let Some(&Reverse((at, kid))) = self.timers.peek() {
            if at > upto {
                break;
            }
            self.timers.pop();
            let Some(ks) = self.states.get_mut(kid as usize) else { continue };
            if ks.timer != at {
                continue;
            }
            ks.timer = i64::MAX;
            self.expire(kid, at, emit);
            self.settle(kid);
        }
        // The input has ended: no partial match can complete any more, so nothing holds the
        // completed ones back.
        if upto == i64::MAX && self.blocked > 0 {
            for kid in 0..self.states.len() as u32 {
                if !self.states[kid as usize].completed.is_empty() {
                    let mut ks = std::mem::take(&mut self.states[kid as usize]);
                    ks.partials.clear();
                    let at = self.floor;
                    self.emit_matches(&mut ks, Vec::new(), at, emit);
                    self.states[kid as usize] = ks;
                    self.settle(kid);
                }
            }
        }
    }

    fn drop_stale_timers(&mut self) {
        while let Some(&Reverse((at, kid))) = self.timers.peek() {
            if self.states.get(kid as usize).is_some_and(|ks| ks.timer == at) {
                break;
            }
            self.timers.pop();
        }
    }

    fn key_id(&mut self, row: &[Value]) -> u32 {
        self.scratch.clear();
        self.scratch.extend(self.key_pos.iter().map(|&p| row[p].clone()));
        let hash = self.hasher.hash_one(&self.scratch);
        let (states, scratch) = (&self.states, &self.scratch);
        if let Some(&k) = self.keys.find(hash, |&k| states[k as usize].key == *scratch) {
            return k;
        }
        let ks = KeyState { key: self.scratch.clone(), timer: i64::MAX, ..KeyState::default() };
        let id = match self.free_keys.pop() {
            Some(i) => {
                self.states[i as usize] = ks;
                i
            }
            None => {
                self.states.push(ks);
                (self.states.len() - 1) as u32
            }
        };
        let (states, hasher) = (&self.states, &self.hasher);
        self.keys.insert_unique(hash, id, |&k| hasher.hash_one(&states[k as usize].key));
        id
    }

    fn on_event(&mut self, time: i64, row: Vec<Value>, emit: &mut dyn FnMut(i64, Vec<Value>)) {
        let kid = self.key_id(&row);
        self.expire(kid, time, emit);
        let mut ks = std::mem::take(&mut self.states[kid as usize]);
        let id = ks.next_id;
        ks.next_id += 1;
        let slot = ks.store(id, time, row);
        let old = std::mem::take(&mut ks.partials);
        let fresh = Partial { step: 0, count: 0, ignoring: false, start_id: id, start_time: time, events: Vec::new() };
        let mut next = Vec::with_capacity(old.len() + 1);
        let mut found = Vec::new();
        for p in old.iter().chain(std::iter::once(&fresh)) {
            self.nfa.advance_partial(&ks, p, slot, &mut next, &mut found, &mut self.scratch, &mut self.branches);
        }
        ks.partials = next;
        self.normalize(&mut ks);
        self.emit_matches(&mut ks, found, time, emit);
        self.states[kid as usize] = ks;
        self.settle(kid);
    }

    /// Drops identical partial matches (they would produce identical matches) and the oldest
    /// ones beyond the cap.
    fn normalize(&mut self, ks: &mut KeyState) {
        if ks.partials.len() > 1 {
            ks.partials.sort_unstable();
            ks.partials.dedup();
        }
        let cap = self.plan.max_partials;
        if ks.partials.len() > cap {
            ks.partials.sort_by_key(|p| Reverse(p.start_id));
            self.counts.dropped += (ks.partials.len() - cap) as u64;
            ks.partials.truncate(cap);
        }
    }

    /// Times out the key's partial matches whose `within` has passed at `now`, deadline by
    /// deadline, each with what it emits at its own deadline (so the result does not depend on
    /// whether an event or the timer noticed it).
    fn expire(&mut self, kid: u32, now: i64, emit: &mut dyn FnMut(i64, Vec<Value>)) {
        let Some(within) = self.plan.within else { return };
        let deadline = |p: &Partial| p.start_time.saturating_add(within);
        if !self.states[kid as usize].partials.iter().any(|p| deadline(p) <= now) {
            return;
        }
        let mut ks = std::mem::take(&mut self.states[kid as usize]);
        while let Some(at) = ks.partials.iter().map(deadline).filter(|d| *d <= now).min() {
            let (expired, kept): (Vec<Partial>, Vec<Partial>) = ks.partials.drain(..).partition(|p| deadline(p) == at);
            ks.partials = kept;
            let (complete, mut timed_out): (Vec<Partial>, Vec<Partial>) =
                expired.into_iter().partition(|p| self.nfa.completes_at_timeout(p));
            if self.timeouts_field {
                timed_out.sort_by(|a, b| a.events.cmp(&b.events));
                timed_out.dedup_by(|a, b| a.events == b.events);
                for p in &timed_out {
                    let row = self.output_row(&ks, p, true);
                    self.counts.timeouts += 1;
                    emit(at, row);
                }
            }
            self.emit_matches(&mut ks, complete, at, emit);
        }
        // `settle` runs after the event (or timer) that caused this.
        self.states[kid as usize] = ks;
    }

    /// Emits matches oldest first at `at`, each pruning the others and the key's partial
    /// matches as the after-match strategy says. With a skip strategy a match waits (in
    /// `completed`) while a partial match that started before it is alive.
    fn emit_matches(&mut self, ks: &mut KeyState, found: Vec<Partial>, at: i64, emit: &mut dyn FnMut(i64, Vec<Value>)) {
        if found.is_empty() && ks.completed.is_empty() {
            return;
        }
        let order = |a: &Partial, b: &Partial| {
            a.start_id.cmp(&b.start_id).then(b.events.len().cmp(&a.events.len())).then_with(|| a.events.cmp(&b.events))
        };
        let mut queue = std::mem::take(&mut ks.completed);
        queue.extend(found);
        queue.sort_by(order);
        queue.dedup_by(|a, b| a.events == b.events);
        let hold = self.plan.skip != SkipStrategy::NoSkip;
        let mut queue = std::collections::VecDeque::from(queue);
        while let Some(m) = queue.front() {
            if hold && ks.partials.iter().any(|p| p.start_id < m.start_id) {
                break;
            }
            let Some(m) = queue.pop_front() else { break };
            let row = self.output_row(ks, &m, false);
            self.counts.matches += 1;
            emit(at, row);
            let ids = |step: Option<usize>| {
                m.events.iter().filter(move |(s, _)| step.is_none_or(|st| *s as usize == st)).map(|&(_, slot)| ks.get(slot).id)
            };
            // (id, equal): prune what started at `id`, or before it.
            let rule: Option<(u64, bool)> = match self.plan.skip {
                SkipStrategy::NoSkip => None,
                SkipStrategy::ToNext => Some((m.start_id, true)),
                SkipStrategy::PastLastEvent => ids(None).max().map(|id| (id + 1, false)),
                SkipStrategy::ToFirst(s) => ids(Some(s)).min().map(|id| (id, false)),
                SkipStrategy::ToLast(s) => ids(Some(s)).max().map(|id| (id, false)),
            };
            let Some((id, equal)) = rule else { continue };
            let prune = |start: u64| if equal { start == id } else { start < id };
            ks.partials.retain(|p| !prune(p.start_id));
            queue.retain(|p| !prune(p.start_id));
        }
        ks.completed = queue.into();
    }

    /// Puts a key's state in order after an event or timer: the counts, freed events, the
    /// timer, and the key itself once it holds nothing.
    fn settle(&mut self, kid: u32) {
        let mut ks = std::mem::take(&mut self.states[kid as usize]);
        let now = (ks.partials.len(), ks.completed.len());
        self.partial_count = self.partial_count + now.0 - ks.counted.0;
        self.blocked = self.blocked + now.1 - ks.counted.1;
        ks.counted = now;
        if ks.partials.is_empty() && ks.completed.is_empty() {
            if let Ok(entry) = self.keys.find_entry(self.hasher.hash_one(&ks.key), |&k| k == kid) {
                entry.remove();
            }
            self.free_keys.push(kid);
            self.states[kid as usize] = KeyState { timer: i64::MAX, ..KeyState::default() };
            return;
        }
        ks.collect(&mut self.live);
        if let Some(within) = self.plan.within {
            let deadline = ks.partials.iter().map(|p| p.start_time).min().unwrap_or(i64::MAX).saturating_add(within);
            if deadline < ks.timer {
                ks.timer = deadline;
                self.timers.push(Reverse((deadline, kid)));
            }
        }
        self.states[kid as usize] = ks;
    }

    /// tenant, keys, match_start, match_end, [timed_out], measures.
    fn output_row(&self, ks: &KeyState, p: &Partial, timed_out: bool) -> Vec<Value> {
        let mut row = Vec::with_capacity(ks.key.len() + 3 + self.measures.len());
        row.extend(ks.key.iter().cloned());
        let first = p.events.first().map(|&(_, s)| ks.get(s).time);
        let last = p.events.last().map(|&(_, s)| ks.get(s).time);
        row.push(first.map_or(Value::Null, Value::Ts));
        row.push(last.map_or(Value::Null, Value::Ts));
        if self.timeouts_field {
            row.push(Value::Bool(timed_out));
        }
        for (step, aggs) in &self.measures {
            let mut accs = aggs.init();
            for &(s, slot) in &p.events {
                let e = ks.get(slot);
                if step.is_none_or(|st| st == s as usize) && !e.row.is_empty() {
                    aggs.update(&mut accs, &e.row, e.time);
                }
            }
            aggs.finish(&accs, &mut row);
        }
        row
    }

    /// The store's state for a checkpoint, without copying it.
    pub fn snapshot_ref(&self) -> CepSnapshotRef<'_> {
        CepSnapshotRef {
            keys: self.states.iter().filter(|k| !k.partials.is_empty() || !k.completed.is_empty()).collect(),
            pending: self.pending.iter().collect(),
            arrivals: self.arrivals,
            counts: self.counts,
            floor: self.floor,
        }
    }

    /// Loads a checkpoint; returns the earliest time the store may emit at.
    pub fn restore(&mut self, snap: CepSnapshot) -> Option<i64> {
        self.keys.clear();
        self.states.clear();
        self.free_keys.clear();
        self.timers.clear();
        self.partial_count = 0;
        self.blocked = 0;
        for mut ks in snap.keys {
            let kid = self.states.len() as u32;
            self.partial_count += ks.partials.len();
            self.blocked += ks.completed.len();
            ks.counted = (ks.partials.len(), ks.completed.len());
            if let Some(within) = self.plan.within {
                let deadline = ks.partials.iter().map(|p| p.start_time).min().unwrap_or(i64::MAX).saturating_add(within);
                ks.timer = deadline;
                self.timers.push(Reverse((deadline, kid)));
            } else {
                ks.timer = i64::MAX;
            }
            let hash = self.hasher.hash_one(&ks.key);
            self.states.push(ks);
            let (states, hasher) = (&self.states, &self.hasher);
            self.keys.insert_unique(hash, kid, |&k| hasher.hash_one(&states[k as usize].key));
        }
        self.pending = snap.pending.into_iter().collect();
        self.arrivals = snap.arrivals;
        self.counts = snap.counts;
        self.floor = snap.floor;
        self.next_time()
    }
}

impl Nfa {
    /// A partial match waiting out a final `-> !x`: its timeout completes it.
    fn completes_at_timeout(&self, p: &Partial) -> bool {
        let steps = &self.plan.steps;
        let n = steps.len();
        if !steps[n - 1].negated {
            return false;
        }
        let i = p.step as usize;
        i == n - 1 || (!p.ignoring && p.count >= steps[i].min && steps[i + 1..n - 1].iter().all(|s| !s.negated && s.min == 0))
    }

    /// One partial match on one event: its branches go to `next`, its completed matches to
    /// `found`.
    #[allow(clippy::too_many_arguments)]
    fn advance_partial(
        &self,
        ks: &KeyState,
        p: &Partial,
        slot: u32,
        next: &mut Vec<Partial>,
        found: &mut Vec<Partial>,
        scratch: &mut Vec<Value>,
        branches: &mut Vec<Branch>,
    ) {
        branches.clear();
        let ev = &ks.get(slot).row;
        let stopped = self.explore(ks, p, p.step as usize, p.count, p.ignoring, ev, branches, scratch);
        if !stopped {
            let stored = ks.get(slot);
            for b in branches.drain(..) {
                match b {
                    Branch::Take(i, c) => {
                        let mut q = p.clone();
                        if q.events.is_empty() {
                            q.start_id = stored.id;
                            q.start_time = stored.time;
                        }
                        q.events.push((i as u16, slot));
                        q.step = i as u16;
                        q.count = c;
                        q.ignoring = false;
                        if self.reaches_final(ks, &q, ev, scratch) {
                            found.push(q.clone());
                        }
                        let s = &self.plan.steps[i];
                        if c < s.max || i + 1 < self.plan.steps.len() {
                            next.push(q);
                        }
                    }
                    // An empty partial match is the start state, which every event gets anyway.
                    Branch::Ignore(i, c) if !p.events.is_empty() => {
                        let mut q = p.clone();
                        q.step = i as u16;
                        q.count = c;
                        q.ignoring = true;
                        next.push(q);
                    }
                    Branch::Ignore(..) => {}
                }
            }
        }
    }

    /// The branches of a partial match at step `i` with `c` events there, for event `ev`.
    /// Returns true when a negation kills the partial match (all its branches).
    #[allow(clippy::too_many_arguments)]
    fn explore(
        &self,
        ks: &KeyState,
        p: &Partial,
        i: usize,
        c: u32,
        ignoring: bool,
        ev: &[Value],
        out: &mut Vec<Branch>,
        scratch: &mut Vec<Value>,
    ) -> bool {
        let n = self.plan.steps.len();
        if i == n {
            // Reached the end without taking this event: matches end with a taken event.
            return false;
        }
        if c == 0 && i > 0 && self.greedy_loop_before_takes(ks, p, i, ev, scratch) {
            return false;
        }
        let s = &self.plan.steps[i];
        if s.negated {
            let hit = self.test(self.conds[i].as_ref(), ks, p, i, ev, scratch);
            if s.outer == Contiguity::Strict {
                return hit || self.explore(ks, p, i + 1, 0, false, ev, out, scratch);
            }
            if i == n - 1 {
                // `-> !x` at the end: wait for `within` to pass without x.
                if !hit {
                    out.push(Branch::Ignore(i, 0));
                }
                return hit;
            }
            // The next step checks this negation on every event until it takes one.
            return self.explore(ks, p, i + 1, 0, false, ev, out, scratch);
        }
        if c == 0 {
            let mut j = i;
            while j > 0 && self.plan.steps[j - 1].negated && self.plan.steps[j - 1].outer == Contiguity::Relaxed {
                j -= 1;
                if self.test(self.conds[j].as_ref(), ks, p, j, ev, scratch) {
                    return true;
                }
            }
        }
        let s = &self.plan.steps[i];
        let (min, max, greedy, outer, inner) = (s.min, s.max, s.greedy, s.outer, s.inner);
        let until = self.untils[i].is_some() && self.test(self.untils[i].as_ref(), ks, p, i, ev, scratch);
        let hit = self.test(self.conds[i].as_ref(), ks, p, i, ev, scratch);
        let take = c < max && hit && !until;
        if take {
            out.push(Branch::Take(i, c + 1));
        }
        if !ignoring && c >= min && !(greedy && take) && self.explore(ks, p, i + 1, 0, false, ev, out, scratch) {
            return true;
        }
        let skips = |k: Contiguity| match k {
            Contiguity::Strict => false,
            Contiguity::Relaxed => !hit,
            Contiguity::Any => true,
        };
        // Before the loop's first event `until` only keeps the event from being taken; Flink
        // applies it to the take edge and to the edges inside the loop, not to the first
        // state's ignore edge.
        let ignore = if c == 0 { i > 0 && skips(outer) } else { !until && c < max && skips(inner) };
        if ignore {
            out.push(Branch::Ignore(i, c));
        }
        false
    }

    /// Whether a partial match that just took `ev` is complete: every later step may be left
    /// out (Flink evaluates those steps' proceed conditions on the same event).
    fn reaches_final(&self, ks: &KeyState, q: &Partial, ev: &[Value], scratch: &mut Vec<Value>) -> bool {
        let steps = &self.plan.steps;
        let (i, c) = (q.step as usize, q.count);
        let s = &steps[i];
        if c < s.min {
            return false;
        }
        if s.greedy && c < s.max && self.take_condition(ks, q, i, ev, scratch) {
            return false;
        }
        let n = steps.len();
        let mut j = i + 1;
        while j < n {
            let sj = &self.plan.steps[j];
            if sj.negated {
                if sj.outer == Contiguity::Relaxed && j < n - 1 {
                    j += 1;
                    continue;
                }
                return false;
            }
            if sj.min > 0 || (sj.greedy && self.take_condition(ks, q, j, ev, scratch)) {
                return false;
            }
            j += 1;
        }
        true
    }

    /// Flink's `updateWithGreedyCondition`: every edge of the state after a greedy loop (take,
    /// ignore, proceed) also requires that the loop's condition is false for the event, whatever
    /// the loop's count. So the step after a greedy loop, before its first event, neither takes
    /// nor skips an event the loop would take, even with the loop at its maximum. Relaxed
    /// negations (`-> !x`) are conditions on that state's edges in Flink, so the rule looks
    /// past them to the loop.
    fn greedy_loop_before_takes(&self, ks: &KeyState, p: &Partial, i: usize, ev: &[Value], scratch: &mut Vec<Value>) -> bool {
        let steps = &self.plan.steps;
        let mut g = i - 1;
        while g > 0 && steps[g].negated && steps[g].outer == Contiguity::Relaxed {
            g -= 1;
        }
        steps[g].greedy && self.take_condition(ks, p, g, ev, scratch)
    }

    fn take_condition(&self, ks: &KeyState, p: &Partial, i: usize, ev: &[Value], scratch: &mut Vec<Value>) -> bool {
        self.test(self.conds[i].as_ref(), ks, p, i, ev, scratch)
            && !(self.untils[i].is_some() && self.test(self.untils[i].as_ref(), ks, p, i, ev, scratch))
    }

    /// Evaluates a step's condition (none: true) for event `ev` as step `me` of `p`.
    #[allow(clippy::too_many_arguments)]
    fn test(&self, cond: Option<&Cond>, ks: &KeyState, p: &Partial, me: usize, ev: &[Value], scratch: &mut Vec<Value>) -> bool {
        let Some(cond) = cond else { return true };
        if cond.refs.is_empty() {
            return cond.expr.eval_bool(ev);
        }
        let row = scratch;
        row.clear();
        row.extend_from_slice(ev);
        row.resize(self.plan.width.max(ev.len()), Value::Null);
        for r in &cond.refs {
            row.push(reference(r, ks, p, me, ev));
        }
        cond.expr.eval_bool(row)
    }
}

/// A value a condition takes from the partial match's events (and the event being tested).
fn reference(r: &CondRef, ks: &KeyState, p: &Partial, me: usize, ev: &[Value]) -> Value {
    let events = p.events.iter().filter(|(s, _)| r.step.is_none_or(|st| st == *s as usize)).map(|&(_, slot)| &ks.get(slot).row);
    let current = r.with_current && r.step.is_none_or(|s| s == me);
    let value = |row: &Vec<Value>| r.pos.and_then(|pos| row.get(pos)).cloned().unwrap_or(Value::Null);
    match r.func {
        RefFunc::Last(n) => events.rev().nth(n).map_or(Value::Null, value),
        RefFunc::First(n) => events.clone().nth(n).map_or(Value::Null, value),
        RefFunc::Count => {
            let counted = |row: &Vec<Value>| r.pos.is_none_or(|pos| row.get(pos).is_some_and(|v| !v.is_null()));
            let n = events.filter(|row| counted(row)).count() + usize::from(current && r.pos.is_none_or(|pos| !ev[pos].is_null()));
            Value::Int(n as i64)
        }
        RefFunc::Sum | RefFunc::Avg => {
            let Some(pos) = r.pos else { return Value::Null };
            let vals = events.filter_map(|row| row.get(pos)).chain(current.then(|| &ev[pos])).filter(|v| !v.is_null());
            let (mut int, mut float, mut n, mut is_float) = (0i64, 0f64, 0usize, false);
            for v in vals {
                n += 1;
                match v {
                    Value::Int(i) => {
                        int = int.wrapping_add(*i);
                        float += *i as f64;
                    }
                    other => {
                        is_float = true;
                        float += other.as_f64().unwrap_or(0.0);
                    }
                }
            }
            match (r.func, n) {
                (_, 0) => Value::Null,
                (RefFunc::Avg, n) => Value::Float(float / n as f64),
                _ if is_float => Value::Float(float),
                _ => Value::Int(int),
            }
        }
        RefFunc::Min | RefFunc::Max => {
            let Some(pos) = r.pos else { return Value::Null };
            let vals = events.filter_map(|row| row.get(pos)).chain(current.then(|| &ev[pos])).filter(|v| !v.is_null());
            let best = if r.func == RefFunc::Min { vals.min() } else { vals.max() };
            best.cloned().unwrap_or(Value::Null)
        }
    }
}
