//! The ClickHouse sink: rows in RowBinary over HTTP, batched by rows and by time, retried with
//! exponential backoff and jitter while ClickHouse is unreachable or answers 5xx (the worker
//! waits, so backpressure reaches the sources and nothing is buffered without bound).
//!
//! Writes are idempotent: each row carries a deterministic id (`_tf_id`, a 128-bit hash of the
//! row and its rank among equal rows, as the Kafka sink's record id), and the table is a
//! `ReplacingMergeTree` ordered by (tenant, `_tf_id`). Rows written again after a restore
//! replace themselves: `SELECT ... FINAL` sees each result once. Plain RowBinary over HTTP works
//! with modern ClickHouse and with the 18.16 of Debian's packages (facts in shared/NOTES.md).
//!
//! Type mapping (columns are `Nullable` except the tenant, which is part of the sorting key):
//!
//! | tenantflow | ClickHouse | RowBinary |
//! | --- | --- | --- |
//! | `bool` | `UInt8` | 1 byte, 0 or 1 |
//! | `int` | `Int64` | 8 bytes, little endian |
//! | `float` | `Float64` | 8 bytes, little endian |
//! | `string` | `String` | LEB128 length, UTF-8 bytes |
//! | `timestamp` | `DateTime` (UTC, whole seconds; 18.16 has no `DateTime64`) | `UInt32` seconds |
//! | `interval` | `Int64` (microseconds) | 8 bytes |

use std::io;
use std::time::Duration;

use tenantflow_core::job::ClickHouseSinkSpec;
use tenantflow_core::{DataType, Value};

use crate::sender::{Backoff, Batching, Retrying, Sender};
use crate::sink::Sink;
use crate::ConnectorError;

/// The id column.
const ID: &str = "_tf_id";

/// The ClickHouse type of a tenantflow type.
fn base_type(t: DataType) -> &'static str {
    match t {
        DataType::Bool | DataType::Null => "UInt8",
        DataType::Int | DataType::Interval => "Int64",
        DataType::Float => "Float64",
        DataType::String => "String",
        DataType::Timestamp => "DateTime",
    }
}

/// The table's columns: the id, then the output fields (the tenant not nullable).
fn columns(fields: &[(String, DataType)], tenant: Option<usize>) -> Vec<(String, String)> {
    let mut cols = vec![(ID.to_string(), "FixedString(16)".to_string())];
    for (i, (name, t)) in fields.iter().enumerate() {
        let ty = if Some(i) == tenant { base_type(*t).to_string() } else { format!("Nullable({})", base_type(*t)) };
        cols.push((name.clone(), ty));
    }
    cols
}

/// `CREATE TABLE IF NOT EXISTS` for the output schema.
pub fn create_table_sql(table: &str, fields: &[(String, DataType)], tenant: Option<usize>) -> String {
    let cols: Vec<String> = columns(fields, tenant).iter().map(|(n, t)| format!("`{n}` {t}")).collect();
    let order = match tenant {
        Some(i) => format!("(`{}`, `{ID}`)", fields[i].0),
        None => format!("(`{ID}`)"),
    };
    format!("CREATE TABLE IF NOT EXISTS {table} ({}) ENGINE = ReplacingMergeTree() ORDER BY {order}", cols.join(", "))
}

/// Appends one row's columns (without the id) in RowBinary.
fn encode_row(out: &mut Vec<u8>, row: &[Value], fields: &[(String, DataType)], tenant: Option<usize>) -> Result<(), String> {
    for (i, (value, (name, t))) in row.iter().zip(fields).enumerate() {
        let nullable = Some(i) != tenant;
        if nullable {
            if value.is_null() {
                out.push(1);
                continue;
            }
            out.push(0);
        }
        match (t, value) {
            (DataType::Bool | DataType::Null, Value::Bool(b)) => out.push(u8::from(*b)),
            (DataType::Bool | DataType::Null, Value::Null) => out.push(0),
            (DataType::Int, Value::Int(i)) | (DataType::Interval, Value::Interval(i)) => out.extend_from_slice(&i.to_le_bytes()),
            (DataType::Int | DataType::Interval, Value::Null) => out.extend_from_slice(&0i64.to_le_bytes()),
            (DataType::Float, Value::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
            (DataType::Float, Value::Int(i)) => out.extend_from_slice(&(*i as f64).to_le_bytes()),
            (DataType::String, Value::Str(s)) => {
                leb128(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            (DataType::String, Value::Null) => out.push(0),
            (DataType::Timestamp, Value::Ts(us)) => {
                // DateTime holds unsigned seconds from 1970 to 2106: clamp what it cannot.
                let secs = us.div_euclid(1_000_000).clamp(0, u32::MAX as i64) as u32;
                out.extend_from_slice(&secs.to_le_bytes());
            }
            (t, v) => return Err(format!("column `{name}` is {t} but the value is {v:?}")),
        }
    }
    Ok(())
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub struct ClickHouseSink {
    fields: Vec<(String, DataType)>,
    tenant: Option<usize>,
    /// RowBinary rows not handed to the sender yet, and when the first of them came.
    batch: Vec<u8>,
    batching: Batching,
    row: Vec<u8>,
    /// The timestamp whose rows are being written: ids hash it with the row.
    time: u64,
    last_hash: u128,
    rank: u32,
    sender: Sender<Vec<u8>>,
}

impl ClickHouseSink {
    /// Connects, creates the table if asked, and checks that its columns are the ones the job
    /// writes: configuration errors surface when the job starts, not mid-stream.
    pub fn open(spec: &ClickHouseSinkSpec, fields: &[(String, DataType)], tenant: Option<usize>) -> Result<ClickHouseSink, ConnectorError> {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).http_status_as_error(false).build().into();
        let err = |what: &str, e: String| ConnectorError::Sink(format!("clickhouse {} ({what}): {e}", spec.url));
        // Unreachable or answering 5xx: ClickHouse may be restarting, so opening is retried.
        let unavailable = |what: &str, e: String| ConnectorError::Unavailable(format!("clickhouse {} ({what}): {e}", spec.url));
        let query = |sql: &str| -> Result<String, ConnectorError> {
            let mut r = agent.post(&spec.url).send(sql).map_err(|e| unavailable("connecting", e.to_string()))?;
            let status = r.status();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            let what = sql.split_whitespace().next().unwrap_or("query");
            match status.as_u16() {
                200..=299 => Ok(body),
                500..=599 => Err(unavailable(what, format!("HTTP {}: {}", status.as_u16(), body.trim()))),
                code => Err(err(what, format!("HTTP {code}: {}", body.trim()))),
            }
        };
        if spec.create_table {
            query(&create_table_sql(&spec.table, fields, tenant))?;
        }
        let described = query(&format!("DESCRIBE TABLE {} FORMAT TabSeparated", spec.table))?;
        let found: Vec<(String, String)> = described
            .lines()
            .filter_map(|l| {
                let mut parts = l.split('\t');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        let expected = columns(fields, tenant);
        if found != expected {
            let show = |c: &[(String, String)]| c.iter().map(|(n, t)| format!("{n} {t}")).collect::<Vec<_>>().join(", ");
            return Err(ConnectorError::Sink(format!(
                "clickhouse table {}: columns are ({}), the job writes ({}); create it with create_table = true or alter it",
                spec.table,
                show(&found),
                show(&expected)
            )));
        }
        let insert = format!("INSERT INTO {} FORMAT RowBinary", spec.table);
        let (url, table) = (spec.url.clone(), spec.table.clone());
        let sender = Sender::start("clickhouse", move |body: Vec<u8>, r: &Retrying| insert_batch(&agent, &url, &insert, &table, &body, r))
            .map_err(|e| err("starting the sender", e.to_string()))?;
        Ok(ClickHouseSink {
            fields: fields.to_vec(),
            tenant,
            batch: Vec::new(),
            batching: Batching::new(spec.batch_rows, spec.batch_interval),
            row: Vec::new(),
            time: 0,
            last_hash: 0,
            rank: 0,
            sender,
        })
    }

    /// Hands the batch to the sender (waiting while the one before still waits).
    fn hand_off(&mut self) -> io::Result<()> {
        if self.batching.is_empty() {
            return Ok(());
        }
        let next = Vec::with_capacity(self.batch.capacity());
        self.sender.send(std::mem::replace(&mut self.batch, next))?;
        self.batching.restart();
        Ok(())
    }
}

/// One batch into the table, retried until ClickHouse takes it or refuses it.
fn insert_batch(agent: &ureq::Agent, url: &str, insert: &str, table: &str, body: &[u8], r: &Retrying<'_>) -> Result<(), String> {
    let mut backoff = Backoff::new();
    loop {
        if r.shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(format!("clickhouse insert into {table}: the sink was closed while retrying"));
        }
        let outcome = match agent.post(url).query("query", insert).send(body) {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(mut r) if r.status().is_server_error() => {
                format!("HTTP {}: {}", r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default().trim())
            }
            Ok(mut r) => {
                let body = r.body_mut().read_to_string().unwrap_or_default();
                return Err(format!("clickhouse insert into {table}: HTTP {}: {}", r.status().as_u16(), body.trim()));
            }
            Err(e) => e.to_string(),
        };
        r.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = backoff.next_wait();
        tracing::warn!(table, retry_in_ms = wait.as_millis() as u64, "clickhouse insert failed: {outcome}");
        std::thread::sleep(wait);
    }
}

impl Sink for ClickHouseSink {
    fn begin_time(&mut self, t: u64) {
        self.time = t;
        self.last_hash = 0;
        self.rank = 0;
    }

    fn write(&mut self, row: &[Value]) -> io::Result<()> {
        self.row.clear();
        encode_row(&mut self.row, row, &self.fields, self.tenant).map_err(io::Error::other)?;
        // Equal rows come out next to each other (the sink sorts each timestamp's rows), so
        // the rank among equal rows, and so the id, is the same in every run.
        let hash = xxhash_rust::xxh3::xxh3_128_with_seed(&self.row, self.time);
        self.rank = if hash == self.last_hash { self.rank + 1 } else { 0 };
        self.last_hash = hash;
        let id = hash ^ u128::from(self.rank).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.batch.extend_from_slice(&id.to_le_bytes());
        self.batch.extend_from_slice(&self.row);
        if self.batching.add() {
            self.hand_off()?;
        }
        Ok(())
    }

    /// Hands a batch on once it is old enough.
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

    /// Everything written so far is in ClickHouse; rows after the checkpoint that are written
    /// again after a restore replace themselves (same ids).
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
    fn rows_encode_as_row_binary() {
        let fields = vec![
            ("t".to_string(), DataType::String),
            ("n".to_string(), DataType::Int),
            ("x".to_string(), DataType::Float),
            ("at".to_string(), DataType::Timestamp),
            ("ok".to_string(), DataType::Bool),
        ];
        let mut out = Vec::new();
        let row = [Value::Str("ab".into()), Value::Int(-2), Value::Null, Value::Ts(1_500_000), Value::Bool(true)];
        encode_row(&mut out, &row, &fields, Some(0)).expect("encode");
        // The tenant (column 0) is not nullable: no null flag.
        let mut expected = vec![2, b'a', b'b', 0];
        expected.extend_from_slice(&(-2i64).to_le_bytes());
        expected.push(1);
        expected.push(0);
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&[0, 1]);
        assert_eq!(out, expected);
        let mut long = Vec::new();
        leb128(&mut long, 300);
        assert_eq!(long, [0xac, 0x02]);
        assert!(encode_row(&mut Vec::new(), &[Value::Str("x".into())], &fields[1..2], None).is_err());
    }

    #[test]
    fn tables_are_created_from_the_output_schema() {
        let fields = vec![("tenant".to_string(), DataType::String), ("n".to_string(), DataType::Int)];
        assert_eq!(
            create_table_sql("db.t", &fields, Some(0)),
            "CREATE TABLE IF NOT EXISTS db.t (`_tf_id` FixedString(16), `tenant` String, `n` Nullable(Int64)) ENGINE = ReplacingMergeTree() ORDER BY (`tenant`, `_tf_id`)"
        );
    }
}
