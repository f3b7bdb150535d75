//! Event-time windows: assigning rows to windows, pre-aggregating per worker, and keeping the
//! merged window state that fires when the watermark passes a window's end.
//!
//! The flow per window step: [`PreAggregator`] (before the exchange, per batch) produces
//! [`Partial`]s; they are exchanged by the hash of (tenant, key); [`WindowStore`] (after the
//! exchange) merges them and emits a result row when a window closes.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use tenantflow_core::job::WindowKind;
use tenantflow_core::Value;

use crate::aggregate::{merge, Acc, Aggregates};

/// Pre-aggregated state of one (tenant, key, window), the unit that crosses the exchange.
#[derive(Clone, Serialize, Deserialize)]
pub struct Partial {
    /// Hash of `key`; routes all windows of one key to one worker.
    pub hash: u64,
    /// Tenant first, then the key fields.
    pub key: Vec<Value>,
    pub start: i64,
    pub end: i64,
    pub accs: Vec<Acc>,
}

/// Hashes a group key the same way everywhere (stable across processes).
#[inline]
pub fn hash_key<'a>(values: impl Iterator<Item = &'a Value>) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x7e4a_9f1d).build_hasher();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

/// Windows containing event time `ts`, as (start, end) pairs.
#[inline]
pub fn assign(kind: WindowKind, ts: i64, mut each: impl FnMut(i64, i64)) {
    match kind {
        WindowKind::Tumbling { size } => {
            let start = ts.div_euclid(size) * size;
            each(start, start + size)
        }
        WindowKind::Sliding { size, slide } => {
            let last = ts.div_euclid(slide) * slide;
            let mut start = last;
            while start > ts - size {
                each(start, start + size);
                start -= slide;
            }
        }
        // A session starts as the event's own [ts, ts + gap); overlapping ones merge.
        WindowKind::Session { gap } => each(ts, ts + gap),
    }
}

/// The end of the last window `ts` belongs to: once the watermark reaches it, the event is late.
///
/// For sessions that is `ts + 1`: an event behind the watermark is late. Judging it by its own
/// `[ts, ts + gap)` instead would let an on-time event reach a session that already fired, and
/// whether it did would depend on batching and thread timing.
#[inline]
pub fn last_end(kind: WindowKind, ts: i64) -> i64 {
    match kind {
        WindowKind::Tumbling { size } => ts.div_euclid(size) * size + size,
        WindowKind::Sliding { slide, size } => ts.div_euclid(slide) * slide + size,
        WindowKind::Session { .. } => ts + 1,
    }
}

struct Slot {
    /// Hash of the key mixed with the window start (or session bucket).
    mixed: u64,
    hash: u64,
    start: i64,
    index: usize,
}

/// Per-worker, per-batch pre-aggregation: rows in, one [`Partial`] per (key, window) out.
pub struct PreAggregator {
    kind: WindowKind,
    table: HashTable<Slot>,
    partials: Vec<Partial>,
    /// Rows counted per partial (each row once, in the first window it went to).
    rows: Vec<u64>,
    /// The last tumbling window computed: consecutive events mostly share it, and this saves
    /// the division of `assign`.
    current: (i64, i64),
}

impl PreAggregator {
    pub fn new(kind: WindowKind) -> PreAggregator {
        PreAggregator { kind, table: HashTable::new(), partials: Vec::new(), rows: Vec::new(), current: (i64::MAX, i64::MIN) }
    }

    /// The end of the last window `ts` belongs to (see [`last_end`]).
    #[inline]
    pub fn last_end(&mut self, ts: i64) -> i64 {
        match self.kind {
            WindowKind::Tumbling { size } => {
                if ts < self.current.0 || ts >= self.current.1 {
                    let start = ts.div_euclid(size) * size;
                    self.current = (start, start + size);
                }
                self.current.1
            }
            kind => last_end(kind, ts),
        }
    }

    /// Adds a row to its windows that end after `min_end` (the others are closed); returns how
    /// many windows it went to. `key_pos` are the row positions of tenant then key fields.
    #[inline]
    pub fn add(&mut self, aggs: &Aggregates, row: &[Value], key_pos: &[usize], ts: i64, min_end: i64) -> usize {
        let hash = hash_key(key_pos.iter().map(|&p| &row[p]));
        match self.kind {
            WindowKind::Tumbling { .. } => {
                let end = self.last_end(ts);
                if end <= min_end {
                    return 0;
                }
                let start = self.current.0;
                self.update(aggs, row, key_pos, ts, hash, start, (start, end), true);
                1
            }
            // Sessions: events in the same `gap`-long bucket are less than `gap` apart, so they
            // surely share a session and can be pre-aggregated together.
            WindowKind::Session { gap } => {
                if last_end(self.kind, ts) <= min_end {
                    return 0;
                }
                self.update(aggs, row, key_pos, ts, hash, ts.div_euclid(gap), (ts, ts + gap), true);
                1
            }
            kind => {
                let mut added = 0;
                assign(kind, ts, |start, end| {
                    if end > min_end {
                        self.update(aggs, row, key_pos, ts, hash, start, (start, end), added == 0);
                        added += 1;
                    }
                });
                added
            }
        }
    }

    /// Adds a row to the partial of (key, slot); creates it if needed.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        aggs: &Aggregates,
        row: &[Value],
        key_pos: &[usize],
        ts: i64,
        hash: u64,
        slot: i64,
        window: (i64, i64),
        count_row: bool,
    ) {
        let mixed = hash ^ (slot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let partials = &mut self.partials;
        let found = self
            .table
            .find(mixed, |s| s.hash == hash && s.start == slot && key_pos.iter().zip(&partials[s.index].key).all(|(&p, v)| row[p] == *v));
        let index = match found {
            Some(s) => s.index,
            None => {
                let index = partials.len();
                let key = key_pos.iter().map(|&p| row[p].clone()).collect();
                partials.push(Partial { hash, key, start: window.0, end: window.1, accs: aggs.init() });
                self.rows.push(0);
                self.table.insert_unique(mixed, Slot { mixed, hash, start: slot, index }, |s| s.mixed);
                index
            }
        };
        if count_row {
            self.rows[index] += 1;
        }
        let p = &mut partials[index];
        if let WindowKind::Session { .. } = self.kind {
            p.start = p.start.min(window.0);
            p.end = p.end.max(window.1);
        }
        aggs.update(&mut p.accs, row, ts);
    }

    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }

    /// Takes the partials built so far, each with the number of rows counted in it (a row
    /// that went to several windows is counted once), so callers can count rows per tenant
    /// without a lookup per row.
    pub fn drain(&mut self) -> impl Iterator<Item = (Partial, u64)> + '_ {
        self.table.clear();
        self.partials.drain(..).zip(self.rows.drain(..))
    }
}

#[derive(Serialize, Deserialize)]
struct Window {
    start: i64,
    end: i64,
    accs: Vec<Acc>,
    fired: bool,
    /// Updated by late data since it fired.
    dirty: bool,
    /// When the next result is due: the end, or (late update) when the update arrived. The
    /// caller holds a capability for exactly this time.
    due: i64,
}

#[derive(Serialize, Deserialize)]
struct Group {
    hash: u64,
    key: Vec<Value>,
    windows: Vec<Window>,
}

/// A closed window's result, ready to become an output row.
pub struct Fired<'a> {
    pub key: &'a [Value],
    pub start: i64,
    pub end: i64,
    pub accs: &'a [Acc],
}

/// Merged window state of the keys one worker owns.
pub struct WindowStore {
    kind: WindowKind,
    allowed_lateness: i64,
    index: HashTable<usize>,
    groups: Vec<Group>,
    free: Vec<usize>,
    /// time -> groups with a window to fire (or purge) at that time.
    timers: BTreeMap<i64, Vec<usize>>,
}

impl WindowStore {
    pub fn new(kind: WindowKind, allowed_lateness: i64) -> WindowStore {
        WindowStore { kind, allowed_lateness, index: HashTable::new(), groups: Vec::new(), free: Vec::new(), timers: BTreeMap::new() }
    }

    /// Merges a partial that arrived at dataflow time `now`; returns the time at which the
    /// affected window must be looked at again (the caller holds a capability for it).
    pub fn insert(&mut self, p: Partial, now: i64) -> i64 {
        let groups = &mut self.groups;
        let gi = match self.index.find(p.hash, |&g| groups[g].key == p.key) {
            Some(&g) => g,
            None => {
                let group = Group { hash: p.hash, key: p.key, windows: Vec::new() };
                let g = match self.free.pop() {
                    Some(g) => {
                        groups[g] = group;
                        g
                    }
                    None => {
                        groups.push(group);
                        groups.len() - 1
                    }
                };
                self.index.insert_unique(p.hash, g, |&g| groups[g].hash);
                g
            }
        };
        let windows = &mut self.groups[gi].windows;
        let due = match self.kind {
            WindowKind::Session { .. } => {
                // Merge every session that overlaps [start, end): events less than `gap` apart
                // share a session. Sessions that fired and still accept late updates merge too.
                let (mut start, mut end, mut accs) = (p.start, p.end, p.accs);
                let mut fired = false;
                let mut i = 0;
                while i < windows.len() {
                    let w = &windows[i];
                    if w.start < end && start < w.end {
                        let w = windows.swap_remove(i);
                        start = start.min(w.start);
                        end = end.max(w.end);
                        fired |= w.fired;
                        let mut base = w.accs;
                        merge(&mut base, accs);
                        accs = base;
                    } else {
                        i += 1;
                    }
                }
                let due = end.max(now);
                windows.push(Window { start, end, accs, fired, dirty: fired, due });
                due
            }
            _ => match windows.iter_mut().find(|w| w.start == p.start) {
                Some(w) => {
                    merge(&mut w.accs, p.accs);
                    if w.fired {
                        w.dirty = true;
                        w.due = w.end.max(now);
                    }
                    w.due
                }
                None => {
                    let due = p.end.max(now);
                    windows.push(Window { start: p.start, end: p.end, accs: p.accs, fired: false, dirty: false, due });
                    due
                }
            },
        };
        let list = self.timers.entry(due).or_default();
        if list.last() != Some(&gi) {
            list.push(gi);
        }
        due
    }

    /// The earliest time with pending work.
    pub fn next_timer(&self) -> Option<i64> {
        self.timers.keys().next().copied()
    }

    /// Fires timers at or before `upto`: windows whose result is due at or before `upto` emit it
    /// (late-updated ones emit again); windows past their allowed lateness are dropped.
    /// `emit` gets the output time, the window's `due` time, for which `insert` returned it.
    pub fn fire(&mut self, upto: i64, mut emit: impl FnMut(i64, Fired<'_>)) {
        let lateness = self.allowed_lateness;
        while let Some((&at, _)) = self.timers.first_key_value() {
            if at > upto {
                break;
            }
            let Some(groups) = self.timers.remove(&at) else { break };
            for gi in groups {
                let mut purge_at: Option<i64> = None;
                let group = &mut self.groups[gi];
                // A timer may outlive its group (freed and perhaps reused): it then only finds
                // windows that are not due yet, or due, both of which are handled correctly.
                group.windows.sort_by_key(|w| w.start);
                for w in &mut group.windows {
                    if (!w.fired || w.dirty) && w.due <= upto {
                        emit(w.due, Fired { key: &group.key, start: w.start, end: w.end, accs: &w.accs });
                        w.fired = true;
                        w.dirty = false;
                    }
                    if w.fired && lateness > 0 {
                        let p = w.end.saturating_add(lateness);
                        purge_at = Some(purge_at.map_or(p, |q| q.min(p)));
                    }
                }
                group.windows.retain(|w| !(w.fired && !w.dirty && w.end.saturating_add(lateness) <= upto));
                if let Some(p) = purge_at.filter(|&p| p > upto) {
                    self.timers.entry(p).or_default().push(gi);
                }
                if group.windows.is_empty() && !group.key.is_empty() {
                    group.key = Vec::new();
                    if let Ok(entry) = self.index.find_entry(group.hash, |&g| g == gi) {
                        entry.remove();
                    }
                    self.free.push(gi);
                }
            }
        }
    }

    /// The store's state, for a checkpoint.
    /// The state for a checkpoint: serializes exactly as a [`StoreSnapshot`] does, straight
    /// from the store (copying 1M keys first cost as much as serializing them).
    pub fn snapshot_ref(&self) -> SnapshotRef<'_> {
        SnapshotRef(&self.groups)
    }

    /// Replaces the state with a checkpoint's; returns the due times the caller must hold
    /// capabilities for.
    pub fn restore(&mut self, snapshot: StoreSnapshot) -> Vec<i64> {
        self.index = HashTable::new();
        self.groups.clear();
        self.free.clear();
        self.timers.clear();
        let mut due = Vec::new();
        for (hash, key, windows) in snapshot.groups {
            let gi = self.groups.len();
            for w in &windows {
                if !w.fired || w.dirty {
                    due.push(w.due);
                    self.timers.entry(w.due).or_default().push(gi);
                } else if self.allowed_lateness > 0 {
                    self.timers.entry(w.end.saturating_add(self.allowed_lateness)).or_default().push(gi);
                }
            }
            self.groups.push(Group { hash, key, windows });
            let groups = &self.groups;
            self.index.insert_unique(hash, gi, |&g| groups[g].hash);
        }
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Number of open windows (for metrics and tests).
    pub fn open_windows(&self) -> usize {
        self.groups.iter().map(|g| g.windows.len()).sum()
    }
}

/// A borrowed [`StoreSnapshot`]: see [`WindowStore::snapshot_ref`].
pub struct SnapshotRef<'a>(&'a [Group]);

impl Serialize for SnapshotRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        // Freed groups (empty key) are left out, as `restore` expects.
        struct Groups<'a>(&'a [Group]);
        impl Serialize for Groups<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let live = || self.0.iter().filter(|g| !g.key.is_empty());
                let mut seq = serializer.serialize_seq(Some(live().count()))?;
                for g in live() {
                    seq.serialize_element(&(g.hash, &g.key, &g.windows))?;
                }
                seq.end()
            }
        }
        let mut s = serializer.serialize_struct("StoreSnapshot", 1)?;
        s.serialize_field("groups", &Groups(self.0))?;
        s.end()
    }
}

/// A [`WindowStore`]'s state in a checkpoint: per group its hash, key and windows.
#[derive(Serialize, Deserialize)]
pub struct StoreSnapshot {
    groups: Vec<(u64, Vec<Value>, Vec<Window>)>,
}
