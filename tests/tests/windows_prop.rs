//! Property tests: random out-of-order event streams through every window type and every
//! aggregate, with 1, 2 and 4 workers, against a plain reference computation written here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use proptest::prelude::*;
use serde_json::Value as Json;
use tenantflow_core::time::format_rfc3339;
use tenantflow_tests::{read_jsonl, run_job};

#[derive(Clone, Debug)]
struct Event {
    tenant: u8,
    k: u8,
    u: u8,
    v: i64,
    /// Event time in milliseconds.
    ts: i64,
}

#[derive(Clone, Copy, Debug)]
enum Win {
    Tumbling(i64),
    Sliding(i64, i64),
    Session(i64),
}

impl Win {
    fn toml(self) -> String {
        match self {
            Win::Tumbling(s) => format!("{{ type = \"tumbling\", size = \"{s}ms\" }}"),
            Win::Sliding(s, l) => format!("{{ type = \"sliding\", size = \"{s}ms\", slide = \"{l}ms\" }}"),
            Win::Session(g) => format!("{{ type = \"session\", gap = \"{g}ms\" }}"),
        }
    }

    /// Windows (start, end) in ms that a timestamp belongs to (sessions handled separately).
    fn assign(self, ts: i64) -> Vec<(i64, i64)> {
        match self {
            Win::Tumbling(s) => {
                let start = ts.div_euclid(s) * s;
                vec![(start, start + s)]
            }
            Win::Sliding(size, slide) => {
                let mut out = Vec::new();
                let mut start = ts.div_euclid(slide) * slide;
                while start > ts - size {
                    out.push((start, start + size));
                    start -= slide;
                }
                out
            }
            Win::Session(g) => vec![(ts, ts + g)],
        }
    }
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0u8..3, 0u8..3, 0u8..8, -50i64..1000, 0i64..500), 1..160).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (tenant, k, u, v, delay))| Event { tenant, k, u, v, ts: 1_767_225_600_000 + i as i64 * 10 - delay })
            .collect()
    })
}

fn write_events(dir: &Path, events: &[Event]) {
    let lines: Vec<String> =
        events.iter().map(|e| format!(r#"{{"tenant":"t{}","k":{},"u":{},"v":{},"ts":{}}}"#, e.tenant, e.k, e.u, e.v, e.ts)).collect();
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").expect("write input");
}

fn job(dir: &Path, win: Win, time: &str) -> String {
    format!(
        r#"
[source]
type = "file"
path = "{input}"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
k = "int"
u = "int"
v = "int"
ts = "timestamp"

[time]
field = "ts"
{time}

[[steps]]
window = {window}
key_by = ["k"]
[steps.aggregates]
n = "count(*)"
s = "sum(v)"
mn = "min(v)"
mx = "max(v)"
a = "avg(v)"
d = "count_distinct(u)"
f = "first(v)"
l = "last(v)"
tk = "top_k(u, 2)"
hd = "approx_count_distinct(u)"
p = "p50(v)"

[[sinks]]
type = "file"
path = "{out}"

[dead_letter]
path = "{dir}/dead.jsonl"
"#,
        input = dir.join("in.jsonl").display(),
        out = dir.join("out.jsonl").display(),
        dir = dir.display(),
        window = win.toml(),
    )
}

/// Reference aggregates of one window.
#[derive(Default, Debug)]
struct Acc {
    events: Vec<(i64, i64, u8)>, // (ts, v, u)
}

fn expected_row(acc: &Acc) -> BTreeMap<&'static str, Json> {
    let n = acc.events.len() as i64;
    let s: i64 = acc.events.iter().map(|e| e.1).sum();
    let mut by_ts = acc.events.clone();
    by_ts.sort();
    let distinct: BTreeSet<u8> = acc.events.iter().map(|e| e.2).collect();
    let mut counts: HashMap<u8, u64> = HashMap::new();
    for e in &acc.events {
        *counts.entry(e.2).or_default() += 1;
    }
    let mut top: Vec<(u8, u64)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let tk: Vec<Json> = top.iter().take(2).map(|(u, c)| serde_json::json!({"value": u, "count": c})).collect();
    let mut m = BTreeMap::new();
    m.insert("n", Json::from(n));
    m.insert("s", Json::from(s));
    m.insert("mn", Json::from(acc.events.iter().map(|e| e.1).min().unwrap_or(0)));
    m.insert("mx", Json::from(acc.events.iter().map(|e| e.1).max().unwrap_or(0)));
    m.insert("a", Json::from(s as f64 / n as f64));
    m.insert("d", Json::from(distinct.len()));
    m.insert("f", Json::from(by_ts.first().map_or(0, |e| e.1)));
    m.insert("l", Json::from(by_ts.last().map_or(0, |e| e.1)));
    m.insert("tk", Json::from(Json::Array(tk).to_string()));
    m
}

type Key = (String, i64, String, String);

/// Reference windows: (tenant, k, start, end) -> events, for events accepted into windows.
fn reference(events: &[(Event, Vec<(i64, i64)>)], win: Win) -> BTreeMap<Key, Acc> {
    let mut out: BTreeMap<Key, Acc> = BTreeMap::new();
    let fmt = |ms: i64| format_rfc3339(ms * 1000);
    if let Win::Session(gap) = win {
        let mut per_key: BTreeMap<(u8, u8), Vec<&Event>> = BTreeMap::new();
        for (e, _) in events {
            per_key.entry((e.tenant, e.k)).or_default().push(e);
        }
        for ((t, k), mut evs) in per_key {
            evs.sort_by_key(|e| e.ts);
            let mut sessions: Vec<(i64, i64, Vec<&Event>)> = Vec::new();
            for e in evs {
                match sessions.last_mut() {
                    // Events less than `gap` apart share a session.
                    Some((_, last, group)) if e.ts < *last + gap => {
                        *last = (*last).max(e.ts);
                        group.push(e);
                    }
                    _ => sessions.push((e.ts, e.ts, vec![e])),
                }
            }
            for (start, last, group) in sessions {
                let acc = out.entry((format!("t{t}"), k as i64, fmt(start), fmt(last + gap))).or_default();
                acc.events.extend(group.iter().map(|e| (e.ts, e.v, e.u)));
            }
        }
        return out;
    }
    for (e, wins) in events {
        for &(s, end) in wins {
            out.entry((format!("t{}", e.tenant), e.k as i64, fmt(s), fmt(end))).or_default().events.push((e.ts, e.v, e.u));
        }
    }
    out
}

/// Session rows under `late_policy = "update"`: a late update re-emits its session, possibly
/// merged with others and so with other bounds; a row replaces every earlier row of its key
/// that it overlaps. What is left is the final sessions.
fn final_sessions(dir: &Path) -> BTreeMap<Key, Json> {
    // (tenant, k) -> the sessions emitted last: (start, end, row).
    type Sessions = Vec<(i64, i64, Json)>;
    let mut current: BTreeMap<(String, i64), Sessions> = BTreeMap::new();
    let us = |row: &Json, f: &str| tenantflow_core::time::parse_timestamp(row[f].as_str().unwrap_or_default()).unwrap_or(i64::MIN);
    for row in read_jsonl(&dir.join("out.jsonl")) {
        let key = (row["tenant"].as_str().unwrap_or_default().to_string(), row["k"].as_i64().unwrap_or(-1));
        let (start, end) = (us(&row, "window_start"), us(&row, "window_end"));
        let sessions = current.entry(key).or_default();
        sessions.retain(|(s, e, _)| !(*s < end && start < *e));
        sessions.push((start, end, row));
    }
    let mut out = BTreeMap::new();
    for ((tenant, k), sessions) in current {
        for (_, _, row) in sessions {
            let bound = |f: &str| row[f].as_str().unwrap_or_default().to_string();
            out.insert((tenant.clone(), k, bound("window_start"), bound("window_end")), row);
        }
    }
    out
}

/// Output rows keyed by window; later rows for the same window replace earlier ones.
fn actual(dir: &Path) -> BTreeMap<Key, Json> {
    let mut out = BTreeMap::new();
    for row in read_jsonl(&dir.join("out.jsonl")) {
        let key = (
            row["tenant"].as_str().unwrap_or_default().to_string(),
            row["k"].as_i64().unwrap_or(-1),
            row["window_start"].as_str().unwrap_or_default().to_string(),
            row["window_end"].as_str().unwrap_or_default().to_string(),
        );
        out.insert(key, row);
    }
    out
}

fn compare(expected: &BTreeMap<Key, Acc>, got: &BTreeMap<Key, Json>) -> Result<(), TestCaseError> {
    let ek: Vec<&Key> = expected.keys().collect();
    let gk: Vec<&Key> = got.keys().collect();
    prop_assert_eq!(ek, gk, "windows differ");
    for (key, acc) in expected {
        let row = &got[key];
        for (name, want) in expected_row(acc) {
            let have = &row[name];
            if name == "a" {
                let (w, h) = (want.as_f64().unwrap_or(f64::NAN), have.as_f64().unwrap_or(f64::NAN));
                prop_assert!((w - h).abs() < 1e-9, "{key:?} avg: want {w}, got {h}");
            } else {
                prop_assert_eq!(&want, have, "{:?} aggregate {}", key, name);
            }
        }
        // Approximate aggregates: HyperLogLog and DDSketch within their error bounds.
        let d = row["d"].as_i64().unwrap_or(0) as f64;
        let hd = row["hd"].as_i64().unwrap_or(-1) as f64;
        prop_assert!((hd - d).abs() <= 0.05 * d + 1.0, "{key:?} approx distinct {hd} vs {d}");
        let mut vs: Vec<i64> = acc.events.iter().map(|e| e.1).collect();
        vs.sort();
        let (lo, hi) = (vs[(vs.len() - 1) / 2] as f64, vs[vs.len() / 2] as f64);
        let p = row["p"].as_f64().unwrap_or(f64::NAN);
        let tol = 0.02 * lo.abs().max(hi.abs()) + 1e-6;
        prop_assert!(p >= lo.min(hi) - tol && p <= lo.max(hi) + tol, "{key:?} p50 {p} not near [{lo}, {hi}]");
    }
    Ok(())
}

fn check_in_order_bound(events: Vec<Event>, win: Win) -> Result<(), TestCaseError> {
    let assigned: Vec<(Event, Vec<(i64, i64)>)> = events.iter().map(|e| (e.clone(), win.assign(e.ts))).collect();
    let expected = reference(&assigned, win);
    for workers in [1, 2, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_events(dir.path(), &events);
        // Disorder is below 500 ms, so with a 1 s bound nothing is late whatever the split.
        let report = run_job(&job(dir.path(), win, "max_out_of_orderness = \"1s\""), workers);
        prop_assert_eq!(report.late_dropped, 0);
        compare(&expected, &actual(dir.path())).map_err(|e| TestCaseError::fail(format!("workers = {workers}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tumbling_windows(events in events(), size in prop::sample::select(vec![100i64, 250, 1000])) {
        check_in_order_bound(events, Win::Tumbling(size))?;
    }

    #[test]
    fn sliding_windows(events in events(), shape in prop::sample::select(vec![(300i64, 100i64), (1000, 250), (200, 200)])) {
        check_in_order_bound(events, Win::Sliding(shape.0, shape.1))?;
    }

    #[test]
    fn session_windows(events in events(), gap in prop::sample::select(vec![15i64, 50, 300])) {
        check_in_order_bound(events, Win::Session(gap))?;
    }

    /// Session windows with `late_policy = "update"` (one worker): an event is kept when its
    /// time is at or after the watermark before it minus `allowed_lateness` (docs/jobs.md), and
    /// the final sessions are those of all kept events, late ones merged into whatever they
    /// touch (every such session is still held then, so the result cannot depend on timing).
    #[test]
    fn session_late_updates(events in events(), gap in prop::sample::select(vec![15i64, 40, 120]),
                            lateness in prop::sample::select(vec![1i64, 60, 250])) {
        let ooo = 100;
        let (mut wm, mut max_ts) = (i64::MIN, i64::MIN);
        let (mut kept, mut late, mut updates) = (Vec::new(), 0u64, 0u64);
        for e in &events {
            let before = wm;
            max_ts = max_ts.max(e.ts);
            wm = wm.max(max_ts - ooo);
            if e.ts >= before.saturating_sub(lateness) {
                updates += u64::from(e.ts < before);
                kept.push((e.clone(), Vec::new()));
            } else {
                late += 1;
            }
        }
        let expected = reference(&kept, Win::Session(gap));
        let dir = tempfile::tempdir().expect("tempdir");
        write_events(dir.path(), &events);
        let time = format!("max_out_of_orderness = \"{ooo}ms\"\nlate_policy = \"update\"\nallowed_lateness = \"{lateness}ms\"");
        let report = run_job(&job(dir.path(), Win::Session(gap), &time), 1);
        compare(&expected, &final_sessions(dir.path()))?;
        prop_assert_eq!(report.late_dropped, late);
        prop_assert_eq!(report.late_updates, updates);
    }

    /// Late events under each policy (one worker, so the watermark sequence is the file order).
    /// Sessions under `update` are `session_late_updates`: a late event can re-shape a session
    /// that was already emitted.
    #[test]
    fn late_events(events in events(), policy in prop::sample::select(vec!["drop", "side_output", "update"]),
                   win in prop::sample::select(vec![Win::Tumbling(100), Win::Sliding(200, 100), Win::Session(40)])) {
        prop_assume!(!(matches!(win, Win::Session(_)) && policy == "update"));
        let ooo = 100; // ms: some of the up-to-500 ms delays arrive late
        let lateness = 200;
        let mut wm = i64::MIN;
        let mut max_ts = i64::MIN;
        let mut accepted = Vec::new();
        let mut late = 0u64;
        for e in &events {
            let before = wm;
            max_ts = max_ts.max(e.ts);
            wm = wm.max(max_ts - ooo);
            let min_end = if policy == "update" { before.saturating_sub(lateness) } else { before };
            // The end of the last window an event belongs to; for sessions the event itself.
            let wins: Vec<(i64, i64)> = match win {
                Win::Session(_) => win.assign(e.ts).into_iter().filter(|_| e.ts + 1 > min_end).collect(),
                _ => win.assign(e.ts).into_iter().filter(|w| w.1 > min_end).collect(),
            };
            if wins.is_empty() {
                late += 1;
            } else {
                accepted.push((e.clone(), wins));
            }
        }
        let expected = reference(&accepted, win);
        let dir = tempfile::tempdir().expect("tempdir");
        write_events(dir.path(), &events);
        let time = format!(
            "max_out_of_orderness = \"{ooo}ms\"\nlate_policy = \"{policy}\"\nallowed_lateness = \"{}\"\nlate_output = \"{}\"",
            if policy == "update" { format!("{lateness}ms") } else { "0s".into() },
            dir.path().join("late.jsonl").display()
        );
        let report = run_job(&job(dir.path(), win, &time), 1);
        compare(&expected, &actual(dir.path()))?;
        let side = read_jsonl(&dir.path().join("late.jsonl")).len() as u64;
        match policy {
            "side_output" => {
                prop_assert_eq!(side, late);
                prop_assert_eq!(report.late_side_output, late);
            }
            _ => {
                prop_assert_eq!(side, 0);
                prop_assert_eq!(report.late_dropped, late);
            }
        }
        let per_tenant: u64 = report.tenants.values().map(|t| t.late).sum();
        prop_assert_eq!(per_tenant, late);
    }
}
