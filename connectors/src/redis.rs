//! The Redis sink: rows as hashes, counters, sorted-set leaderboards, streams or pub/sub
//! messages, written in pipelined `MULTI`/`EXEC` transactions over one async connection.
//!
//! | mode | per row |
//! | --- | --- |
//! | `hash` | `HSET key field value ...` (null fields are left out) |
//! | `counter` | `INCRBY key value` (`INCRBYFLOAT` for floats), or `HINCRBY key hash_field value` |
//! | `leaderboard` | `ZINCRBY key score member` (`update = "set"`: `ZADD`), then `ZREMRANGEBYRANK` with `keep_top` |
//! | `stream` | `XADD key [MAXLEN ~ n] * field value ...` |
//! | `pubsub` | `PUBLISH channel <row as JSON>` |
//!
//! and `PEXPIRE key ttl` after each when `ttl` is set. Keys are templates that must name the
//! tenant field, so tenants never share a key.
//!
//! Exactly once, also for increments and streams that are not idempotent by themselves: each
//! transaction also sets a marker key (`tenantflow:sink:<job>:<sink id>`) to how far the
//! output went, as (Timely timestamp, rows of that timestamp). An event-time window's results
//! come at the same timestamp, sorted, in every run (see docs/ARCHITECTURE.md, Determinism), so
//! a restored run skips rows up to the marker. Each transaction is sent after `WATCH`ing the
//! marker and reading it: a transaction retried after a lost reply is skipped when the marker
//! shows it applied, and a first attempt that reaches Redis late (after a partition) is aborted
//! by the `WATCH`, since the retry changed the marker. A run that does not continue the output
//! deletes the marker and writes everything (at least once across restores).

use std::io;
use std::time::Duration;

use tenantflow_core::job::{RedisMode, RedisSinkSpec};
use tenantflow_core::template::{BoundTemplate, Template};
use tenantflow_core::{time, DataType, Value};

use crate::sender::{Backoff, Batching, Retrying, Sender};
use crate::sink::{JsonLines, Sink};
use crate::ConnectorError;

/// Large pipelines take longer than redis-rs's default 500 ms response timeout.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How far the output went: all rows of earlier timestamps, and the first `.1` rows of `.0`.
type Marker = (u64, u64);

pub struct RedisSink {
    spec: RedisSinkSpec,
    names: Vec<String>,
    key: BoundTemplate,
    hash_field: Option<BoundTemplate>,
    member: Option<BoundTemplate>,
    value: Option<(usize, DataType)>,
    /// (name, row position) of the fields a hash or stream entry holds.
    fields: Vec<(String, usize)>,
    marker_key: String,
    /// Rows at or before this marker were written before a restore: skipped.
    skip_through: Option<Marker>,
    pipe: redis::Pipeline,
    batching: Batching,
    time: u64,
    index: u64,
    key_buf: String,
    /// `pubsub`: the chosen fields of a row, and their JSON.
    projected: Vec<Value>,
    json: JsonLines<Vec<u8>>,
    aux_buf: String,
    sender: Sender<(redis::Pipeline, Marker)>,
}

impl RedisSink {
    /// Connects and, when `continue_output` (a restore of a job whose results come at the same
    /// timestamps in every run), reads how far a previous run wrote; otherwise starts the output
    /// afresh. Configuration errors (bad URL, refused password, unknown field) surface here,
    /// when the job starts.
    pub fn open(
        spec: &RedisSinkSpec,
        fields: &[(String, DataType)],
        job: &str,
        sink_id: &str,
        continue_output: bool,
    ) -> Result<RedisSink, ConnectorError> {
        let err = |e: String| ConnectorError::Sink(format!("redis {}: {e}", redact(&spec.url)));
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        let bind = |t: &tenantflow_core::job::Located<String>| Template::parse(&t.value).and_then(|p| p.bind(&names)).map_err(&err);
        let key = bind(&spec.key)?;
        let hash_field = spec.hash_field.as_ref().map(bind).transpose()?;
        let member = spec.member.as_ref().map(bind).transpose()?;
        let position = |n: &str| names.iter().position(|m| *m == n).ok_or_else(|| err(format!("unknown field `{n}`")));
        let value = match &spec.value {
            Some(v) => {
                let p = position(&v.value)?;
                Some((p, fields[p].1))
            }
            None => None,
        };
        let chosen: Vec<String> = match &spec.fields {
            Some(list) => list.iter().map(|f| f.value.clone()).collect(),
            None => names.iter().map(|n| n.to_string()).collect(),
        };
        let fields = chosen.into_iter().map(|n| position(&n).map(|p| (n, p))).collect::<Result<Vec<_>, _>>()?;
        let json = JsonLines::new(Vec::new(), &fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
        let marker_key = format!("tenantflow:sink:{job}:{sink_id}");

        let client = redis::Client::open(spec.url.as_str()).map_err(|e| err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| err(e.to_string()))?;
        // Redis down, restarting or loading: opening is retried (the job waits); anything else
        // (a refused password, say) is the configuration's fault.
        let failed = |what: String, e: redis::RedisError| {
            let message = format!("redis {}: {what}: {e}", redact(&spec.url));
            if transient(&e) {
                ConnectorError::Unavailable(message)
            } else {
                ConnectorError::Sink(message)
            }
        };
        let mut conn = runtime.block_on(connect(&client)).map_err(|e| failed("connecting".into(), e))?;
        let skip_through = if continue_output {
            runtime.block_on(read_marker(&mut conn, &marker_key)).map_err(|e| failed(format!("reading {marker_key}"), e))?
        } else {
            runtime
                .block_on(redis::cmd("DEL").arg(&marker_key).query_async::<()>(&mut conn))
                .map_err(|e| failed(format!("resetting {marker_key}"), e))?;
            None
        };
        let marker = marker_key.clone();
        let mut conn = Some(conn);
        let sender = Sender::start("redis", move |(pipe, end): (redis::Pipeline, Marker), r: &Retrying| {
            runtime.block_on(apply(&client, &mut conn, &pipe, end, &marker, r))
        })
        .map_err(|e| err(e.to_string()))?;
        Ok(RedisSink {
            spec: spec.clone(),
            names: names.iter().map(|n| n.to_string()).collect(),
            key,
            hash_field,
            member,
            value,
            fields,
            marker_key,
            skip_through,
            pipe: transaction(),
            batching: Batching::new(spec.batch_rows, spec.batch_interval),
            time: 0,
            index: 0,
            key_buf: String::new(),
            projected: Vec::new(),
            json,
            aux_buf: String::new(),
            sender,
        })
    }

    /// Appends one row's commands to the transaction being built.
    fn encode(&mut self, row: &[Value]) {
        self.key.render_into(row, &mut self.key_buf);
        let key = self.key_buf.as_str();
        let pipe = &mut self.pipe;
        match self.spec.mode {
            RedisMode::Hash => {
                if self.fields.iter().all(|(_, p)| row[*p].is_null()) {
                    return;
                }
                pipe.cmd("HSET").arg(key);
                for (name, p) in &self.fields {
                    if !row[*p].is_null() {
                        pipe.arg(name.as_str());
                        push_value(pipe, &row[*p]);
                    }
                }
                pipe.ignore();
            }
            RedisMode::Counter => {
                let Some((p, ty)) = self.value else { return };
                let float = ty == DataType::Float;
                let by = &row[p];
                if by.is_null() {
                    return;
                }
                match &self.hash_field {
                    Some(f) => {
                        f.render_into(row, &mut self.aux_buf);
                        pipe.cmd(if float { "HINCRBYFLOAT" } else { "HINCRBY" }).arg(key).arg(self.aux_buf.as_str());
                    }
                    None => {
                        pipe.cmd(if float { "INCRBYFLOAT" } else { "INCRBY" }).arg(key);
                    }
                }
                push_value(pipe, by);
                pipe.ignore();
            }
            RedisMode::Leaderboard => {
                let (Some((p, _)), Some(member)) = (self.value, self.member.as_ref()) else { return };
                let Some(score) = row[p].as_f64() else { return };
                member.render_into(row, &mut self.aux_buf);
                pipe.cmd(if self.spec.increment { "ZINCRBY" } else { "ZADD" }).arg(key).arg(score).arg(self.aux_buf.as_str()).ignore();
                if let Some(n) = self.spec.keep_top {
                    // Ranks are ascending: drop everything below the best n.
                    pipe.cmd("ZREMRANGEBYRANK").arg(key).arg(0).arg(-(n as i64) - 1).ignore();
                }
            }
            RedisMode::Stream => {
                pipe.cmd("XADD").arg(key);
                if let Some(n) = self.spec.max_len {
                    pipe.arg("MAXLEN").arg("~").arg(n);
                }
                pipe.arg("*");
                for (name, p) in &self.fields {
                    pipe.arg(name.as_str());
                    push_value(pipe, &row[*p]);
                }
                pipe.ignore();
            }
            RedisMode::PubSub => {
                // The message is built in buffers kept across rows.
                self.projected.clear();
                self.projected.extend(self.fields.iter().map(|(_, p)| row[*p].clone()));
                self.json.get_mut().clear();
                let _ = self.json.write(&self.projected);
                let message = self.json.get_mut();
                message.pop(); // the newline
                pipe.cmd("PUBLISH").arg(key).arg(&message[..]).ignore();
            }
        }
        if let (Some(ttl), false) = (self.spec.ttl, self.spec.mode == RedisMode::PubSub) {
            pipe.cmd("PEXPIRE").arg(key).arg((ttl / 1000).max(1)).ignore();
        }
    }

    /// Closes the transaction with the marker and hands it to the sender.
    fn hand_off(&mut self) -> io::Result<()> {
        if self.batching.is_empty() {
            return Ok(());
        }
        let end = (self.time, self.index);
        // Not ignored: its "OK" tells an applied transaction from one the WATCH aborted.
        self.pipe.cmd("SET").arg(&self.marker_key).arg(format!("{} {}", end.0, end.1));
        let pipe = std::mem::replace(&mut self.pipe, transaction());
        self.sender.send((pipe, end))?;
        self.batching.restart();
        Ok(())
    }

    /// The output's field names (for messages).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

fn transaction() -> redis::Pipeline {
    let mut p = redis::pipe();
    p.atomic();
    p
}

/// A value as a Redis argument: numbers as decimal text, timestamps as RFC 3339.
fn push_value(pipe: &mut redis::Pipeline, v: &Value) {
    match v {
        Value::Null => pipe.arg(""),
        Value::Bool(b) => pipe.arg(i64::from(*b)),
        Value::Int(i) | Value::Interval(i) => pipe.arg(*i),
        Value::Float(f) => pipe.arg(*f),
        Value::Str(s) => pipe.arg(s.as_str()),
        Value::Ts(t) => pipe.arg(time::format_rfc3339(*t)),
    };
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

async fn connect(client: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT)).set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

async fn read_marker(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> redis::RedisResult<Option<Marker>> {
    let v: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
    Ok(v.and_then(|s| {
        let (t, n) = s.split_once(' ')?;
        Some((t.parse().ok()?, n.parse().ok()?))
    }))
}

/// Whether an error may go away by itself (Redis restarting, loading its data, a network blip).
fn transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain))
}

/// Applies one transaction, retrying (on the sender's thread) until Redis takes it or refuses it. Before each attempt
/// the marker is watched and read: a transaction whose reply was lost may have been applied
/// already, and an attempt delayed in the network must not apply after a later one did.
async fn apply(
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    pipe: &redis::Pipeline,
    end: Marker,
    marker_key: &str,
    r: &Retrying<'_>,
) -> Result<(), String> {
    let mut backoff = Backoff::new();
    let mut aborted = 0;
    loop {
        if r.shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("redis sink: closed while retrying".into());
        }
        let attempt = async {
            if conn.is_none() {
                *conn = Some(connect(client).await?);
            }
            let Some(c) = conn.as_mut() else { return Ok(true) };
            redis::cmd("WATCH").arg(marker_key).query_async::<()>(c).await?;
            if read_marker(c, marker_key).await?.is_some_and(|m| m >= end) {
                redis::cmd("UNWATCH").query_async::<()>(c).await?;
                return Ok(true);
            }
            // EXEC answers nil when the marker changed since the WATCH.
            Ok(pipe.query_async::<Option<(String,)>>(c).await?.is_some())
        };
        match attempt.await {
            Ok(true) => return Ok(()),
            // Someone moved the marker meanwhile (a delayed attempt): look again. Over and over
            // means another writer shares it.
            Ok(false) => {
                aborted += 1;
                if aborted >= 10 {
                    return Err(format!("redis sink: {marker_key} keeps changing under it; does another job with this name write here?"));
                }
            }
            Err(e) if transient(&e) => {
                *conn = None;
                r.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let wait = backoff.next_wait();
                tracing::warn!(retry_in_ms = wait.as_millis() as u64, "redis write failed: {e}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(format!("redis write refused: {e}")),
        }
    }
}

impl Sink for RedisSink {
    fn begin_time(&mut self, t: u64) {
        self.time = t;
        self.index = 0;
    }

    fn write(&mut self, row: &[Value]) -> io::Result<()> {
        let at = (self.time, self.index);
        self.index += 1;
        if self.skip_through.is_some_and(|m| at < m) {
            return Ok(());
        }
        self.encode(row);
        if self.batching.add() {
            self.hand_off()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sender.check()?;
        if self.batching.due() {
            self.hand_off()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.hand_off()?;
        self.sender.wait()
    }

    /// Everything written so far is applied; rows after the checkpoint are skipped up to the
    /// marker when they come again after a restore.
    fn checkpoint(&mut self) -> io::Result<Option<u64>> {
        self.finish().map(|()| None)
    }

    fn pending(&self) -> bool {
        !self.batching.is_empty()
    }

    fn retries(&self) -> u64 {
        self.sender.retries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
