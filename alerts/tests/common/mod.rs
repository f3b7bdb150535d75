//! Test helpers: real HTTP and SMTP servers on 127.0.0.1, spec builders, temporary directories.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tenantflow_core::alerting::{AlertingSpec, Matcher, ReceiverKind, ReceiverSpec, RouteSpec, Secret};

pub const S: i64 = 1_000_000;
/// 2023-11-14T22:13:20Z
pub const T0: i64 = 1_700_000_000 * S;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// A tiny HTTP/1.1 server: records each request, then answers with the next queued status
/// (the default status once the queue is empty). One request per connection.
pub struct HttpServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    default_status: u16,
}

impl HttpServer {
    pub fn start(default_status: u16) -> HttpServer {
        HttpServer::start_on(0, default_status)
    }

    pub fn start_on(port: u16, default_status: u16) -> HttpServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(VecDeque::new()));
        let (req, st) = (requests.clone(), statuses.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = serve(conn, &req, &st, default_status);
            }
        });
        HttpServer { port, requests, statuses, default_status }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Statuses for the next requests, in order.
    pub fn answer(&self, statuses: &[u16]) {
        self.statuses.lock().expect("lock").extend(statuses);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

fn serve(conn: TcpStream, requests: &Mutex<Vec<Request>>, statuses: &Mutex<VecDeque<u16>>, default_status: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    requests.lock().expect("lock").push(Request { method, path, headers, body });
    let status = statuses.lock().expect("lock").pop_front().unwrap_or(default_status);
    let text = if status < 300 { "ok" } else { "error" };
    let mut w = conn;
    write!(w, "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len())?;
    w.flush()
}

/// A port nothing listens on (for now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A minimal SMTP server recording each message's DATA; answers `rcpt_reply` to RCPT.
pub struct SmtpServer {
    pub port: u16,
    messages: Arc<Mutex<Vec<String>>>,
    pub sessions: Arc<AtomicUsize>,
}

impl SmtpServer {
    pub fn start(rcpt_reply: &'static str) -> SmtpServer {
        SmtpServer::start_with_auth(rcpt_reply, None)
    }

    /// Also offers AUTH PLAIN and accepts only the credentials whose base64 form is `auth`.
    pub fn start_with_auth(rcpt_reply: &'static str, auth: Option<&'static str>) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(AtomicUsize::new(0));
        let (m, s) = (messages.clone(), sessions.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                s.fetch_add(1, Ordering::SeqCst);
                let _ = smtp_session(conn, &m, rcpt_reply, auth);
            }
        });
        SmtpServer { port, messages, sessions }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }
}

fn smtp_session(conn: TcpStream, messages: &Mutex<Vec<String>>, rcpt_reply: &str, auth: Option<&str>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    w.write_all(b"220 localhost ESMTP test\r\n")?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let reply = if (cmd.starts_with("EHLO") || cmd.starts_with("HELO")) && auth.is_some() {
            "250-localhost\r\n250 AUTH PLAIN\r\n"
        } else if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            "250 localhost\r\n"
        } else if cmd.starts_with("AUTH PLAIN") {
            if auth.is_some_and(|a| line.trim_end().ends_with(a)) {
                "235 2.7.0 authenticated\r\n"
            } else {
                "535 5.7.8 authentication failed\r\n"
            }
        } else if cmd.starts_with("RCPT") {
            rcpt_reply
        } else if cmd.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                data.push_str(&l);
            }
            messages.lock().expect("lock").push(data);
            "250 queued\r\n"
        } else if cmd.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            // MAIL, NOOP, RSET
            "250 ok\r\n"
        };
        w.write_all(reply.as_bytes())?;
    }
}

/// A fresh, empty directory, removed when dropped.
pub struct TestDir(tempfile::TempDir);

impl std::ops::Deref for TestDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        self.0.path()
    }
}

pub fn tempdir(name: &str) -> TestDir {
    TestDir(tempfile::Builder::new().prefix(&format!("tf-alerts-{name}-")).tempdir().expect("tempdir"))
}

pub fn m(text: &str) -> Matcher {
    Matcher::parse(text).expect("matcher")
}

pub fn route(receiver: Option<&str>, matchers: &[&str]) -> RouteSpec {
    RouteSpec {
        receiver: receiver.map(String::from),
        matchers: matchers.iter().map(|t| m(t)).collect(),
        group_by: None,
        group_wait: None,
        group_interval: None,
        repeat_interval: None,
        continue_matching: false,
        routes: Vec::new(),
    }
}

/// A root route with the given timings (seconds) and grouping.
pub fn root(receiver: &str, group_by: &[&str], wait: i64, interval: i64, repeat: i64) -> RouteSpec {
    RouteSpec {
        group_by: Some(group_by.iter().map(|s| s.to_string()).collect()),
        group_wait: Some(wait * S),
        group_interval: Some(interval * S),
        repeat_interval: Some(repeat * S),
        ..route(Some(receiver), &[])
    }
}

pub fn webhook(name: &str, url: &str, send_resolved: bool, secret: Option<&str>) -> ReceiverSpec {
    ReceiverSpec {
        name: name.into(),
        send_resolved,
        kind: ReceiverKind::Webhook { url: url.into(), secret: secret.map(Secret::from), timeout: 2 * S },
    }
}

pub fn spec(route: RouteSpec, receivers: Vec<ReceiverSpec>) -> AlertingSpec {
    AlertingSpec { route, receivers, inhibit_rules: Vec::new(), resolve_timeout: 3600 * S, state_dir: None }
}
