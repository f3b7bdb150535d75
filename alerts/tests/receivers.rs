//! Slack, PagerDuty, email and Redis receivers against real servers.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tenantflow_alerts::{Alert, AlertError, Manager, ManualClock, Silences};
use tenantflow_core::alerting::{AlertingSpec, ReceiverKind, ReceiverSpec};

fn manager(spec: &AlertingSpec, dir: &Path, clock: &Arc<ManualClock>) -> Manager {
    Manager::new(spec, "job1", Silences::in_memory(), clock.clone(), dir).expect("manager")
}

fn at(clock: &ManualClock, m: &mut Manager, t: i64) {
    clock.set(t);
    m.tick();
}

fn critical(ends_at: Option<i64>) -> Alert {
    let mut a = Alert::new([("alertname", "Down"), ("severity", "critical"), ("tenant", "acme")], T0).annotate("summary", "acme is down");
    a.ends_at = ends_at;
    a
}

#[test]
fn slack_and_pagerduty_payloads_follow_their_formats() {
    let slack = HttpServer::start(200);
    let pd = HttpServer::start(202);
    let clock = Arc::new(ManualClock::new(T0));
    let mut r = root("slack", &["alertname"], 10, 60, 3600);
    let mut to_slack = route(Some("slack"), &["alertname=~\".+\""]);
    to_slack.continue_matching = true;
    r.routes = vec![to_slack, route(Some("pd"), &["alertname=~\".+\""])];
    let receivers = vec![
        ReceiverSpec {
            name: "slack".into(),
            send_resolved: true,
            kind: ReceiverKind::Slack { url: slack.url("/services/T/B/X").into(), channel: Some("#alerts".into()), timeout: 2 * S },
        },
        ReceiverSpec {
            name: "pd".into(),
            send_resolved: true,
            kind: ReceiverKind::PagerDuty { url: pd.url("/v2/enqueue"), routing_key: "R0UTING".into(), timeout: 2 * S },
        },
    ];
    let state = tempdir("slackpd");
    let mut mgr = manager(&spec(r, receivers), &state, &clock);
    mgr.push(critical(None));
    at(&clock, &mut mgr, T0 + 10 * S);

    let s = slack.requests();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].method.as_str(), s[0].path.as_str()), ("POST", "/services/T/B/X"));
    let body = s[0].json();
    assert_eq!(body["channel"], "#alerts");
    let att = &body["attachments"][0];
    assert_eq!(att["color"], "danger");
    let title = att["title"].as_str().expect("title");
    assert!(title.starts_with("[FIRING:1] Down"), "{title}");
    assert_eq!(body["text"], att["title"]);
    assert_eq!(att["fallback"], att["title"]);
    assert!(att["text"].as_str().is_some_and(|t| t.contains("acme is down") && t.contains("tenant=acme")), "{att}");

    let p = pd.requests();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "/v2/enqueue");
    let trigger = p[0].json();
    assert_eq!(trigger["routing_key"], "R0UTING");
    assert_eq!(trigger["event_action"], "trigger");
    let dedup = trigger["dedup_key"].as_str().expect("dedup_key").to_string();
    assert!(!dedup.is_empty());
    let payload = &trigger["payload"];
    assert!(payload["summary"].as_str().is_some_and(|t| t.starts_with("[FIRING:1] Down") && t.chars().count() <= 1024));
    assert_eq!(payload["source"], "tenantflow/job1");
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["timestamp"], "2023-11-14T22:13:30.000Z");
    assert_eq!(payload["class"], "Down");
    assert!(payload["group"].is_string());
    assert!(payload["custom_details"]["firing"].as_str().is_some_and(|t| t.contains("acme is down")));
    assert_eq!(payload["custom_details"]["labels"]["tenant"], "acme");

    at(&clock, &mut mgr, T0 + 20 * S);
    mgr.push(critical(Some(T0 + 20 * S)));
    at(&clock, &mut mgr, T0 + 70 * S);
    let s = slack.requests();
    assert_eq!(s.len(), 2);
    let att = &s[1].json()["attachments"][0];
    assert_eq!(att["color"], "good");
    assert!(att["title"].as_str().is_some_and(|t| t.starts_with("[RESOLVED] Down")), "{att}");
    let p = pd.requests();
    assert_eq!(p.len(), 2);
    let resolve = p[1].json();
    let keys: Vec<&String> = resolve.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["dedup_key", "event_action", "routing_key"]);
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], Value::String(dedup));
    assert_eq!(resolve["routing_key"], "R0UTING");
    assert_eq!(mgr.stats().receivers["pd"].sent, 2);
}

#[test]
fn pagerduty_severity_defaults_to_error() {
    let pd = HttpServer::start(202);
    let clock = Arc::new(ManualClock::new(T0));
    let receivers = vec![ReceiverSpec {
        name: "pd".into(),
        send_resolved: false,
        kind: ReceiverKind::PagerDuty { url: pd.url("/"), routing_key: "k".into(), timeout: 2 * S },
    }];
    let state = tempdir("pdsev");
    let mut mgr = manager(&spec(root("pd", &[], 10, 60, 3600), receivers), &state, &clock);
    mgr.push(Alert::new([("alertname", "X"), ("severity", "page-me")], T0).annotate("summary", "s".repeat(3000)));
    at(&clock, &mut mgr, T0 + 10 * S);
    let body = pd.requests()[0].json();
    assert_eq!(body["payload"]["severity"], "error");
    assert!(body["payload"]["summary"].as_str().is_some_and(|s| s.chars().count() <= 1024));
}

fn email(name: &str, smtp: &str) -> ReceiverSpec {
    ReceiverSpec {
        name: name.into(),
        send_resolved: false,
        kind: ReceiverKind::Email {
            smtp: smtp.into(),
            from: "tenantflow@example.com".into(),
            to: vec!["oncall@example.com".into()],
            username: None,
            password: None,
            starttls: false,
        },
    }
}

#[test]
fn email_is_sent_over_smtp() {
    let server = SmtpServer::start("250 ok\r\n");
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("mail", &["alertname"], 10, 60, 3600), vec![email("mail", &format!("127.0.0.1:{}", server.port))]);
    let state = tempdir("email");
    let mut mgr = manager(&spec, &state, &clock);
    mgr.check_connections().expect("the SMTP server answers");
    mgr.push(critical(None));
    mgr.push(Alert::new([("alertname", "Down"), ("severity", "critical"), ("tenant", "globex")], T0).annotate("summary", "globex is down"));
    at(&clock, &mut mgr, T0 + 10 * S);
    let msgs = server.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let msg = &msgs[0];
    assert!(msg.contains("Subject: [FIRING:2] Down"), "{msg}");
    assert!(msg.contains("To: oncall@example.com"), "{msg}");
    assert!(msg.contains("From: tenantflow@example.com"), "{msg}");
    for line in ["tenant = acme", "tenant = globex", "summary = acme is down", "summary = globex is down", "Firing (2):"] {
        assert!(msg.contains(line), "missing `{line}` in {msg}");
    }
    assert_eq!(mgr.stats().receivers["mail"].sent, 1);
}

#[test]
fn smtp_refusal_is_not_retried_and_a_dead_server_fails_the_check() {
    let server = SmtpServer::start("550 no such user\r\n");
    let clock = Arc::new(ManualClock::new(T0));
    let spec = spec(root("mail", &["alertname"], 10, 60, 3600), vec![email("mail", &format!("127.0.0.1:{}", server.port))]);
    let state = tempdir("email-refused");
    let mut mgr = manager(&spec, &state, &clock);
    mgr.push(critical(None));
    at(&clock, &mut mgr, T0 + 10 * S);
    for t in [20, 100, 1000] {
        at(&clock, &mut mgr, T0 + t * S);
    }
    assert_eq!(server.messages().len(), 0);
    let stats = mgr.stats();
    assert_eq!((stats.receivers["mail"].failed, stats.receivers["mail"].retried), (1, 0));
    assert_eq!(stats.outbox_size, 0);

    let dead = spec_with_email_at(free_port());
    let state = tempdir("email-dead");
    let mgr = manager(&dead, &state, &clock);
    match mgr.check_connections() {
        Err(AlertError::Connection { receiver, kind, .. }) => assert_eq!((receiver.as_str(), kind), ("oncall-mail", "email")),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

fn spec_with_email_at(port: u16) -> AlertingSpec {
    spec(root("oncall-mail", &[], 10, 60, 3600), vec![email("oncall-mail", &format!("127.0.0.1:{port}"))])
}

/// A `redis-server` child process, killed when dropped (also when a test panics).
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed at /usr/bin/redis-server)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_receiver(name: &str, url: &str) -> ReceiverSpec {
    ReceiverSpec {
        name: name.into(),
        send_resolved: false,
        kind: ReceiverKind::RedisPubSub { url: url.into(), channel: "tf-alerts".into() },
    }
}

#[test]
fn redis_receiver_publishes_the_webhook_json() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let mut sub = conn.as_pubsub();
    sub.subscribe("tf-alerts").expect("subscribe");
    sub.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");

    let clock = Arc::new(ManualClock::new(T0));
    let bus = spec(root("bus", &["alertname"], 10, 60, 3600), vec![redis_receiver("bus", &server.url())]);
    let state = tempdir("redis");
    let mut mgr = manager(&bus, &state, &clock);
    mgr.check_connections().expect("redis answers PING");
    mgr.push(critical(None));
    at(&clock, &mut mgr, T0 + 10 * S);
    let msg = sub.get_message().expect("a published message");
    assert_eq!(msg.get_channel_name(), "tf-alerts");
    let payload: String = msg.get_payload().expect("payload");
    let body: Value = serde_json::from_str(&payload).expect("JSON");
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "bus");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["tenant"], "acme");
    assert_eq!(body["alerts"][0]["annotations"]["summary"], "acme is down");
    assert_eq!(mgr.stats().receivers["bus"].sent, 1);

    let dead = spec(root("bus2", &[], 10, 60, 3600), vec![redis_receiver("bus2", &format!("redis://127.0.0.1:{}/", free_port()))]);
    let state = tempdir("redis-dead");
    match manager(&dead, &state, &clock).check_connections() {
        Err(AlertError::Connection { receiver, kind, .. }) => assert_eq!((receiver.as_str(), kind), ("bus2", "redis")),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[test]
fn redis_down_is_retried_until_it_is_back() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut server = RedisServer::start();
    let spec = spec(root("bus", &["alertname"], 10, 60, 3600), vec![redis_receiver("bus", &server.url())]);
    let state = tempdir("redis-retry");
    let mut mgr = manager(&spec, &state, &clock);
    let _ = server.child.kill();
    let _ = server.child.wait();
    mgr.push(critical(None));
    at(&clock, &mut mgr, T0 + 10 * S);
    assert_eq!(mgr.stats().receivers["bus"].retried, 1);
    assert_eq!(mgr.stats().outbox_size, 1);
    let port = server.port;
    server.child = Command::new("/usr/bin/redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    at(&clock, &mut mgr, T0 + 20 * S);
    let stats = mgr.stats();
    assert_eq!((stats.receivers["bus"].sent, stats.outbox_size), (1, 0));
}

/// Credentials the SMTP server refuses stop the job when it starts (`check_connections`, called
/// then), naming the receiver; the right ones pass and the mail goes out.
#[test]
fn refused_smtp_credentials_fail_the_check_and_accepted_ones_deliver() {
    // base64 of "\0tf\0right": AUTH PLAIN with user tf, password right.
    let server = SmtpServer::start_with_auth("250 ok\r\n", Some("AHRmAHJpZ2h0"));
    let clock = Arc::new(ManualClock::new(T0));
    let with_password = |password: &str| {
        let mut r = email("mail", &format!("127.0.0.1:{}", server.port));
        if let ReceiverKind::Email { username, password: p, .. } = &mut r.kind {
            *username = Some("tf".into());
            *p = Some(password.into());
        }
        spec(root("mail", &["alertname"], 10, 60, 3600), vec![r])
    };
    let state = tempdir("email-auth-wrong");
    match manager(&with_password("wrong"), &state, &clock).check_connections() {
        Err(AlertError::Connection { receiver, kind, message }) => {
            assert_eq!((receiver.as_str(), kind), ("mail", "email"));
            assert!(message.contains("535") || message.to_lowercase().contains("auth"), "{message}");
        }
        other => panic!("expected refused credentials, got {other:?}"),
    }
    let state = tempdir("email-auth-right");
    let mut mgr = manager(&with_password("right"), &state, &clock);
    mgr.check_connections().expect("the right credentials pass");
    mgr.push(critical(None));
    at(&clock, &mut mgr, T0 + 10 * S);
    assert_eq!(server.messages().len(), 1);
}
