//! Alerting in a job file: alert rules over the job's output rows (`[[alerts]]`) and how their
//! alerts are routed, grouped, inhibited and delivered (`[alerting]`), with Alertmanager's
//! semantics and names. The runtime lives in the `tenantflow-alerts` crate; this module is the
//! validated configuration both it and `tenantflow validate` share.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::Located;

/// One alert rule: every output row for which `condition` holds fires an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleSpec {
    /// The `alertname` label.
    pub name: String,
    /// A SQL condition over the output row's fields; `prev(field)` is the field's value in the
    /// previous row of the same series (same tenant and window key).
    pub condition: Located<String>,
    /// Extra labels (`severity`, `team`, ...). The alert also carries `alertname`, `job`, the
    /// tenant and the window's key fields as labels.
    pub labels: Vec<(String, String)>,
    /// Annotations; `{field}` in their text is replaced by the row's value of `field`.
    pub annotations: Vec<(String, Located<String>)>,
}

/// `[alerting]`: the routing tree, receivers and inhibition rules of a job's alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertingSpec {
    pub route: RouteSpec,
    pub receivers: Vec<ReceiverSpec>,
    pub inhibit_rules: Vec<InhibitRuleSpec>,
    /// An alert not seen again for this long is resolved (µs; Alertmanager's `resolve_timeout`).
    pub resolve_timeout: i64,
    /// Where the notification log, the outbox and (for `tenantflow run`) the silences live;
    /// defaults to `.tenantflow/alerts/<job name>`.
    pub state_dir: Option<String>,
}

/// A node of the routing tree. Unset options inherit from the parent route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub receiver: Option<String>,
    /// All must match for an alert to take this route (the root matches everything).
    pub matchers: Vec<Matcher>,
    /// Labels that split alerts into groups; `["..."]` groups by all labels.
    pub group_by: Option<Vec<String>>,
    /// µs
    pub group_wait: Option<i64>,
    pub group_interval: Option<i64>,
    pub repeat_interval: Option<i64>,
    /// Keep looking at sibling routes after this one matched.
    pub continue_matching: bool,
    pub routes: Vec<RouteSpec>,
}

/// Alertmanager's defaults, for options no route sets.
pub const DEFAULT_GROUP_WAIT: i64 = 30_000_000;
pub const DEFAULT_GROUP_INTERVAL: i64 = 300_000_000;
pub const DEFAULT_REPEAT_INTERVAL: i64 = 4 * 3_600_000_000;
pub const DEFAULT_RESOLVE_TIMEOUT: i64 = 300_000_000;

/// Mutes alerts matching `target` while an alert matching `source` fires with the same values
/// of the `equal` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct InhibitRuleSpec {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverSpec {
    pub name: String,
    /// Also notify when the alerts of a group resolve.
    pub send_resolved: bool,
    pub kind: ReceiverKind,
}

/// A secret in a job file: given inline, or the name of an environment variable read when the
/// job starts (on the process that sends notifications, which need not be where the job was
/// validated).
#[derive(Debug, Clone, PartialEq)]
pub enum Secret {
    Value(String),
    Env(String),
}

impl Secret {
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::Env(name) => std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set")),
        }
    }
}

impl From<&str> for Secret {
    fn from(v: &str) -> Secret {
        Secret::Value(v.to_string())
    }
}

impl From<String> for Secret {
    fn from(v: String) -> Secret {
        Secret::Value(v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverKind {
    /// Alertmanager's webhook JSON, signed with HMAC-SHA256 when a secret is set.
    Webhook { url: String, secret: Option<Secret>, timeout: i64 },
    /// A Slack incoming webhook (its URL is the secret).
    Slack { url: Secret, channel: Option<String>, timeout: i64 },
    /// PagerDuty Events API v2 (trigger, and resolve with the same `dedup_key`).
    PagerDuty { url: String, routing_key: Secret, timeout: i64 },
    /// Email over SMTP.
    Email {
        /// `host:port`
        smtp: String,
        from: String,
        to: Vec<String>,
        username: Option<String>,
        password: Option<Secret>,
        starttls: bool,
    },
    /// PUBLISH of the webhook JSON on a Redis channel.
    RedisPubSub { url: String, channel: String },
}

impl ReceiverKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ReceiverKind::Webhook { .. } => "webhook",
            ReceiverKind::Slack { .. } => "slack",
            ReceiverKind::PagerDuty { .. } => "pagerduty",
            ReceiverKind::Email { .. } => "email",
            ReceiverKind::RedisPubSub { .. } => "redis",
        }
    }
}

/// A label matcher in Alertmanager's syntax: `name="value"`, `name!="value"`, `name=~"regex"`,
/// `name!~"regex"` (regular expressions match the whole value; quotes are optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "=~")]
    Re,
    #[serde(rename = "!~")]
    NotRe,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::NotRe => "!~",
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

impl Matcher {
    /// Parses `name<op>value`; regular expressions are checked here.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let t = text.trim();
        let end = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(t.len());
        let name = &t[..end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("invalid matcher `{text}`: expected a label name first, e.g. severity=\"critical\""));
        }
        let rest = t[end..].trim_start();
        let (op, value) = [("=~", MatchOp::Re), ("!~", MatchOp::NotRe), ("!=", MatchOp::Ne), ("=", MatchOp::Eq)]
            .iter()
            .find_map(|(s, op)| rest.strip_prefix(s).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("invalid matcher `{text}`: expected one of =, !=, =~, !~ after `{name}`"))?;
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
            None if value.contains('"') => return Err(format!("invalid matcher `{text}`: unbalanced quotes")),
            None => value.to_string(),
        };
        if matches!(op, MatchOp::Re | MatchOp::NotRe) {
            regex_lite::Regex::new(&format!("^(?:{value})$")).map_err(|e| format!("invalid regular expression in `{text}`: {e}"))?;
        }
        Ok(Matcher { name: name.to_string(), op, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse_in_alertmanager_syntax() {
        let m = Matcher::parse("severity=\"critical\"").expect("eq");
        assert_eq!((m.name.as_str(), m.op, m.value.as_str()), ("severity", MatchOp::Eq, "critical"));
        assert_eq!(Matcher::parse("tenant =~ acme.*").expect("re").op, MatchOp::Re);
        assert_eq!(Matcher::parse("team!=ops").expect("ne").op, MatchOp::Ne);
        assert_eq!(Matcher::parse("team!~\"a|b\"").expect("nre").value, "a|b");
        assert!(Matcher::parse("=x").is_err());
        assert!(Matcher::parse("x").is_err());
        assert!(Matcher::parse("x=~\"(\"").is_err());
        assert_eq!(Matcher::parse("severity=\"critical\"").expect("eq").to_string(), "severity=\"critical\"");
    }
}
