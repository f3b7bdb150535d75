//! Notifications and the receivers that deliver them.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use tenantflow_core::alerting::{ReceiverKind, ReceiverSpec};
use tenantflow_core::time::format_rfc3339;
use xxhash_rust::xxh3::xxh3_64;

use crate::AlertError;

/// Alertmanager's `endsAt` of an alert whose end is unknown.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// How long an SMTP or Redis exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One alert in a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifiedAlert {
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` while unknown.
    pub ends_at: String,
    pub fingerprint: String,
}

impl NotifiedAlert {
    pub fn firing(&self) -> bool {
        self.status == "firing"
    }
}

/// What a receiver is told about one group at one flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Deterministic: a hash of the group key, receiver, fingerprints and flush time; sent as
    /// `Idempotency-Key` so receivers can drop a retried delivery they already have.
    pub id: String,
    pub receiver: String,
    /// `firing` when any alert fires, else `resolved`.
    pub status: String,
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub alerts: Vec<NotifiedAlert>,
    /// The flush that produced it (unix µs).
    pub created_at: i64,
}

impl Notification {
    pub(crate) fn new(
        receiver: &str,
        group_key: &str,
        group_labels: BTreeMap<String, String>,
        alerts: Vec<NotifiedAlert>,
        created_at: i64,
    ) -> Notification {
        let mut seed = format!("{group_key}\u{0}{receiver}\u{0}{created_at}");
        for a in &alerts {
            seed.push('\u{0}');
            seed.push_str(&a.status);
            seed.push_str(&a.fingerprint);
        }
        let common = |get: fn(&NotifiedAlert) -> &BTreeMap<String, String>| -> BTreeMap<String, String> {
            let mut iter = alerts.iter();
            let mut acc = iter.next().map(|a| get(a).clone()).unwrap_or_default();
            for a in iter {
                acc.retain(|k, v| get(a).get(k) == Some(v));
            }
            acc
        };
        Notification {
            id: format!("{:016x}", xxh3_64(seed.as_bytes())),
            receiver: receiver.to_string(),
            status: if alerts.iter().any(NotifiedAlert::firing) { "firing" } else { "resolved" }.to_string(),
            group_key: group_key.to_string(),
            common_labels: common(|a| &a.labels),
            common_annotations: common(|a| &a.annotations),
            group_labels,
            alerts,
            created_at,
        }
    }

    pub(crate) fn alert(a: &crate::Alert, fingerprint: u64, now: i64) -> NotifiedAlert {
        let resolved = a.is_resolved(now);
        NotifiedAlert {
            status: if resolved { "resolved" } else { "firing" }.to_string(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: format_rfc3339(a.starts_at),
            ends_at: match a.ends_at {
                Some(e) if resolved => format_rfc3339(e),
                _ => ZERO_TIME.to_string(),
            },
            fingerprint: crate::alert::fp_hex(fingerprint),
        }
    }

    pub fn firing_count(&self) -> usize {
        self.alerts.iter().filter(|a| a.firing()).count()
    }

    /// Alertmanager's default title: `[FIRING:2] <group label values> (<other common label values>)`.
    pub fn title(&self) -> String {
        let status = match self.firing_count() {
            0 => "[RESOLVED]".to_string(),
            n => format!("[FIRING:{n}]"),
        };
        let mut t = status;
        for v in self.group_labels.values() {
            t.push(' ');
            t.push_str(v);
        }
        let rest: Vec<&str> =
            self.common_labels.iter().filter(|(k, _)| !self.group_labels.contains_key(*k)).map(|(_, v)| v.as_str()).collect();
        if !rest.is_empty() {
            t.push_str(&format!(" ({})", rest.join(" ")));
        }
        t
    }

    /// Alertmanager's webhook payload (version 4).
    pub fn webhook_json(&self) -> Value {
        let alerts: Vec<Value> = self
            .alerts
            .iter()
            .map(|a| {
                json!({
                    "status": a.status, "labels": a.labels, "annotations": a.annotations,
                    "startsAt": a.starts_at, "endsAt": a.ends_at, "generatorURL": "", "fingerprint": a.fingerprint,
                })
            })
            .collect();
        json!({
            "version": "4",
            "groupKey": self.group_key,
            "truncatedAlerts": 0,
            "status": self.status,
            "receiver": self.receiver,
            "groupLabels": self.group_labels,
            "commonLabels": self.common_labels,
            "commonAnnotations": self.common_annotations,
            "externalURL": "",
            "alerts": alerts,
        })
    }

    /// One line per alert: its summary (or name) and labels.
    fn alert_lines(&self, firing: bool) -> Vec<String> {
        self.alerts
            .iter()
            .filter(|a| a.firing() == firing)
            .map(|a| {
                let name = a.labels.get("alertname").map_or("alert", String::as_str);
                let what = a.annotations.get("summary").or_else(|| a.annotations.get("description")).map_or(name, String::as_str);
                let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}] {what} ({})", a.status, labels.join(", "))
            })
            .collect()
    }

    /// A Slack incoming-webhook message.
    pub fn slack_json(&self, channel: Option<&str>) -> Value {
        let title = self.title();
        let mut lines = self.alert_lines(true);
        lines.extend(self.alert_lines(false));
        let mut msg = json!({
            "text": title,
            "attachments": [{
                "color": if self.firing_count() > 0 { "danger" } else { "good" },
                "title": title,
                "text": lines.join("\n"),
                "fallback": title,
            }],
        });
        if let Some(c) = channel {
            msg["channel"] = json!(c);
        }
        msg
    }

    /// The PagerDuty dedup key of this notification's group in a job.
    pub fn pagerduty_dedup_key(&self, job: &str) -> String {
        format!("{:016x}", xxh3_64(format!("{job}\u{0}{}", self.group_key).as_bytes()))
    }

    /// A PagerDuty Events API v2 event: a trigger while alerts fire, else a resolve.
    pub fn pagerduty_json(&self, routing_key: &str, job: &str) -> Value {
        let dedup_key = self.pagerduty_dedup_key(job);
        if self.firing_count() == 0 {
            return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key});
        }
        const LEVELS: [&str; 4] = ["info", "warning", "error", "critical"];
        let severity = self
            .alerts
            .iter()
            .filter(|a| a.firing())
            .filter_map(|a| a.labels.get("severity").and_then(|s| LEVELS.iter().position(|l| l == s)))
            .max()
            .map_or("error", |i| LEVELS[i]);
        let class = self
            .common_labels
            .get("alertname")
            .or_else(|| self.alerts.first().and_then(|a| a.labels.get("alertname")))
            .cloned()
            .unwrap_or_default();
        let group: Vec<String> = self.group_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": truncate(&self.title(), 1024),
                "source": format!("tenantflow/{job}"),
                "severity": severity,
                "timestamp": format_rfc3339(self.created_at),
                "group": group.join(","),
                "class": class,
                "custom_details": {
                    "firing": self.alert_lines(true).join("\n"),
                    "resolved": self.alert_lines(false).join("\n"),
                    "labels": self.common_labels,
                },
            },
        })
    }

    /// The plain-text body of an email.
    pub fn email_body(&self) -> String {
        let mut body = String::new();
        for (heading, firing) in [("Firing", true), ("Resolved", false)] {
            let alerts: Vec<&NotifiedAlert> = self.alerts.iter().filter(|a| a.firing() == firing).collect();
            if alerts.is_empty() {
                continue;
            }
            body.push_str(&format!("{heading} ({}):\n", alerts.len()));
            for a in alerts {
                body.push_str(&format!("\n- {}\n  Started: {}\n", a.labels.get("alertname").map_or("alert", String::as_str), a.starts_at));
                if !firing {
                    body.push_str(&format!("  Ended: {}\n", a.ends_at));
                }
                body.push_str("  Labels:\n");
                for (k, v) in &a.labels {
                    body.push_str(&format!("    {k} = {v}\n"));
                }
                if !a.annotations.is_empty() {
                    body.push_str("  Annotations:\n");
                    for (k, v) in &a.annotations {
                        body.push_str(&format!("    {k} = {v}\n"));
                    }
                }
            }
            body.push('\n');
        }
        body
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => {
            let mut t: String = s[..i].chars().take(max_chars - 1).collect();
            t.push('…');
            t
        }
        None => s.to_string(),
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// Connection errors, timeouts, HTTP 5xx and 429, transient SMTP replies: try again later.
    Retryable(String),
    /// The receiver refused the notification; sending it again would not help.
    Permanent(String),
}

/// The HMAC-SHA256 of a body, hex: the value of `X-Tenantflow-Signature` after `sha256=`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

enum Target {
    Webhook { url: String, secret: Option<String> },
    Slack { url: String, channel: Option<String> },
    PagerDuty { url: String, routing_key: String },
    Email { transport: SmtpTransport, from: lettre::message::Mailbox, to: Vec<lettre::message::Mailbox> },
    Redis { client: redis::Client, channel: String, conn: Option<redis::Connection> },
}

/// A configured receiver.
pub(crate) struct Receiver {
    pub name: String,
    pub send_resolved: bool,
    kind: &'static str,
    job: String,
    agent: ureq::Agent,
    target: Target,
}

fn http_url(receiver: &str, url: &str) -> Result<String, AlertError> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| AlertError::Config(format!("receiver `{receiver}`: invalid URL `{url}`: {e}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(url.to_string()),
        _ => Err(AlertError::Config(format!("receiver `{receiver}`: `{url}` is not an http(s) URL with a host"))),
    }
}

fn agent(timeout_us: i64) -> ureq::Agent {
    let timeout = Duration::from_micros(timeout_us.max(1) as u64);
    ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into()
}

impl Receiver {
    pub fn new(spec: &ReceiverSpec, job: &str) -> Result<Receiver, AlertError> {
        let name = &spec.name;
        let cfg = |msg: String| AlertError::Config(format!("receiver `{name}`: {msg}"));
        let mut timeout = 10_000_000;
        let target = match &spec.kind {
            ReceiverKind::Webhook { url, secret, timeout: t } => {
                timeout = *t;
                Target::Webhook { url: http_url(name, url)?, secret: secret.as_ref().map(|s| s.resolve()).transpose().map_err(cfg)? }
            }
            ReceiverKind::Slack { url, channel, timeout: t } => {
                timeout = *t;
                Target::Slack { url: http_url(name, &url.resolve().map_err(cfg)?)?, channel: channel.clone() }
            }
            ReceiverKind::PagerDuty { url, routing_key, timeout: t } => {
                timeout = *t;
                let routing_key = routing_key.resolve().map_err(cfg)?;
                if routing_key.is_empty() {
                    return Err(cfg("routing_key is empty".into()));
                }
                Target::PagerDuty { url: http_url(name, url)?, routing_key }
            }
            ReceiverKind::Email { smtp, from, to, username, password, starttls } => {
                let (host, port) = smtp
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty())
                    .ok_or_else(|| cfg(format!("smtp `{smtp}` is not host:port")))?;
                let mut b = SmtpTransport::builder_dangerous(host).port(port).timeout(Some(CONNECT_TIMEOUT));
                if *starttls {
                    let params = TlsParameters::new(host.to_string()).map_err(|e| cfg(format!("TLS for {host}: {e}")))?;
                    b = b.tls(Tls::Required(params));
                }
                match (username, password) {
                    (Some(u), Some(p)) => b = b.credentials(Credentials::new(u.clone(), p.resolve().map_err(cfg)?)),
                    (None, None) => {}
                    _ => return Err(cfg("username and password go together".into())),
                }
                let from = from.parse().map_err(|e| cfg(format!("from address `{from}`: {e}")))?;
                if to.is_empty() {
                    return Err(cfg("no `to` address".into()));
                }
                let to = to.iter().map(|t| t.parse().map_err(|e| cfg(format!("to address `{t}`: {e}")))).collect::<Result<_, _>>()?;
                Target::Email { transport: b.build(), from, to }
            }
            ReceiverKind::RedisPubSub { url, channel } => {
                let client = redis::Client::open(url.as_str()).map_err(|e| cfg(format!("Redis URL `{url}`: {e}")))?;
                Target::Redis { client, channel: channel.clone(), conn: None }
            }
        };
        if timeout <= 0 {
            return Err(cfg("timeout must be positive".into()));
        }
        Ok(Receiver {
            name: name.clone(),
            send_resolved: spec.send_resolved,
            kind: spec.kind.type_name(),
            job: job.to_string(),
            agent: agent(timeout),
            target,
        })
    }

    /// Connects (and authenticates) to SMTP and Redis receivers; HTTP receivers are not called.
    pub fn check_connection(&self) -> Result<(), AlertError> {
        let fail = |message: String| AlertError::Connection { receiver: self.name.clone(), kind: self.kind, message };
        match &self.target {
            Target::Email { transport, .. } => match transport.test_connection() {
                Ok(true) => Ok(()),
                Ok(false) => Err(fail("the SMTP server did not answer NOOP".into())),
                Err(e) => Err(fail(e.to_string())),
            },
            Target::Redis { client, .. } => {
                let mut conn = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| fail(e.to_string()))?;
                conn.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| fail(e.to_string()))?;
                redis::cmd("PING").query::<String>(&mut conn).map(|_| ()).map_err(|e| fail(e.to_string()))
            }
            _ => Ok(()),
        }
    }

    pub fn send(&mut self, n: &Notification) -> Result<(), SendError> {
        match &mut self.target {
            Target::Webhook { url, secret } => {
                let body = serde_json::to_vec(&n.webhook_json()).map_err(|e| SendError::Permanent(e.to_string()))?;
                let mut req = self.agent.post(url.as_str()).header("Content-Type", "application/json").header("Idempotency-Key", &n.id);
                if let Some(s) = secret {
                    req = req.header("X-Tenantflow-Signature", format!("sha256={}", sign(s.as_bytes(), &body)));
                }
                http_outcome(req.send(&body[..]))
            }
            Target::Slack { url, channel } => {
                let body = serde_json::to_vec(&n.slack_json(channel.as_deref())).map_err(|e| SendError::Permanent(e.to_string()))?;
                http_outcome(self.agent.post(url.as_str()).header("Content-Type", "application/json").send(&body[..]))
            }
            Target::PagerDuty { url, routing_key } => {
                let body =
                    serde_json::to_vec(&n.pagerduty_json(routing_key, &self.job)).map_err(|e| SendError::Permanent(e.to_string()))?;
                http_outcome(self.agent.post(url.as_str()).header("Content-Type", "application/json").send(&body[..]))
            }
            Target::Email { transport, from, to } => {
                let mut b = Message::builder().from(from.clone()).subject(n.title()).header(ContentType::TEXT_PLAIN);
                for t in to.iter() {
                    b = b.to(t.clone());
                }
                let msg = b.body(n.email_body()).map_err(|e| SendError::Permanent(format!("building the email: {e}")))?;
                match transport.send(&msg) {
                    Ok(_) => Ok(()),
                    // 5xx: the server refused (also refused credentials).
                    Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
                    Err(e) => Err(SendError::Retryable(e.to_string())),
                }
            }
            Target::Redis { client, channel, conn } => {
                let body = serde_json::to_string(&n.webhook_json()).map_err(|e| SendError::Permanent(e.to_string()))?;
                let c = match conn {
                    Some(c) => c,
                    None => {
                        let c = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(redis_error)?;
                        // A Redis that accepts and then hangs must not hold the manager's thread.
                        c.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(redis_error)?;
                        c.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(redis_error)?;
                        conn.insert(c)
                    }
                };
                let result = redis::cmd("PUBLISH").arg(channel.as_str()).arg(body).query::<i64>(c);
                match result {
                    Ok(subscribers) => {
                        tracing::debug!(receiver = %self.name, subscribers, "published");
                        Ok(())
                    }
                    Err(e) => {
                        *conn = None;
                        Err(redis_error(e))
                    }
                }
            }
        }
    }
}

fn redis_error(e: redis::RedisError) -> SendError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        SendError::Permanent(e.to_string())
    } else {
        SendError::Retryable(e.to_string())
    }
}

fn http_outcome(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(), SendError> {
    match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(mut r) => {
            let status = r.status().as_u16();
            let body = r.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
            let msg = format!("HTTP {status}: {}", body.trim());
            if status == 429 || status >= 500 {
                Err(SendError::Retryable(msg))
            } else {
                Err(SendError::Permanent(msg))
            }
        }
        Err(e) => Err(SendError::Retryable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(sign(b"Jefe", b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("äbcd", 3), "äb…");
        assert_eq!(truncate("äbcd", 3).chars().count(), 3);
    }
}
