//! The manager against a real HTTP receiver, driven by a manual clock.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tenantflow_alerts::{spawn, Alert, AlertError, Manager, ManualClock, Silences, SystemClock};
use tenantflow_core::alerting::{AlertingSpec, InhibitRuleSpec, ReceiverKind, ReceiverSpec};

fn manager(spec: &AlertingSpec, dir: &Path, clock: &Arc<ManualClock>) -> Manager {
    manager_with(spec, dir, clock, Silences::in_memory())
}

fn manager_with(spec: &AlertingSpec, dir: &Path, clock: &Arc<ManualClock>, silences: Silences) -> Manager {
    Manager::new(spec, "job1", silences, clock.clone(), dir).expect("manager")
}

fn alert(name: &str, pairs: &[(&str, &str)], starts_at: i64) -> Alert {
    let mut labels = vec![("alertname", name)];
    labels.extend_from_slice(pairs);
    Alert::new(labels, starts_at)
}

/// `label` values of the alerts in a webhook body, sorted.
fn alert_values(body: &Value, label: &str) -> Vec<String> {
    let mut v: Vec<String> =
        body["alerts"].as_array().expect("alerts").iter().map(|a| a["labels"][label].as_str().unwrap_or_default().to_string()).collect();
    v.sort();
    v
}

fn at(clock: &ManualClock, m: &mut Manager, t: i64) {
    clock.set(t);
    m.tick();
}

#[test]
fn group_wait_collects_alerts_into_one_notification() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &["alertname"], 30, 300, 4 * 3600), vec![webhook("hook", &server.url("/hook"), false, None)]);
    let state = tempdir("wait");
    let mut m = manager(&spec, &state, &clock);
    m.push(alert("HighLatency", &[("instance", "a")], T0));
    at(&clock, &mut m, T0 + 5 * S);
    m.push(alert("HighLatency", &[("instance", "b")], T0 + 5 * S));
    for t in [5, 10, 29] {
        at(&clock, &mut m, T0 + t * S);
    }
    assert_eq!(server.count(), 0, "nothing before group_wait");
    at(&clock, &mut m, T0 + 30 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let body = reqs[0].json();
    assert_eq!(alert_values(&body, "instance"), ["a", "b"]);
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "hook");
    assert_eq!(body["truncatedAlerts"], 0);
    assert_eq!(body["externalURL"], "");
    assert_eq!(body["groupLabels"], serde_json::json!({"alertname": "HighLatency"}));
    assert_eq!(body["commonLabels"], serde_json::json!({"alertname": "HighLatency"}));
    assert_eq!(body["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(body["alerts"][0]["fingerprint"].as_str().map(str::len), Some(16));
    assert_eq!(reqs[0].headers.get("content-type").map(String::as_str), Some("application/json"));
    assert!(reqs[0].headers.contains_key("idempotency-key"));
    assert!(!reqs[0].headers.contains_key("x-tenantflow-signature"), "no secret, no signature");
    assert_eq!(m.stats().receivers["hook"].sent, 1);
}

#[test]
fn new_alert_in_notified_group_waits_for_group_interval() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &["alertname"], 10, 60, 4 * 3600), vec![webhook("hook", &server.url("/"), false, None)]);
    let state = tempdir("interval");
    let mut m = manager(&spec, &state, &clock);
    m.push(alert("A", &[("instance", "a")], T0));
    at(&clock, &mut m, T0 + 10 * S);
    assert_eq!(server.count(), 1);
    at(&clock, &mut m, T0 + 20 * S);
    m.push(alert("A", &[("instance", "b")], T0 + 20 * S));
    for t in [20, 40, 69] {
        at(&clock, &mut m, T0 + t * S);
    }
    assert_eq!(server.count(), 1, "not before the next group_interval boundary");
    at(&clock, &mut m, T0 + 70 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(alert_values(&reqs[1].json(), "instance"), ["a", "b"]);
}

#[test]
fn unchanged_group_is_repeated_only_after_repeat_interval() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &["alertname"], 10, 60, 300), vec![webhook("hook", &server.url("/"), false, None)]);
    let state = tempdir("repeat");
    let mut m = manager(&spec, &state, &clock);
    m.push(alert("A", &[], T0));
    // Flushes at 10, 70, 130, 190, 250: only the first sends.
    for t in (10..=250).step_by(60) {
        at(&clock, &mut m, T0 + t * S);
    }
    assert_eq!(server.count(), 1);
    at(&clock, &mut m, T0 + 310 * S);
    assert_eq!(server.count(), 2, "repeated once repeat_interval passed");
    for t in (370..=550).step_by(60) {
        at(&clock, &mut m, T0 + t * S);
    }
    assert_eq!(server.count(), 2);
    at(&clock, &mut m, T0 + 610 * S);
    assert_eq!(server.count(), 3);
}

/// Alert `a` resolves by its `ends_at`, alert `b` by `resolve_timeout` (50 s).
fn resolve_run(send_resolved: bool) -> Vec<Value> {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let mut spec = spec(root("hook", &["alertname"], 10, 60, 3600), vec![webhook("hook", &server.url("/"), send_resolved, None)]);
    spec.resolve_timeout = 50 * S;
    let state = tempdir("resolved");
    let mut m = manager(&spec, &state, &clock);
    m.push(alert("A", &[("instance", "a")], T0));
    m.push(alert("A", &[("instance", "b")], T0));
    at(&clock, &mut m, T0 + 10 * S);
    at(&clock, &mut m, T0 + 20 * S);
    let mut a = alert("A", &[("instance", "a")], T0);
    a.ends_at = Some(T0 + 20 * S);
    m.push(a);
    for t in [20, 70, 130, 190] {
        at(&clock, &mut m, T0 + t * S);
    }
    assert_eq!(m.stats().alerts_firing, 0);
    server.requests().iter().map(|r| r.json()).collect()
}

#[test]
fn resolved_notification_only_when_the_receiver_wants_it() {
    let sent = resolve_run(true);
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0]["status"], "firing");
    assert_eq!(sent[1]["status"], "resolved");
    assert_eq!(alert_values(&sent[1], "instance"), ["a", "b"]);
    let ends: Vec<&str> = sent[1]["alerts"].as_array().expect("alerts").iter().map(|a| a["endsAt"].as_str().unwrap_or_default()).collect();
    assert!(ends.contains(&"2023-11-14T22:13:40.000Z"), "a ends when it said: {ends:?}");
    assert!(ends.contains(&"2023-11-14T22:14:10.000Z"), "b ends at its last update + resolve_timeout: {ends:?}");

    let sent = resolve_run(false);
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["status"], "firing");
}

#[test]
fn inhibition_mutes_targets_with_equal_labels_while_the_source_fires() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let mut spec = spec(root("hook", &["..."], 10, 60, 3600), vec![webhook("hook", &server.url("/"), false, None)]);
    spec.inhibit_rules =
        vec![InhibitRuleSpec { source: vec![m("severity=critical")], target: vec![m("severity=warning")], equal: vec!["tenant".into()] }];
    let state = tempdir("inhibit");
    let mut mgr = manager(&spec, &state, &clock);
    mgr.push(alert("Down", &[("severity", "critical"), ("tenant", "acme")], T0));
    mgr.push(alert("Slow", &[("severity", "warning"), ("tenant", "acme")], T0));
    mgr.push(alert("Slow", &[("severity", "warning"), ("tenant", "globex")], T0));
    at(&clock, &mut mgr, T0 + 10 * S);
    let mut got: Vec<(String, String)> = server
        .requests()
        .iter()
        .map(|r| {
            let b = r.json();
            (alert_values(&b, "alertname").join(","), alert_values(&b, "tenant").join(","))
        })
        .collect();
    got.sort();
    assert_eq!(got, [("Down".into(), "acme".into()), ("Slow".into(), "globex".into())]);
    assert_eq!(mgr.stats().inhibited, 1);

    // The source resolves: the target notifies at its next flush.
    at(&clock, &mut mgr, T0 + 20 * S);
    let mut down = alert("Down", &[("severity", "critical"), ("tenant", "acme")], T0);
    down.ends_at = Some(T0 + 20 * S);
    mgr.push(down);
    at(&clock, &mut mgr, T0 + 70 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let last = reqs[2].json();
    assert_eq!((alert_values(&last, "alertname"), alert_values(&last, "tenant")), (vec!["Slow".to_string()], vec!["acme".to_string()]));
    assert_eq!(mgr.stats().inhibited, 0);
}

#[test]
fn silences_mute_until_expired_and_persist() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempdir("silence");
    let path = dir.join("silences.json");
    let silences = Silences::open(Some(path.clone())).expect("open");
    let sil = silences.add(vec![m("tenant=acme")], T0, T0 + 3600 * S, "ops", "maintenance").expect("add");
    let spec = spec(root("hook", &["..."], 10, 60, 3600), vec![webhook("hook", &server.url("/"), false, None)]);
    let mut mgr = manager_with(&spec, &dir, &clock, silences.clone());
    mgr.push(alert("Slow", &[("tenant", "acme")], T0));
    mgr.push(alert("Slow", &[("tenant", "globex")], T0));
    at(&clock, &mut mgr, T0 + 10 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(alert_values(&reqs[0].json(), "tenant"), ["globex"]);
    assert_eq!(mgr.stats().silenced, 1);

    // Persisted: another process (or a restart) sees the same silence.
    let reloaded = Silences::open(Some(path.clone())).expect("reload");
    assert_eq!(reloaded.list(), vec![sil.clone()]);
    let acme = alert("Slow", &[("tenant", "acme")], T0).labels;
    assert_eq!(reloaded.silenced_by(&acme, T0 + 15 * S), Some(sil.id.clone()));

    at(&clock, &mut mgr, T0 + 20 * S);
    silences.expire(&sil.id, T0 + 20 * S).expect("expire");
    at(&clock, &mut mgr, T0 + 69 * S);
    assert_eq!(server.count(), 1);
    at(&clock, &mut mgr, T0 + 70 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(alert_values(&reqs[1].json(), "tenant"), ["acme"]);
    let reloaded = Silences::open(Some(path)).expect("reload");
    assert_eq!(reloaded.get(&sil.id).map(|s| s.ends_at), Some(T0 + 20 * S));
    assert_eq!(reloaded.silenced_by(&acme, T0 + 30 * S), None);
}

#[test]
fn routes_choose_receivers_and_continue_matching_sends_to_two() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let mut r = root("default", &["alertname", "tenant"], 10, 60, 3600);
    let mut pager = route(Some("pager"), &["severity=critical"]);
    pager.continue_matching = true;
    let mut acme = route(Some("acme"), &["tenant=~\"acme.*\""]);
    acme.routes = vec![route(Some("acme-warn"), &["severity=warning"])];
    r.routes = vec![pager, acme];
    let receivers =
        ["default", "pager", "acme", "acme-warn"].iter().map(|n| webhook(n, &server.url(&format!("/{n}")), false, None)).collect();
    let state = tempdir("routing");
    let mut mgr = manager(&spec(r, receivers), &state, &clock);
    mgr.push(alert("Down", &[("severity", "critical"), ("tenant", "acme-eu")], T0));
    mgr.push(alert("Slow", &[("severity", "warning"), ("tenant", "acme-eu")], T0));
    mgr.push(alert("Info", &[("severity", "info"), ("tenant", "globex")], T0));
    mgr.push(alert("Down", &[("severity", "critical"), ("tenant", "globex")], T0));
    at(&clock, &mut mgr, T0 + 10 * S);
    let mut got: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            let b = r.json();
            assert_eq!(format!("/{}", b["receiver"].as_str().unwrap_or_default()), r.path);
            format!("{} {}/{}", r.path, alert_values(&b, "alertname").join(","), alert_values(&b, "tenant").join(","))
        })
        .collect();
    got.sort();
    assert_eq!(got, ["/acme Down/acme-eu", "/acme-warn Slow/acme-eu", "/default Info/globex", "/pager Down/acme-eu", "/pager Down/globex"]);
}

#[test]
fn the_same_alert_pushed_often_is_one_alert() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &["alertname"], 10, 60, 3600), vec![webhook("hook", &server.url("/"), false, None)]);
    let state = tempdir("dedup");
    let mut mgr = manager(&spec, &state, &clock);
    for i in 0..100 {
        clock.set(T0 + i * 50_000);
        mgr.push(alert("A", &[("tenant", "acme")], T0 + i * 50_000).annotate("summary", format!("value {i}")));
    }
    at(&clock, &mut mgr, T0 + 10 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let body = reqs[0].json();
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["alerts"][0]["annotations"]["summary"], "value 99", "the newest annotations");
    assert_eq!(body["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z", "the first start");
    assert_eq!(mgr.stats().alerts_received, 100);
    assert_eq!(mgr.stats().alerts_firing, 1);
}

#[test]
fn an_alert_firing_again_after_it_resolved_is_a_new_firing() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &[], 10, 60, 3600), vec![webhook("hook", &server.url("/"), true, None)]);
    let state = tempdir("refire");
    let mut mgr = manager(&spec, &state, &clock);
    mgr.push(alert("A", &[], T0));
    at(&clock, &mut mgr, T0 + 10 * S);
    let mut resolved = alert("A", &[], T0);
    resolved.ends_at = Some(T0 + 15 * S);
    mgr.push(resolved);
    at(&clock, &mut mgr, T0 + 30 * S);
    mgr.push(alert("A", &[], T0 + 30 * S));
    // As in Alertmanager, the notification log compares fingerprints: resolved and firing again
    // between two flushes is no news.
    at(&clock, &mut mgr, T0 + 70 * S);
    assert_eq!(server.count(), 1);
    mgr.push(alert("B", &[], T0 + 80 * S));
    at(&clock, &mut mgr, T0 + 130 * S);
    let sent: Vec<Value> = server.requests().iter().map(|r| r.json()).collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[1]["status"], "firing");
    let a = sent[1]["alerts"].as_array().expect("alerts").iter().find(|a| a["labels"]["alertname"] == "A").cloned().expect("A");
    assert_eq!(a["startsAt"], "2023-11-14T22:13:50.000Z", "the new firing replaced the resolved one");
    assert_eq!(a["status"], "firing");
}

#[test]
fn retryable_failures_are_retried_with_backoff_and_delivered_once() {
    let server = HttpServer::start(200);
    server.answer(&[500; 5]);
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempdir("retry");
    let spec = spec(root("hook", &["alertname"], 10, 600, 3600), vec![webhook("hook", &server.url("/"), false, Some("s3cret"))]);
    let mut mgr = manager(&spec, &dir, &clock);
    mgr.push(alert("A", &[], T0));
    let mut last = T0 + 10 * S;
    at(&clock, &mut mgr, last);
    assert_eq!(server.count(), 1);
    for attempt in 1..=5u32 {
        let base = S << (attempt - 1);
        at(&clock, &mut mgr, last + base - 1000);
        assert_eq!(server.count(), attempt as usize, "no retry before {base} µs");
        last += base + base / 10;
        at(&clock, &mut mgr, last);
        assert_eq!(server.count(), attempt as usize + 1, "retry {attempt} within backoff + 10% jitter");
    }
    for t in [60, 300, 590] {
        at(&clock, &mut mgr, last + t * S);
    }
    let reqs = server.requests();
    assert_eq!(reqs.len(), 6, "delivered once, to the 200");
    let key = reqs[0].headers.get("idempotency-key").cloned().expect("idempotency key");
    for r in &reqs {
        assert_eq!(r.body, reqs[0].body);
        assert_eq!(r.headers.get("idempotency-key"), Some(&key));
        let sig = r.headers.get("x-tenantflow-signature").expect("signature");
        let hex = sig.strip_prefix("sha256=").expect("sha256=");
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
        let verify = |key: &[u8]| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("key");
            mac.update(&r.body);
            mac.verify_slice(&bytes).is_ok()
        };
        assert!(verify(b"s3cret"), "the signature verifies against the exact body");
        assert!(!verify(b"other"));
    }
    let stats = mgr.stats();
    assert_eq!((stats.receivers["hook"].sent, stats.receivers["hook"].retried, stats.receivers["hook"].failed), (1, 5, 0));
    assert_eq!(stats.outbox_size, 0);
    assert_eq!(std::fs::read_dir(dir.join("outbox")).expect("outbox").count(), 0);
}

#[test]
fn refused_notifications_are_dropped_but_429_is_retried() {
    let server = HttpServer::start(200);
    server.answer(&[429, 400]);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &["alertname"], 10, 600, 3600), vec![webhook("hook", &server.url("/"), false, None)]);
    let state = tempdir("refused");
    let mut mgr = manager(&spec, &state, &clock);
    mgr.push(alert("A", &[], T0));
    at(&clock, &mut mgr, T0 + 10 * S);
    at(&clock, &mut mgr, T0 + 12 * S);
    assert_eq!(server.count(), 2);
    for t in [20, 60, 300] {
        at(&clock, &mut mgr, T0 + t * S);
    }
    assert_eq!(server.count(), 2, "a 400 is not retried");
    let stats = mgr.stats();
    assert_eq!((stats.receivers["hook"].sent, stats.receivers["hook"].retried, stats.receivers["hook"].failed), (0, 1, 1));
    assert_eq!(stats.outbox_size, 0);
}

#[test]
fn a_restarted_manager_delivers_its_outbox_once() {
    let port = free_port();
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempdir("crash");
    let spec = spec(root("hook", &["alertname"], 10, 60, 3600), vec![webhook("hook", &format!("http://127.0.0.1:{port}/"), false, None)]);
    {
        let mut mgr = manager(&spec, &dir, &clock);
        mgr.push(alert("A", &[], T0));
        at(&clock, &mut mgr, T0 + 10 * S);
        assert_eq!(mgr.stats().receivers["hook"].retried, 1, "the receiver is down");
        assert_eq!(mgr.stats().outbox_size, 1);
    }
    assert_eq!(std::fs::read_dir(dir.join("outbox")).expect("outbox").count(), 1);
    let server = HttpServer::start_on(port, 200);
    let mut mgr = manager(&spec, &dir, &clock);
    assert_eq!(mgr.stats().outbox_size, 1);
    at(&clock, &mut mgr, T0 + 20 * S);
    assert_eq!(server.count(), 1);
    for t in [30, 100, 1000] {
        at(&clock, &mut mgr, T0 + t * S);
    }
    assert_eq!(server.count(), 1);
    assert_eq!(alert_values(&server.requests()[0].json(), "alertname"), ["A"]);
    assert_eq!(std::fs::read_dir(dir.join("outbox")).expect("outbox").count(), 0);
    drop(mgr);
    assert_eq!(manager(&spec, &dir, &clock).stats().outbox_size, 0);
}

#[test]
fn a_restarted_manager_does_not_notify_again_within_repeat_interval() {
    let server = HttpServer::start(200);
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempdir("restart");
    let spec = spec(root("hook", &["alertname"], 10, 60, 300), vec![webhook("hook", &server.url("/"), false, None)]);
    let alerts = || [alert("A", &[("instance", "a")], T0), alert("A", &[("instance", "b")], T0)];
    {
        let mut mgr = manager(&spec, &dir, &clock);
        alerts().into_iter().for_each(|a| mgr.push(a));
        at(&clock, &mut mgr, T0 + 10 * S);
        assert_eq!(server.count(), 1);
    }
    let mut mgr = manager(&spec, &dir, &clock);
    for t in (40..=280).step_by(60) {
        clock.set(T0 + t * S);
        alerts().into_iter().for_each(|a| mgr.push(a));
        mgr.tick();
    }
    assert_eq!(server.count(), 1, "none is sent twice for the same group and interval");
    // A new alert in the group is news, though.
    mgr.push(alert("A", &[("instance", "c")], T0 + 280 * S));
    at(&clock, &mut mgr, T0 + 340 * S);
    assert_eq!(server.count(), 2);
    assert_eq!(alert_values(&server.requests()[1].json(), "instance"), ["a", "b", "c"]);
}

#[test]
fn spawned_manager_sends_from_its_thread_and_flushes_on_drop() {
    let server = HttpServer::start(200);
    let spec = spec(root("hook", &["alertname"], 0, 60, 3600), vec![webhook("hook", &server.url("/"), false, None)]);
    let dir = tempdir("spawn");
    let mgr = Manager::new(&spec, "job1", Silences::in_memory(), Arc::new(SystemClock), &dir).expect("manager");
    let handle = spawn(mgr);
    let now = tenantflow_core::time::now_micros();
    handle.push(alert("A", &[], now));
    handle.push(alert("A", &[], now));
    drop(handle);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].json()["alerts"].as_array().map(Vec::len), Some(1));
}

#[test]
fn invalid_configurations_are_refused() {
    let clock: Arc<dyn tenantflow_alerts::Clock> = Arc::new(ManualClock::new(T0));
    let dir = tempdir("config");
    let try_spec = |s: AlertingSpec| Manager::new(&s, "job1", Silences::in_memory(), clock.clone(), &dir).err().map(|e| e.to_string());
    let ok = || spec(root("hook", &[], 10, 60, 300), vec![webhook("hook", "http://127.0.0.1:9/x", false, None)]);
    assert_eq!(try_spec(ok()), None);
    let mut s = ok();
    s.route.routes = vec![route(Some("nope"), &["a=b"])];
    assert!(try_spec(s).is_some_and(|e| e.contains("`nope`")));
    let mut s = ok();
    s.route.receiver = None;
    assert!(try_spec(s).is_some_and(|e| e.contains("root route")));
    assert!(try_spec(spec(root("hook", &[], 10, 60, 300), vec![webhook("hook", "ftp://x/", false, None)])).is_some());
    assert!(try_spec(spec(root("hook", &[], 10, 60, 300), vec![webhook("hook", "not a url", false, None)])).is_some());
    let email = |smtp: &str| ReceiverSpec {
        name: "hook".into(),
        send_resolved: false,
        kind: ReceiverKind::Email {
            smtp: smtp.into(),
            from: "tf@example.com".into(),
            to: vec!["a@example.com".into()],
            username: None,
            password: None,
            starttls: false,
        },
    };
    assert_eq!(try_spec(spec(root("hook", &[], 10, 60, 300), vec![email("mail.example.com:25")])), None);
    assert!(try_spec(spec(root("hook", &[], 10, 60, 300), vec![email("mail.example.com")])).is_some_and(|e| e.contains("host:port")));
    let redis = |url: &str| ReceiverSpec {
        name: "hook".into(),
        send_resolved: false,
        kind: ReceiverKind::RedisPubSub { url: url.into(), channel: "c".into() },
    };
    assert_eq!(try_spec(spec(root("hook", &[], 10, 60, 300), vec![redis("redis://127.0.0.1:6379/")])), None);
    assert!(try_spec(spec(root("hook", &[], 10, 60, 300), vec![redis("http://x")])).is_some());
    let e = Manager::new(&ok(), "job1", Silences::in_memory(), clock.clone(), Path::new("/proc/no/such/dir")).err();
    assert!(matches!(e, Some(AlertError::Io { .. })), "{e:?}");
}

/// A notification stuck behind a failing receiver is superseded by the group's next one, which
/// carries the resolutions the stuck one held (their alerts have left the group).
#[test]
fn a_superseding_notification_keeps_the_resolutions_of_the_one_it_replaces() {
    let server = HttpServer::start(200);
    server.answer(&[503, 503, 503]);
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("hook", &["alertname"], 10, 60, 3600), vec![webhook("hook", &server.url("/"), true, None)]);
    let state = tempdir("supersede");
    let mut m = manager(&spec, &state, &clock);
    m.push(alert("A", &[("instance", "a")], T0));
    m.push(alert("A", &[("instance", "b")], T0));
    at(&clock, &mut m, T0 + 10 * S);
    let mut b = alert("A", &[("instance", "b")], T0);
    b.ends_at = Some(T0 + 20 * S);
    m.push(b);
    at(&clock, &mut m, T0 + 20 * S);
    at(&clock, &mut m, T0 + 70 * S);
    m.push(alert("A", &[("instance", "c")], T0 + 80 * S));
    at(&clock, &mut m, T0 + 130 * S);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4, "three refusals, then one delivery");
    let last = reqs[3].json();
    let status: Vec<(String, String)> = last["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| (a["labels"]["instance"].as_str().unwrap_or_default().to_string(), a["status"].as_str().unwrap_or_default().to_string()))
        .collect();
    let mut status = status;
    status.sort();
    assert_eq!(
        status,
        [("a".to_string(), "firing".to_string()), ("b".to_string(), "resolved".to_string()), ("c".to_string(), "firing".to_string())]
    );
}

/// A receiver down for a day: the notification is given up (counted as failed) instead of
/// being retried forever.
#[test]
fn a_notification_undelivered_for_a_day_is_given_up() {
    let clock = Arc::new(ManualClock::new(T0));
    let url = format!("http://127.0.0.1:{}/", free_port());
    let spec = spec(root("hook", &["alertname"], 10, 60, 3600), vec![webhook("hook", &url, true, None)]);
    let state = tempdir("stale");
    let mut m = manager(&spec, &state, &clock);
    m.push(alert("A", &[("instance", "a")], T0));
    at(&clock, &mut m, T0 + 10 * S);
    assert_eq!(m.stats().outbox_size, 1);
    // Resolved by resolve_timeout (1 h here): the group's resolved notification supersedes it.
    at(&clock, &mut m, T0 + 3700 * S);
    at(&clock, &mut m, T0 + 23 * 3600 * S);
    assert_eq!(m.stats().outbox_size, 1, "still retried after 23 h");
    at(&clock, &mut m, T0 + 3700 * S + 24 * 3600 * S);
    let stats = m.stats();
    assert_eq!((stats.outbox_size, stats.receivers["hook"].failed), (0, 1), "{stats:?}");
}
