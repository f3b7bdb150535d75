//! The job file format (TOML): reading it into a [`JobSpec`] with precise errors.
//!
//! Every error names the file, the line and column, the dotted key and what was expected. The
//! reader walks TOML's spanned tree itself (rather than serde) so that each message can say all
//! four. Semantic checks (field names, expression types) live in [`crate::plan`].

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::alerting::{AlertRuleSpec, AlertingSpec, InhibitRuleSpec, Matcher, ReceiverKind, ReceiverSpec, RouteSpec, Secret};
use crate::time;
use crate::value::DataType;

/// A problem in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub file: String,
    /// 1-based; 0 when the value came from a `--set` override.
    pub line: usize,
    pub column: usize,
    /// Dotted key, e.g. `steps[1].window.size`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{} (--set {}): {}", self.file, self.key, self.message)
        } else {
            write!(f, "{}:{}:{}: `{}`: {}", self.file, self.line, self.column, self.key, self.message)
        }
    }
}

/// All problems found in one job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobErrors(pub Vec<JobError>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JobErrors {}

/// A string value from the job file with where it was written, for later error reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub key: String,
    /// Byte range of the value in the file (`usize::MAX..usize::MAX` for overrides).
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub source: SourceSpec,
    pub schema: SchemaSpec,
    pub time: TimeSpec,
    pub steps: Vec<Step>,
    pub sinks: Vec<SinkSpec>,
    pub dead_letter: DeadLetterSpec,
    pub runtime: RuntimeSpec,
    pub checkpoint: Option<CheckpointSpec>,
    /// `[[alerts]]`: rules evaluated on every output row.
    pub alerts: Vec<AlertRuleSpec>,
    /// `[alerting]`: where the rules' alerts go.
    pub alerting: Option<AlertingSpec>,
}

/// Where records that cannot be processed go (`[dead_letter]`).
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterSpec {
    /// A JSON-lines file.
    File { path: String },
    /// A topic: the record as read, with the reason and origin in headers.
    Kafka(KafkaSinkSpec),
}

/// Periodic checkpoints (`[checkpoint]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSpec {
    /// Directory holding one sub-directory per checkpoint.
    pub dir: String,
    /// Wall-clock time between checkpoints (µs).
    pub interval: i64,
    /// Completed checkpoints to keep.
    pub retain: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Generator(GeneratorSpec),
    /// JSON lines; each entry may be a glob.
    File {
        paths: Vec<String>,
    },
    /// JSON lines on standard input.
    Stdin,
    /// JSON records from a Kafka topic.
    Kafka(KafkaSourceSpec),
}

/// Where a Kafka cluster is.
#[derive(Debug, Clone, PartialEq)]
pub enum Bootstrap {
    /// `host:port[,host:port...]`
    Servers(String),
    /// A file holding the address, as written by `tenantflow dev-kafka`; read when the job starts.
    File(String),
}

impl Bootstrap {
    pub fn resolve(&self) -> std::io::Result<String> {
        match self {
            Bootstrap::Servers(s) => Ok(s.clone()),
            Bootstrap::File(f) => std::fs::read_to_string(f).map(|s| s.trim().to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSourceSpec {
    pub bootstrap: Bootstrap,
    pub topic: String,
    /// Consumer group (for offset commits and lag tools); partitions are assigned by tenantflow.
    pub group_id: Option<String>,
    /// Start at the earliest offset (true) or the latest.
    pub from_earliest: bool,
    /// Stop at the end offsets seen at start-up (a bounded run, as for tests and backfills).
    pub bounded: bool,
    /// How long backpressure must hold the source back before its partitions are paused (µs).
    pub pause_after: i64,
    /// librdkafka properties passed through as they are (e.g. `security.protocol`, `sasl.*`).
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSinkSpec {
    pub bootstrap: Bootstrap,
    pub topic: String,
    pub properties: Vec<(String, String)>,
}

/// Rows to a ClickHouse table over HTTP (RowBinary).
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseSinkSpec {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// `table` or `database.table`.
    pub table: String,
    /// Create the table from the output schema if it does not exist.
    pub create_table: bool,
    /// Send a batch once it has this many rows ...
    pub batch_rows: usize,
    /// ... or once its oldest row waited this long (µs).
    pub batch_interval: i64,
}

/// Rows to Redis (see `connectors::redis` for the commands each mode sends).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSinkSpec {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
    pub mode: RedisMode,
    /// The key template (the channel for `pubsub`); it must contain the tenant field.
    pub key: Located<String>,
    /// `hash` and `stream`: the fields written (all output fields when unset).
    pub fields: Option<Vec<Located<String>>>,
    /// `counter`: the increment; `leaderboard`: the score.
    pub value: Option<Located<String>>,
    /// `counter`: a hash field template (HINCRBY); unset increments the key itself (INCRBY).
    pub hash_field: Option<Located<String>>,
    /// `leaderboard`: the member template.
    pub member: Option<Located<String>>,
    /// `leaderboard`: add the score to the member's (ZINCRBY) or replace it (ZADD).
    pub increment: bool,
    /// `leaderboard`: keep only the best N members.
    pub keep_top: Option<u64>,
    /// `stream`: approximate cap on the stream's length (XADD MAXLEN ~).
    pub max_len: Option<u64>,
    /// Expiry set on every key written (µs).
    pub ttl: Option<i64>,
    /// A write goes out once it holds this many rows ...
    pub batch_rows: usize,
    /// ... or once its oldest row waited this long (µs).
    pub batch_interval: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Hash,
    Counter,
    Leaderboard,
    Stream,
    PubSub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorProfile {
    /// Music-streaming events (plays, skips, likes, ...).
    Music,
    /// The benchmark stream: tenant = i % tenants, user = i % users, ts = start + i * interval, value = i % 1000.
    Sequence,
}

impl GeneratorProfile {
    pub fn name(self) -> &'static str {
        match self {
            GeneratorProfile::Music => "music",
            GeneratorProfile::Sequence => "sequence",
        }
    }

    /// The fields this profile produces; a job's schema may declare any subset of them.
    pub fn fields(self) -> &'static [(&'static str, DataType)] {
        use DataType::*;
        match self {
            GeneratorProfile::Music => &[
                ("tenant_id", String),
                ("user_id", String),
                ("track_id", String),
                ("artist_id", String),
                ("country", String),
                ("device", String),
                ("event_type", String),
                ("duration_ms", Int),
                ("amount", Float),
                ("ts", Timestamp),
            ],
            GeneratorProfile::Sequence => &[("tenant", Int), ("user", Int), ("ts", Timestamp), ("value", Int)],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorSpec {
    pub profile: GeneratorProfile,
    /// Total events over all workers; `None` runs forever.
    pub events: Option<u64>,
    /// Events per second over all workers; `None` is as fast as possible.
    pub rate: Option<f64>,
    pub seed: u64,
    pub tenants: u64,
    pub users: u64,
    pub tracks: u64,
    /// Event time of the first event (µs since the epoch).
    pub start_time: i64,
    /// Event-time step between consecutive events (µs).
    pub event_interval: i64,
    pub out_of_order_fraction: f64,
    pub max_delay: i64,
    pub late_fraction: f64,
    pub late_delay: i64,
    /// Fraction of records emitted as malformed JSON-equivalent errors (for dead-letter demos).
    pub malformed_fraction: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchemaSpec {
    pub tenant: Located<String>,
    pub fields: Vec<(Located<String>, DataType)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    Event,
    Processing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Count and drop.
    Drop,
    /// Write the late event to the late output.
    SideOutput,
    /// Re-emit the window's result, updated, while within `allowed_lateness`.
    Update,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimeSpec {
    pub mode: TimeMode,
    pub field: Option<Located<String>>,
    pub max_out_of_orderness: i64,
    pub idle_timeout: Option<i64>,
    pub allowed_lateness: i64,
    pub late_policy: LatePolicy,
    pub late_output: Option<String>,
    /// Where `[time]` was written; `0..0` when the job has no `[time]` table.
    pub key_span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Filter(Located<String>),
    Derive(Vec<(String, Located<String>)>),
    Select(Vec<Located<String>>),
    Window(WindowSpec),
    Pattern(Box<PatternSpec>),
    Score(Box<ScoreSpec>),
    Anomaly(Box<AnomalySpec>),
    Audio(Box<AudioSpec>),
}

/// An `audio` step: features of the audio clip each row carries or names (docs/ml.md).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSpec {
    /// The string field with the clip.
    pub field: Located<String>,
    pub format: AudioFormat,
    /// Samples per second of raw PCM (files carry their own).
    pub sample_rate: u32,
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// A path to an audio file: WAV, FLAC, Ogg Vorbis or MP3, told apart by its bytes
    /// (`wav_path`, a name from when only WAV was read).
    WavPath,
    /// An audio file as `WavPath` reads it, base64 (`wav_base64`).
    WavBase64,
    /// Raw 16-bit little-endian mono PCM, base64.
    Pcm16Base64,
}

/// MFCC means and chroma means an audio step outputs.
pub const AUDIO_MFCC: usize = 20;
pub const AUDIO_CHROMA: usize = 12;

/// An `anomaly` step: scores each value of a series (tenant and key) against the series' own
/// baseline (docs/ml.md).
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalySpec {
    /// The value to watch: an expression over the window's output fields.
    pub value: Located<String>,
    pub method: AnomalyMethod,
    /// Values (seasonal: earlier seasons) a series needs before it is scored.
    pub warmup: usize,
    /// |score| at or above it sets `<as>_is_anomaly`.
    pub threshold: f64,
    pub prefix: String,
    /// The series' time (seasonal phases), a timestamp field; default `window_start`.
    pub time: Option<Located<String>>,
    /// The series' key fields besides the tenant; default the window's.
    pub key_by: Option<Vec<Located<String>>>,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnomalyMethod {
    Ewma {
        alpha: f64,
    },
    Mad {
        window: usize,
    },
    /// `period` and `bucket` in µs.
    Seasonal {
        period: i64,
        bucket: i64,
        seasons: usize,
    },
}

/// A `score` step: runs a model from the registry on each row (docs/ml.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSpec {
    /// Model name in the registry.
    pub model: Located<String>,
    /// A pinned version; without one the job follows the live version.
    pub version: Option<u32>,
    /// One expression per model input column; empty: the model's own feature mapping.
    pub features: Vec<Located<String>>,
    /// Prefix of the output fields `<as>_label`, `<as>_class`, `<as>_probability`, `<as>_score`,
    /// `<as>_drift`.
    pub prefix: String,
    pub runtime: ScoreRuntime,
    /// Rows per model call.
    pub batch_size: usize,
    /// ONNX Runtime's intra-op threads per worker.
    pub threads: usize,
    pub on_missing: OnMissing,
    /// The value a missing feature takes with `on_missing = "default"`.
    pub default: f64,
    /// Also score with the registry's shadow candidate and count disagreements.
    pub shadow: bool,
    /// Rows (over the process's workers) per drift measurement; 0: none.
    pub drift_window: u64,
}

/// Rows per drift measurement unless `drift_window` says otherwise.
pub const DEFAULT_DRIFT_WINDOW: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreRuntime {
    Auto,
    Native,
    Onnx,
}

/// What a score step does with a row whose feature is NULL, not a number, NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// The feature takes the step's `default` (counted).
    Default,
    /// The row is not scored: its output fields are NULL (counted).
    Skip,
}

/// Rows per model call unless `batch_size` says otherwise.
pub const DEFAULT_SCORE_BATCH: usize = 1024;

/// A `pattern` step: complex event processing per tenant and key (docs/cep.md). The pattern
/// text and the maps are checked against the schema by `plan`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternSpec {
    /// e.g. `"fail{3} -> cancel"`.
    pub pattern: Located<String>,
    pub key_by: Vec<Located<String>>,
    /// Longest time from a match's first event to its last (µs).
    pub within: Option<i64>,
    pub after_match: Located<String>,
    /// Partial matches that time out are emitted as rows with `timed_out = true`.
    pub timeouts: bool,
    /// Partial matches kept per key; the oldest are dropped (and counted) beyond it.
    pub max_partial_matches: usize,
    /// Step name -> condition.
    pub define: Vec<(String, Located<String>)>,
    /// Step name -> stop condition of a looping step.
    pub until: Vec<(String, Located<String>)>,
    /// Step name -> contiguity between the events of a looping step.
    pub contiguity: Vec<(String, Located<String>)>,
    /// Output field -> aggregate over the match's events.
    pub measures: Vec<(String, Located<String>)>,
    pub key: String,
    pub span: Range<usize>,
}

/// Partial matches kept per key unless `max_partial_matches` says otherwise.
pub const DEFAULT_MAX_PARTIAL_MATCHES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub key_by: Vec<Located<String>>,
    pub aggregates: Vec<(String, Located<String>)>,
    pub key: String,
    pub span: Range<usize>,
}

/// One `[[sinks]]` entry. Checkpoints record a sink's progress under its `id`, never under its
/// position in the list, so reordering, adding or removing other sinks cannot hand one sink
/// another's state.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    /// `id` in the job file, else derived from the type and destination (`file:out.jsonl`,
    /// `clickhouse:db.table`, `redis:<key template>`, `kafka:<topic>`, `stdout`, `discard`).
    pub id: String,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// A readable table (or JSON lines) on standard output.
    Stdout { json: bool },
    /// JSON lines written to a file (created, or truncated, when the job starts writing).
    File { path: String },
    /// JSON rows to a Kafka topic, keyed by tenant and key fields.
    Kafka(KafkaSinkSpec),
    /// Drops rows (benchmarks); `delay_per_row` (µs, may be fractional) makes it a slow sink for
    /// backpressure tests.
    Discard { delay_per_row: f64 },
    /// Rows to a ClickHouse table, idempotently (see `connectors::clickhouse`).
    ClickHouse(ClickHouseSinkSpec),
    /// Rows to Redis: hashes, counters, leaderboards, streams or pub/sub (see `connectors::redis`).
    Redis(Box<RedisSinkSpec>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSpec {
    /// Records a source reads before yielding to the rest of the dataflow.
    pub batch_size: usize,
    /// How far (event time, µs) a source may run ahead of what the sinks have completed.
    pub max_lead: Option<i64>,
}

/// Reads a job file. `overrides` are `key.path=value` settings applied on top (`--set`).
pub fn parse_job(file: &str, text: &str, overrides: &[String]) -> Result<JobSpec, JobErrors> {
    let mut cx = Cx { file: file.to_string(), text, errors: Vec::new() };
    let mut root = match DeTable::parse(text) {
        Ok(t) => t.into_inner(),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = cx.position(span.start);
            let message = e.message().trim().to_string();
            return Err(JobErrors(vec![JobError {
                file: cx.file,
                line,
                column,
                key: "(syntax)".into(),
                message: format!("invalid TOML: {message}"),
            }]));
        }
    };
    for o in overrides {
        if let Err(message) = apply_override(&mut root, o) {
            cx.errors.push(JobError { file: cx.file.clone(), line: 0, column: 0, key: o.clone(), message });
        }
    }
    if !cx.errors.is_empty() {
        return Err(JobErrors(cx.errors));
    }
    let root_t = T { map: &root, path: String::new(), span: 0..0 };
    let spec = read_job(&mut cx, &root_t, file);
    match spec {
        Some(spec) if cx.errors.is_empty() => Ok(spec),
        _ => Err(JobErrors(cx.errors)),
    }
}

const OVERRIDE: Range<usize> = usize::MAX..usize::MAX;

fn apply_override<'i>(root: &mut DeTable<'i>, setting: &'i str) -> Result<(), String> {
    let Some((path, raw)) = setting.split_once('=') else {
        return Err("expected key=value, e.g. --set source.events=1000".into());
    };
    // Accept bare strings (`--set sinks[0].path=out.jsonl`) as well as TOML values.
    let value = match DeValue::parse(raw) {
        Ok(v) => v.into_inner(),
        Err(_) => DeValue::String(Cow::Borrowed(raw)),
    };
    let segments: Vec<&str> = path.trim().split('.').collect();
    let mut table = root;
    for (n, seg) in segments.iter().enumerate() {
        let (name, index) = match seg.split_once('[') {
            Some((name, rest)) => {
                let idx: usize = rest.trim_end_matches(']').parse().map_err(|_| format!("bad index in `{seg}`"))?;
                (name, Some(idx))
            }
            None => (*seg, None),
        };
        let last = n + 1 == segments.len();
        if last && index.is_none() {
            table.insert(Spanned::new(OVERRIDE, Cow::Owned(name.to_string())), Spanned::new(OVERRIDE, value));
            return Ok(());
        }
        let key = Spanned::new(OVERRIDE, Cow::Owned(name.to_string()));
        let entry = table.entry(key).or_insert_with(|| Spanned::new(OVERRIDE, DeValue::Table(DeTable::new())));
        let next = match (entry.get_mut(), index) {
            (DeValue::Table(t), None) => t,
            (DeValue::Array(a), Some(i)) => match a.get_mut(i).map(|v| v.get_mut()) {
                Some(DeValue::Table(t)) => t,
                _ => return Err(format!("`{name}[{i}]` is not a table")),
            },
            _ => return Err(format!("`{name}` is not a table")),
        };
        if last {
            return Err("expected key=value".into());
        }
        table = next;
    }
    Ok(())
}

struct Cx<'a> {
    file: String,
    text: &'a str,
    errors: Vec<JobError>,
}

impl Cx<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        if offset == usize::MAX {
            return (0, 0);
        }
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn err(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(JobError { file: self.file.clone(), line, column, key: key.to_string(), message: message.into() });
    }
}

/// Builds the error for a problem inside a string value (an expression), pointing at the exact
/// character within the file.
pub fn value_error(file: &str, text: &str, at: &Located<String>, line_in_value: u64, col_in_value: u64, message: String) -> JobError {
    let mut cx = Cx { file: file.to_string(), text, errors: Vec::new() };
    if at.span.start == usize::MAX {
        cx.err(&at.span, &at.key, message);
        return cx.errors.remove(0);
    }
    // Skip the opening quote(s), then walk the raw value to the reported line and column.
    let raw = &text[at.span.clone()];
    let mut offset = at.span.start;
    let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
        3
    } else if raw.starts_with('"') || raw.starts_with('\'') {
        1
    } else {
        0
    };
    offset += quote;
    if quote == 3 && text[offset..].starts_with('\n') {
        offset += 1;
    }
    let (mut l, mut c) = (1u64, 1u64);
    for ch in text[offset..at.span.end].chars() {
        if l == line_in_value && c == col_in_value {
            break;
        }
        offset += ch.len_utf8();
        if ch == '\n' {
            l += 1;
            c = 1;
        } else {
            c += 1;
        }
    }
    cx.err(&(offset..offset), &at.key, message);
    cx.errors.remove(0)
}

/// A table being read, with its dotted path.
struct T<'t, 'i> {
    map: &'t DeTable<'i>,
    path: String,
    span: Range<usize>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'t, 'i> T<'t, 'i> {
    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn get(&self, k: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.map.iter().find(|(key, _)| key.get_ref().as_ref() == k).map(|(_, v)| v)
    }

    /// Reports keys not in `allowed`.
    fn check_keys(&self, cx: &mut Cx, allowed: &[&str]) {
        for (k, _) in self.map.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                cx.err(
                    &k.span(),
                    &self.key(k.get_ref()),
                    format!("unknown key `{}` (expected one of: {})", k.get_ref(), allowed.join(", ")),
                );
            }
        }
    }

    fn missing(&self, cx: &mut Cx, k: &str, expected: &str) {
        let what = if self.path.is_empty() { "the job file".to_string() } else { format!("[{}]", self.path) };
        cx.err(&self.span, &self.key(k), format!("missing key `{k}` in {what} (expected {expected})"));
    }

    fn string(&self, cx: &mut Cx, k: &str) -> Option<Located<String>> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Located { value: s.to_string(), key: self.key(k), span: v.span() }),
            other => {
                cx.err(&v.span(), &self.key(k), format!("expected a string, found {}", type_name(other)));
                None
            }
        }
    }

    fn required_string(&self, cx: &mut Cx, k: &str, expected: &str) -> Option<Located<String>> {
        if self.get(k).is_none() {
            self.missing(cx, k, expected);
            return None;
        }
        self.string(cx, k)
    }

    fn choice<E: Copy>(&self, cx: &mut Cx, k: &str, options: &[(&str, E)], default: Option<E>) -> Option<E> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let Some(s) = self.string(cx, k) else {
            if self.get(k).is_none() {
                if default.is_none() {
                    self.missing(cx, k, &format!("one of: {}", names.join(", ")));
                }
                return default;
            }
            return None;
        };
        match options.iter().find(|(n, _)| *n == s.value) {
            Some((_, e)) => Some(*e),
            None => {
                cx.err(&s.span, &s.key, format!("unknown value \"{}\" (expected one of: {})", s.value, names.join(", ")));
                None
            }
        }
    }

    fn int(&self, cx: &mut Cx, k: &str, min: i64) -> Option<i64> {
        let v = self.get(k)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= min => Some(n),
            Some(n) => {
                cx.err(&v.span(), &self.key(k), format!("expected an integer >= {min}, found {n}"));
                None
            }
            None => {
                cx.err(&v.span(), &self.key(k), format!("expected an integer, found {}", type_name(v.get_ref())));
                None
            }
        }
    }

    fn float(&self, cx: &mut Cx, k: &str, lo: f64, hi: f64) -> Option<f64> {
        let v = self.get(k)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok().map(|i| i as f64),
            DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
            _ => None,
        };
        match n {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            Some(n) => {
                cx.err(&v.span(), &self.key(k), format!("expected a number between {lo} and {hi}, found {n}"));
                None
            }
            None => {
                cx.err(&v.span(), &self.key(k), format!("expected a number, found {}", type_name(v.get_ref())));
                None
            }
        }
    }

    fn boolean(&self, cx: &mut Cx, k: &str) -> Option<bool> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                cx.err(&v.span(), &self.key(k), format!("expected true or false, found {}", type_name(other)));
                None
            }
        }
    }

    fn duration(&self, cx: &mut Cx, k: &str) -> Option<i64> {
        let s = self.string(cx, k)?;
        match time::parse_duration(&s.value) {
            Some(d) if (0..=time::MAX_DURATION).contains(&d) => Some(d),
            _ => {
                cx.err(
                    &s.span,
                    &s.key,
                    format!("invalid duration \"{}\" (expected e.g. \"500ms\", \"5s\", \"1m\", \"1h30m\", at most 36500d)", s.value),
                );
                None
            }
        }
    }

    fn positive_duration(&self, cx: &mut Cx, k: &str, expected: &str) -> Option<i64> {
        if self.get(k).is_none() {
            self.missing(cx, k, expected);
            return None;
        }
        let d = self.duration(cx, k)?;
        if d == 0 {
            let v = self.get(k)?;
            cx.err(&v.span(), &self.key(k), "expected a duration greater than zero");
            return None;
        }
        Some(d)
    }

    fn string_list(&self, cx: &mut Cx, k: &str) -> Option<Vec<Located<String>>> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => {
                            out.push(Located { value: s.to_string(), key: format!("{}[{i}]", self.key(k)), span: item.span() })
                        }
                        other => {
                            cx.err(&item.span(), &format!("{}[{i}]", self.key(k)), format!("expected a string, found {}", type_name(other)))
                        }
                    }
                }
                Some(out)
            }
            DeValue::String(s) => Some(vec![Located { value: s.to_string(), key: self.key(k), span: v.span() }]),
            other => {
                cx.err(&v.span(), &self.key(k), format!("expected an array of strings, found {}", type_name(other)));
                None
            }
        }
    }

    fn table(&self, cx: &mut Cx, k: &str) -> Option<T<'t, 'i>> {
        let v = self.get(k)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(T { map: t, path: self.key(k), span: v.span() }),
            other => {
                cx.err(&v.span(), &self.key(k), format!("expected a table, found {}", type_name(other)));
                None
            }
        }
    }

    /// An array of tables (`[[steps]]`).
    fn tables(&self, cx: &mut Cx, k: &str) -> Vec<T<'t, 'i>> {
        let Some(v) = self.get(k) else { return Vec::new() };
        match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item.get_ref() {
                    DeValue::Table(t) => Some(T { map: t, path: format!("{}[{i}]", self.key(k)), span: item.span() }),
                    other => {
                        cx.err(&item.span(), &format!("{}[{i}]", self.key(k)), format!("expected a table, found {}", type_name(other)));
                        None
                    }
                })
                .collect(),
            other => {
                cx.err(&v.span(), &self.key(k), format!("expected an array of tables ([[{k}]]), found {}", type_name(other)));
                Vec::new()
            }
        }
    }

    /// A table of `name = "string"` entries, in file order.
    fn string_map(&self, cx: &mut Cx, k: &str) -> Option<Vec<(String, Located<String>)>> {
        let t = self.table(cx, k)?;
        let mut out = Vec::new();
        for (name, v) in t.map.iter() {
            let key = t.key(name.get_ref());
            match v.get_ref() {
                DeValue::String(s) => out.push((name.get_ref().to_string(), Located { value: s.to_string(), key, span: v.span() })),
                other => cx.err(&v.span(), &key, format!("expected a string, found {}", type_name(other))),
            }
        }
        Some(out)
    }
}

fn read_job(cx: &mut Cx, root: &T, file: &str) -> Option<JobSpec> {
    root.check_keys(
        cx,
        &[
            "name",
            "description",
            "source",
            "schema",
            "time",
            "steps",
            "sinks",
            "dead_letter",
            "runtime",
            "checkpoint",
            "alerts",
            "alerting",
        ],
    );
    let name = root
        .string(cx, "name")
        .map(|s| s.value)
        .unwrap_or_else(|| std::path::Path::new(file).file_stem().map_or("job".to_string(), |s| s.to_string_lossy().into_owned()));
    root.string(cx, "description");

    let source = match root.table(cx, "source") {
        Some(t) => read_source(cx, &t),
        None => {
            if root.get("source").is_none() {
                root.missing(cx, "source", "a [source] table");
            }
            None
        }
    };
    let schema = match root.table(cx, "schema") {
        Some(t) => read_schema(cx, &t),
        None => {
            if root.get("schema").is_none() {
                root.missing(cx, "schema", "a [schema] table with `tenant` and [schema.fields]");
            }
            None
        }
    };
    let time = read_time(cx, root);
    let mut steps = Vec::new();
    for t in root.tables(cx, "steps") {
        if let Some(s) = read_step(cx, &t) {
            steps.push(s);
        }
    }
    let mut sinks = Vec::new();
    let mut sink_ids: Vec<(String, String)> = Vec::new();
    for t in root.tables(cx, "sinks") {
        let kind = read_sink(cx, &t);
        let id = read_sink_id(cx, &t, kind.as_ref());
        if let Some(id) = &id {
            if let Some((_, other)) = sink_ids.iter().find(|(i, _)| i == &id.value) {
                let message = format!(
                    "{other} has the id \"{}\" too: give one of them its own `id` (checkpoints record each sink's progress by it)",
                    id.value
                );
                cx.err(&id.span, &id.key, message);
            }
            sink_ids.push((id.value.clone(), t.path.clone()));
        }
        if let (Some(kind), Some(id)) = (kind, id) {
            sinks.push(SinkSpec { id: id.value, kind });
        }
    }
    if sinks.is_empty() && root.get("sinks").is_none() {
        sinks.push(SinkSpec { id: "stdout".into(), kind: SinkKind::Stdout { json: false } });
    }
    let default_path = format!("{name}.dead-letters.jsonl");
    let dead_letter = match root.table(cx, "dead_letter") {
        Some(t) => match t.choice(cx, "type", &[("file", false), ("kafka", true)], Some(false)) {
            Some(true) => {
                t.check_keys(cx, &["type", "bootstrap_servers", "bootstrap_file", "topic", "properties"]);
                let bootstrap = read_bootstrap(cx, &t);
                let topic = t.required_string(cx, "topic", "the dead-letter topic");
                let properties = read_properties(cx, &t);
                bootstrap
                    .zip(topic)
                    .map(|(bootstrap, topic)| DeadLetterSpec::Kafka(KafkaSinkSpec { bootstrap, topic: topic.value, properties }))
            }
            Some(false) => {
                t.check_keys(cx, &["type", "path"]);
                Some(DeadLetterSpec::File { path: t.string(cx, "path").map_or(default_path, |s| s.value) })
            }
            None => None,
        },
        None => Some(DeadLetterSpec::File { path: default_path }),
    };
    let runtime = match root.table(cx, "runtime") {
        Some(t) => {
            t.check_keys(cx, &["batch_size", "max_lead"]);
            RuntimeSpec { batch_size: t.int(cx, "batch_size", 1).unwrap_or(16_384) as usize, max_lead: t.duration(cx, "max_lead") }
        }
        None => RuntimeSpec { batch_size: 16_384, max_lead: None },
    };
    let checkpoint = root.table(cx, "checkpoint").and_then(|t| {
        t.check_keys(cx, &["dir", "interval", "retain"]);
        let dir = t.required_string(cx, "dir", "the checkpoint directory, e.g. \"checkpoints/plays\"")?.value;
        let interval = match t.get("interval") {
            Some(_) => t.positive_duration(cx, "interval", "a duration")?,
            None => 10 * time::MICROS_PER_SEC,
        };
        Some(CheckpointSpec { dir, interval, retain: t.int(cx, "retain", 1).unwrap_or(3) as usize })
    });
    let alerts: Vec<AlertRuleSpec> = root.tables(cx, "alerts").iter().filter_map(|t| read_alert_rule(cx, t)).collect();
    let alerting = root.table(cx, "alerting").and_then(|t| read_alerting(cx, &t));
    if !alerts.is_empty() && alerting.is_none() && root.get("alerting").is_none() {
        root.missing(cx, "alerting", "an [alerting] table with [alerting.route] and [[alerting.receivers]] for the [[alerts]] rules");
    }
    Some(JobSpec {
        name,
        source: source?,
        schema: schema?,
        time: time?,
        steps,
        sinks,
        dead_letter: dead_letter?,
        runtime,
        checkpoint,
        alerts,
        alerting,
    })
}

fn read_source(cx: &mut Cx, t: &T) -> Option<SourceSpec> {
    #[derive(Clone, Copy)]
    enum K {
        Gen,
        File,
        Stdin,
        Kafka,
    }
    let kind = t.choice(cx, "type", &[("generator", K::Gen), ("file", K::File), ("stdin", K::Stdin), ("kafka", K::Kafka)], None)?;
    match kind {
        K::Gen => {
            t.check_keys(
                cx,
                &[
                    "type",
                    "profile",
                    "events",
                    "rate",
                    "seed",
                    "tenants",
                    "users",
                    "tracks",
                    "start_time",
                    "event_interval",
                    "out_of_order_fraction",
                    "max_delay",
                    "late_fraction",
                    "late_delay",
                    "malformed_fraction",
                ],
            );
            let profile = t.choice(
                cx,
                "profile",
                &[("music", GeneratorProfile::Music), ("sequence", GeneratorProfile::Sequence)],
                Some(GeneratorProfile::Music),
            )?;
            let start_time = match t.string(cx, "start_time") {
                Some(s) => match time::parse_timestamp(&s.value) {
                    Some(ts) => ts,
                    None => {
                        cx.err(
                            &s.span,
                            &s.key,
                            format!("invalid timestamp \"{}\" (expected RFC 3339, e.g. \"2026-01-01T00:00:00Z\")", s.value),
                        );
                        0
                    }
                },
                None => time::parse_timestamp("2026-01-01T00:00:00Z").unwrap_or(0),
            };
            Some(SourceSpec::Generator(GeneratorSpec {
                profile,
                events: t.int(cx, "events", 0).map(|n| n as u64).filter(|&n| n > 0),
                rate: t.float(cx, "rate", 0.0, 1e12).filter(|&r| r > 0.0),
                seed: t.int(cx, "seed", 0).unwrap_or(42) as u64,
                tenants: t.int(cx, "tenants", 1).unwrap_or(if profile == GeneratorProfile::Sequence { 100 } else { 20 }) as u64,
                users: t.int(cx, "users", 1).unwrap_or(if profile == GeneratorProfile::Sequence { 100_000 } else { 5_000 }) as u64,
                tracks: t.int(cx, "tracks", 1).unwrap_or(2_000) as u64,
                start_time,
                event_interval: t.duration(cx, "event_interval").unwrap_or(if profile == GeneratorProfile::Sequence { 1 } else { 1_000 }),
                out_of_order_fraction: t.float(cx, "out_of_order_fraction", 0.0, 1.0).unwrap_or(0.0),
                max_delay: t.duration(cx, "max_delay").unwrap_or(time::MICROS_PER_SEC),
                late_fraction: t.float(cx, "late_fraction", 0.0, 1.0).unwrap_or(0.0),
                late_delay: t.duration(cx, "late_delay").unwrap_or(60 * time::MICROS_PER_SEC),
                malformed_fraction: t.float(cx, "malformed_fraction", 0.0, 1.0).unwrap_or(0.0),
            }))
        }
        K::File => {
            t.check_keys(cx, &["type", "path", "paths", "format"]);
            t.choice(cx, "format", &[("json", ())], Some(()));
            let mut paths: Vec<String> = t.string_list(cx, "paths").unwrap_or_default().into_iter().map(|p| p.value).collect();
            if let Some(p) = t.string(cx, "path") {
                paths.push(p.value);
            }
            if paths.is_empty() {
                match t.get("paths") {
                    Some(v) if t.get("path").is_none() => cx.err(&v.span(), &t.key("paths"), "expected at least one file path or glob"),
                    _ if t.get("path").is_none() => t.missing(cx, "path", "a file path or glob, e.g. \"events/*.jsonl\""),
                    _ => {}
                }
            }
            Some(SourceSpec::File { paths })
        }
        K::Stdin => {
            t.check_keys(cx, &["type", "format"]);
            t.choice(cx, "format", &[("json", ())], Some(()));
            Some(SourceSpec::Stdin)
        }
        K::Kafka => {
            t.check_keys(
                cx,
                &[
                    "type",
                    "format",
                    "bootstrap_servers",
                    "bootstrap_file",
                    "topic",
                    "group_id",
                    "start",
                    "bounded",
                    "pause_after",
                    "properties",
                ],
            );
            t.choice(cx, "format", &[("json", ())], Some(()));
            let bootstrap = read_bootstrap(cx, t)?;
            let topic = t.required_string(cx, "topic", "the topic to read")?.value;
            let from_earliest = t.choice(cx, "start", &[("earliest", true), ("latest", false)], Some(true))?;
            Some(SourceSpec::Kafka(KafkaSourceSpec {
                bootstrap,
                topic,
                group_id: t.string(cx, "group_id").map(|g| g.value),
                from_earliest,
                bounded: t.boolean(cx, "bounded").unwrap_or(false),
                pause_after: t.duration(cx, "pause_after").unwrap_or(time::MICROS_PER_SEC),
                properties: read_properties(cx, t),
            }))
        }
    }
}

fn read_bootstrap(cx: &mut Cx, t: &T) -> Option<Bootstrap> {
    match (t.string(cx, "bootstrap_servers"), t.string(cx, "bootstrap_file")) {
        (Some(s), None) => Some(Bootstrap::Servers(s.value)),
        (None, Some(f)) => Some(Bootstrap::File(f.value)),
        (Some(_), Some(f)) => {
            cx.err(&f.span, &f.key, "give either bootstrap_servers or bootstrap_file, not both");
            None
        }
        (None, None) => {
            if t.get("bootstrap_servers").is_none() && t.get("bootstrap_file").is_none() {
                t.missing(
                    cx,
                    "bootstrap_servers",
                    "\"host:port[,host:port]\" (or bootstrap_file = a file written by `tenantflow dev-kafka`)",
                );
            }
            None
        }
    }
}

/// `[... .properties]`: librdkafka settings as strings (numbers and booleans are converted).
fn read_properties(cx: &mut Cx, t: &T) -> Vec<(String, String)> {
    let Some(p) = t.table(cx, "properties") else { return Vec::new() };
    let mut out = Vec::new();
    for (k, v) in p.map.iter() {
        let value = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i.as_str().replace('_', ""),
            DeValue::Boolean(b) => b.to_string(),
            other => {
                cx.err(&v.span(), &p.key(k.get_ref()), format!("expected a string, number or boolean, found {}", type_name(other)));
                continue;
            }
        };
        out.push((k.get_ref().to_string(), value));
    }
    out
}

fn read_schema(cx: &mut Cx, t: &T) -> Option<SchemaSpec> {
    t.check_keys(cx, &["tenant", "fields"]);
    let tenant = t.required_string(cx, "tenant", "the name of the field holding the tenant id");
    let mut fields = Vec::new();
    match t.string_map(cx, "fields") {
        Some(map) => {
            for (name, ty) in map {
                match DataType::parse(&ty.value) {
                    Some(dt) => fields.push((Located { value: name, key: ty.key.clone(), span: ty.span.clone() }, dt)),
                    None => cx.err(&ty.span, &ty.key, format!("unknown type \"{}\" (expected one of: {})", ty.value, DataType::NAMES)),
                }
            }
        }
        None => {
            if t.get("fields").is_none() {
                t.missing(cx, "fields", "a [schema.fields] table of name = \"type\"");
            }
        }
    }
    Some(SchemaSpec { tenant: tenant?, fields })
}

fn read_time(cx: &mut Cx, root: &T) -> Option<TimeSpec> {
    let Some(t) = root.table(cx, "time") else {
        if root.get("time").is_some() {
            return None;
        }
        return Some(TimeSpec {
            mode: TimeMode::Processing,
            field: None,
            max_out_of_orderness: 0,
            idle_timeout: None,
            allowed_lateness: 0,
            late_policy: LatePolicy::Drop,
            late_output: None,
            key_span: 0..0,
        });
    };
    t.check_keys(cx, &["mode", "field", "max_out_of_orderness", "idle_timeout", "allowed_lateness", "late_policy", "late_output"]);
    let mode = t.choice(cx, "mode", &[("event", TimeMode::Event), ("processing", TimeMode::Processing)], Some(TimeMode::Event))?;
    let field = t.string(cx, "field");
    let late_policy = t.choice(
        cx,
        "late_policy",
        &[("drop", LatePolicy::Drop), ("side_output", LatePolicy::SideOutput), ("update", LatePolicy::Update)],
        Some(LatePolicy::Drop),
    )?;
    let late_output = t.string(cx, "late_output");
    if late_policy == LatePolicy::SideOutput && late_output.is_none() {
        t.missing(cx, "late_output", "a file path for late events when late_policy = \"side_output\"");
    }
    let allowed_lateness = t.duration(cx, "allowed_lateness").unwrap_or(0);
    if late_policy == LatePolicy::Update && allowed_lateness == 0 {
        let span = t.get("late_policy").map_or(t.span.clone(), |v| v.span());
        cx.err(
            &span,
            &t.key("late_policy"),
            "late_policy = \"update\" needs `allowed_lateness` greater than zero (how long a fired window keeps accepting updates)",
        );
    }
    if mode == TimeMode::Event && field.is_none() && t.get("field").is_none() {
        t.missing(cx, "field", "the timestamp field that carries event time (or mode = \"processing\")");
    }
    Some(TimeSpec {
        mode,
        field,
        max_out_of_orderness: t.duration(cx, "max_out_of_orderness").unwrap_or(0),
        idle_timeout: t.duration(cx, "idle_timeout"),
        allowed_lateness,
        late_policy,
        late_output: late_output.map(|l| l.value),
        key_span: t.span.clone(),
    })
}

fn read_step(cx: &mut Cx, t: &T) -> Option<Step> {
    let verbs = ["filter", "derive", "select", "window", "pattern", "score", "anomaly", "audio"];
    let present: Vec<&str> = verbs.iter().copied().filter(|v| t.get(v).is_some()).collect();
    match present.as_slice() {
        ["filter"] => {
            t.check_keys(cx, &["filter"]);
            t.string(cx, "filter").map(Step::Filter)
        }
        ["derive"] => {
            t.check_keys(cx, &["derive"]);
            t.string_map(cx, "derive").map(Step::Derive)
        }
        ["select"] => {
            t.check_keys(cx, &["select"]);
            t.string_list(cx, "select").map(Step::Select)
        }
        ["window"] => {
            t.check_keys(cx, &["window", "key_by", "aggregates"]);
            let w = t.table(cx, "window")?;
            w.check_keys(cx, &["type", "size", "slide", "gap"]);
            #[derive(Clone, Copy)]
            enum K {
                Tumbling,
                Sliding,
                Session,
            }
            let kind = w.choice(
                cx,
                "type",
                &[("tumbling", K::Tumbling), ("sliding", K::Sliding), ("hopping", K::Sliding), ("session", K::Session)],
                None,
            )?;
            let kind = match kind {
                K::Tumbling => WindowKind::Tumbling { size: w.positive_duration(cx, "size", "the window length, e.g. \"1m\"")? },
                K::Sliding => {
                    let size = w.positive_duration(cx, "size", "the window length, e.g. \"10m\"")?;
                    let slide = w.positive_duration(cx, "slide", "how often a window starts, e.g. \"1m\"")?;
                    if slide > size {
                        let span = w.get("slide").map_or(w.span.clone(), |v| v.span());
                        cx.err(&span, &w.key("slide"), "expected `slide` no larger than `size`");
                        return None;
                    }
                    WindowKind::Sliding { size, slide }
                }
                K::Session => {
                    WindowKind::Session { gap: w.positive_duration(cx, "gap", "the inactivity gap that closes a session, e.g. \"30m\"")? }
                }
            };
            let key_by = t.string_list(cx, "key_by").unwrap_or_default();
            let aggregates = match (t.get("aggregates").is_some(), t.string_map(cx, "aggregates")) {
                (_, Some(a)) if !a.is_empty() => a,
                // Present but not a table: string_map has reported it.
                (true, None) => return None,
                _ => {
                    t.missing(cx, "aggregates", "a table of name = \"aggregate(expression)\", e.g. plays = \"count(*)\"");
                    return None;
                }
            };
            Some(Step::Window(WindowSpec { kind, key_by, aggregates, key: t.key("window"), span: w.span.clone() }))
        }
        ["pattern"] => read_pattern(cx, t).map(|p| Step::Pattern(Box::new(p))),
        ["score"] => read_score(cx, t).map(|s| Step::Score(Box::new(s))),
        ["anomaly"] => read_anomaly(cx, t).map(|s| Step::Anomaly(Box::new(s))),
        ["audio"] => read_audio(cx, t).map(|s| Step::Audio(Box::new(s))),
        [] => {
            cx.err(&t.span, &t.path, format!("a step needs one of: {}", verbs.join(", ")));
            None
        }
        _ => {
            cx.err(&t.span, &t.path, format!("a step has exactly one of {}; found {}", verbs.join(", "), present.join(" and ")));
            None
        }
    }
}

fn read_pattern(cx: &mut Cx, t: &T) -> Option<PatternSpec> {
    t.check_keys(
        cx,
        &["pattern", "key_by", "within", "after_match", "timeouts", "max_partial_matches", "define", "until", "contiguity", "measures"],
    );
    let pattern = t.required_string(cx, "pattern", "a sequence of steps, e.g. \"fail{3} -> cancel\"")?;
    let within = match t.get("within") {
        Some(_) => Some(t.positive_duration(cx, "within", "how long a match may take, e.g. \"30m\"")?),
        None => None,
    };
    let after_match = t.string(cx, "after_match").unwrap_or(Located {
        value: "skip_past_last_event".into(),
        key: t.key("after_match"),
        span: t.span.clone(),
    });
    let max_partial_matches = t.int(cx, "max_partial_matches", 1).map_or(DEFAULT_MAX_PARTIAL_MATCHES, |n| n as usize);
    let map = |cx: &mut Cx, k: &str| if t.get(k).is_some() { t.string_map(cx, k).unwrap_or_default() } else { Vec::new() };
    Some(PatternSpec {
        key_by: t.string_list(cx, "key_by").unwrap_or_default(),
        within,
        after_match,
        timeouts: t.boolean(cx, "timeouts").unwrap_or(false),
        max_partial_matches,
        define: map(cx, "define"),
        until: map(cx, "until"),
        contiguity: map(cx, "contiguity"),
        measures: map(cx, "measures"),
        key: t.key("pattern"),
        span: pattern.span.clone(),
        pattern,
    })
}

fn is_prefix(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `as` key of steps that add fields: the prefix of their names.
fn read_prefix(cx: &mut Cx, t: &T, default: impl FnOnce() -> String) -> Option<String> {
    match t.string(cx, "as") {
        Some(p) if is_prefix(&p.value) => Some(p.value),
        Some(p) => {
            cx.err(&p.span, &p.key, "expected a field name prefix: letters, digits and `_`");
            None
        }
        None => Some(default()),
    }
}

fn read_score(cx: &mut Cx, t: &T) -> Option<ScoreSpec> {
    t.check_keys(
        cx,
        &["score", "version", "features", "as", "runtime", "batch_size", "threads", "on_missing", "default", "shadow", "drift_window"],
    );
    let model = t.required_string(cx, "score", "the name of a model in the registry, e.g. \"churn-risk\"")?;
    let runtime = t.choice(
        cx,
        "runtime",
        &[("auto", ScoreRuntime::Auto), ("native", ScoreRuntime::Native), ("onnx", ScoreRuntime::Onnx)],
        Some(ScoreRuntime::Auto),
    )?;
    let on_missing = t.choice(cx, "on_missing", &[("default", OnMissing::Default), ("skip", OnMissing::Skip)], Some(OnMissing::Default))?;
    let prefix = read_prefix(cx, t, || model.value.replace('-', "_"))?;
    Some(ScoreSpec {
        version: t.int(cx, "version", 1).map(|v| v.min(u32::MAX as i64) as u32),
        features: if t.get("features").is_some() { t.string_list(cx, "features").unwrap_or_default() } else { Vec::new() },
        prefix,
        runtime,
        batch_size: t.int(cx, "batch_size", 1).map_or(DEFAULT_SCORE_BATCH, |n| n.min(1 << 20) as usize),
        threads: t.int(cx, "threads", 1).map_or(1, |n| n.min(256) as usize),
        on_missing,
        default: t.float(cx, "default", f64::MIN, f64::MAX).unwrap_or(0.0),
        shadow: t.boolean(cx, "shadow").unwrap_or(true),
        drift_window: t.int(cx, "drift_window", 0).map_or(DEFAULT_DRIFT_WINDOW, |n| n as u64),
        model,
    })
}

fn read_anomaly(cx: &mut Cx, t: &T) -> Option<AnomalySpec> {
    t.check_keys(
        cx,
        &["anomaly", "method", "alpha", "history", "period", "bucket", "seasons", "warmup", "threshold", "as", "time", "key_by"],
    );
    let value = t.required_string(cx, "anomaly", "the value to watch, e.g. \"plays\"")?;
    #[derive(Clone, Copy)]
    enum M {
        Ewma,
        Mad,
        Seasonal,
    }
    let m = t.choice(cx, "method", &[("ewma", M::Ewma), ("mad", M::Mad), ("seasonal", M::Seasonal)], Some(M::Ewma))?;
    let (method, warmup) = match m {
        M::Ewma => (AnomalyMethod::Ewma { alpha: t.float(cx, "alpha", 1e-6, 1.0).unwrap_or(0.1) }, 10),
        M::Mad => (AnomalyMethod::Mad { window: t.int(cx, "history", 3).map_or(100, |n| n.min(1 << 20) as usize) }, 10),
        M::Seasonal => {
            let period = t.positive_duration(cx, "period", "the season's length, e.g. \"7d\"")?;
            let bucket = match t.get("bucket") {
                Some(_) => t.positive_duration(cx, "bucket", "the phase's length, e.g. \"1h\"")?,
                None => 3_600_000_000,
            };
            if bucket > period || period % bucket != 0 {
                let span = t.get("bucket").map_or(t.span.clone(), |v| v.span());
                cx.err(&span, &t.key("bucket"), "expected a `bucket` that divides `period` (e.g. 1h in 7d)");
                return None;
            }
            (AnomalyMethod::Seasonal { period, bucket, seasons: t.int(cx, "seasons", 1).map_or(4, |n| n.min(1000) as usize) }, 2)
        }
    };
    // A watched field names its outputs (`plays_score`); an expression gives `anomaly_score`.
    let prefix = read_prefix(cx, t, || if is_prefix(&value.value) { value.value.clone() } else { "anomaly".into() })?;
    Some(AnomalySpec {
        warmup: t.int(cx, "warmup", 1).map_or(warmup, |n| n.min(1 << 20) as usize),
        threshold: t.float(cx, "threshold", 0.0, f64::MAX).unwrap_or(3.0),
        prefix,
        time: t.string(cx, "time"),
        key_by: if t.get("key_by").is_some() { t.string_list(cx, "key_by") } else { None },
        method,
        key: t.key("anomaly"),
        value,
    })
}

fn read_audio(cx: &mut Cx, t: &T) -> Option<AudioSpec> {
    t.check_keys(cx, &["audio", "format", "sample_rate", "as"]);
    let field = t.required_string(cx, "audio", "the string field with the clip, e.g. \"clip_path\"")?;
    let format = t.choice(
        cx,
        "format",
        &[("wav_path", AudioFormat::WavPath), ("wav_base64", AudioFormat::WavBase64), ("pcm16_base64", AudioFormat::Pcm16Base64)],
        Some(AudioFormat::WavPath),
    )?;
    let prefix = read_prefix(cx, t, || "audio".into())?;
    Some(AudioSpec { sample_rate: t.int(cx, "sample_rate", 1000).map_or(22_050, |n| n.min(384_000) as u32), format, prefix, field })
}

fn read_sink(cx: &mut Cx, t: &T) -> Option<SinkKind> {
    #[derive(Clone, Copy)]
    enum K {
        Stdout,
        File,
        Kafka,
        Discard,
        ClickHouse,
        Redis,
    }
    let kinds = [
        ("stdout", K::Stdout),
        ("file", K::File),
        ("kafka", K::Kafka),
        ("discard", K::Discard),
        ("clickhouse", K::ClickHouse),
        ("redis", K::Redis),
    ];
    match t.choice(cx, "type", &kinds, None)? {
        K::Redis => read_redis_sink(cx, t).map(|r| SinkKind::Redis(Box::new(r))),
        K::ClickHouse => {
            t.check_keys(cx, &["type", "url", "table", "create_table", "batch_rows", "batch_interval", "id"]);
            let url = t.required_string(cx, "url", "ClickHouse's HTTP address, e.g. \"http://127.0.0.1:8123\"")?;
            if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
                cx.err(&url.span, &url.key, format!("expected an http:// or https:// URL, found \"{}\"", url.value));
                return None;
            }
            let table = t.required_string(cx, "table", "the table, e.g. \"analytics.plays\"")?;
            let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !table.value.split('.').all(valid) || table.value.split('.').count() > 2 {
                cx.err(
                    &table.span,
                    &table.key,
                    format!("expected `table` or `database.table` (letters, digits, _), found \"{}\"", table.value),
                );
                return None;
            }
            Some(SinkKind::ClickHouse(ClickHouseSinkSpec {
                url: url.value.trim_end_matches('/').to_string(),
                table: table.value,
                create_table: t.boolean(cx, "create_table").unwrap_or(false),
                batch_rows: t.int(cx, "batch_rows", 1).unwrap_or(100_000) as usize,
                batch_interval: t.duration(cx, "batch_interval").unwrap_or(time::MICROS_PER_SEC),
            }))
        }
        K::Kafka => {
            t.check_keys(cx, &["type", "format", "bootstrap_servers", "bootstrap_file", "topic", "properties", "id"]);
            t.choice(cx, "format", &[("json", ())], Some(()));
            let bootstrap = read_bootstrap(cx, t)?;
            let topic = t.required_string(cx, "topic", "the topic to write")?.value;
            Some(SinkKind::Kafka(KafkaSinkSpec { bootstrap, topic, properties: read_properties(cx, t) }))
        }
        K::Stdout => {
            t.check_keys(cx, &["type", "format", "id"]);
            let json = t.choice(cx, "format", &[("table", false), ("json", true)], Some(false))?;
            Some(SinkKind::Stdout { json })
        }
        K::File => {
            t.check_keys(cx, &["type", "path", "format", "id"]);
            t.choice(cx, "format", &[("json", ())], Some(()));
            let path = t.required_string(cx, "path", "the output file, e.g. \"out/results.jsonl\"")?;
            Some(SinkKind::File { path: path.value })
        }
        K::Discard => {
            t.check_keys(cx, &["type", "delay_per_row", "id"]);
            let delay = match t.string(cx, "delay_per_row") {
                None => 0.0,
                // Fractional microseconds ("0.5us") are allowed here: slow sinks need them.
                Some(s) => match s
                    .value
                    .strip_suffix("us")
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .or_else(|| time::parse_duration(&s.value).map(|d| d as f64))
                {
                    Some(d) if d >= 0.0 => d,
                    _ => {
                        cx.err(&s.span, &s.key, format!("invalid duration \"{}\" (expected e.g. \"2us\", \"0.5us\", \"1ms\")", s.value));
                        return None;
                    }
                },
            };
            Some(SinkKind::Discard { delay_per_row: delay })
        }
    }
}

/// The sink's `id`, or one derived from its type and destination.
fn read_sink_id(cx: &mut Cx, t: &T, kind: Option<&SinkKind>) -> Option<Located<String>> {
    if t.get("id").is_some() {
        let id = t.string(cx, "id")?;
        if id.value.is_empty() || id.value.len() > 200 || id.value.chars().any(char::is_control) {
            cx.err(&id.span, &id.key, "expected a non-empty id of at most 200 characters without control characters");
            return None;
        }
        return Some(id);
    }
    let value = match kind? {
        SinkKind::Stdout { .. } => "stdout".to_string(),
        SinkKind::File { path } => format!("file:{path}"),
        SinkKind::Kafka(k) => format!("kafka:{}", k.topic),
        SinkKind::ClickHouse(c) => format!("clickhouse:{}", c.table),
        SinkKind::Redis(r) => format!("redis:{}", r.key.value),
        SinkKind::Discard { .. } => "discard".to_string(),
    };
    Some(Located { value, key: t.key("id"), span: t.span.clone() })
}

fn read_redis_sink(cx: &mut Cx, t: &T) -> Option<RedisSinkSpec> {
    t.check_keys(
        cx,
        &[
            "type",
            "id",
            "url",
            "mode",
            "key",
            "channel",
            "fields",
            "value",
            "hash_field",
            "member",
            "update",
            "keep_top",
            "max_len",
            "ttl",
            "batch_rows",
            "batch_interval",
        ],
    );
    let url = t.required_string(cx, "url", "Redis's address, e.g. \"redis://127.0.0.1:6379\"")?;
    if !(url.value.starts_with("redis://") || url.value.starts_with("rediss://")) {
        cx.err(&url.span, &url.key, format!("expected a redis:// or rediss:// URL, found \"{}\"", url.value));
        return None;
    }
    let modes = [
        ("hash", RedisMode::Hash),
        ("counter", RedisMode::Counter),
        ("leaderboard", RedisMode::Leaderboard),
        ("stream", RedisMode::Stream),
        ("pubsub", RedisMode::PubSub),
    ];
    let mode = t.choice(cx, "mode", &modes, None)?;
    let key_name = if mode == RedisMode::PubSub { "channel" } else { "key" };
    let key = t.required_string(cx, key_name, "a template naming the tenant field, e.g. \"tf:{tenant_id}:plays:{track_id}\"")?;
    // Options that only mean something in another mode are mistakes, not no-ops.
    let allowed: &[&str] = match mode {
        RedisMode::Hash => &["key", "ttl", "fields"],
        RedisMode::Counter => &["key", "ttl", "value", "hash_field"],
        RedisMode::Leaderboard => &["key", "ttl", "value", "member", "update", "keep_top"],
        RedisMode::Stream => &["key", "ttl", "fields", "max_len"],
        RedisMode::PubSub => &["channel", "fields"],
    };
    for k in ["key", "channel", "ttl", "fields", "value", "hash_field", "member", "update", "keep_top", "max_len"] {
        if let (Some(v), false) = (t.get(k), allowed.contains(&k)) {
            cx.err(
                &v.span(),
                &t.key(k),
                format!("`{k}` does not apply to mode \"{}\"", modes.iter().find(|(_, m)| *m == mode).map_or("", |(n, _)| n)),
            );
        }
    }
    let value = t.string(cx, "value");
    if matches!(mode, RedisMode::Counter | RedisMode::Leaderboard) && value.is_none() && t.get("value").is_none() {
        t.missing(cx, "value", "the numeric output field to add (counter) or to rank by (leaderboard)");
    }
    let member = t.string(cx, "member");
    if mode == RedisMode::Leaderboard && member.is_none() && t.get("member").is_none() {
        t.missing(cx, "member", "a template for the ranked member, e.g. \"{track_id}\"");
    }
    let increment = t.choice(cx, "update", &[("increment", true), ("set", false)], Some(true))?;
    let fields = t.string_list(cx, "fields");
    if let (Some(list), Some(v)) = (&fields, t.get("fields")) {
        if list.is_empty() {
            cx.err(&v.span(), &t.key("fields"), "expected at least one output field (or leave `fields` out for all of them)");
        }
    }
    Some(RedisSinkSpec {
        url: url.value,
        mode,
        key,
        fields,
        value,
        hash_field: t.string(cx, "hash_field"),
        member,
        increment,
        keep_top: t.int(cx, "keep_top", 1).map(|n| n as u64),
        max_len: t.int(cx, "max_len", 1).map(|n| n as u64),
        ttl: t.duration(cx, "ttl").filter(|&d| d > 0),
        batch_rows: t.int(cx, "batch_rows", 1).unwrap_or(10_000) as usize,
        batch_interval: t.duration(cx, "batch_interval").unwrap_or(100_000),
    })
}

fn read_alert_rule(cx: &mut Cx, t: &T) -> Option<AlertRuleSpec> {
    t.check_keys(cx, &["name", "condition", "labels", "annotations"]);
    let name = t.required_string(cx, "name", "the alert's name (its `alertname` label), e.g. \"PlaysDropped\"")?;
    let condition = t.required_string(cx, "condition", "a SQL condition over the output fields, e.g. \"plays < 0.5 * prev(plays)\"")?;
    let labels = t.string_map(cx, "labels").unwrap_or_default();
    for (k, v) in &labels {
        if !valid_label(k) {
            cx.err(&v.span, &v.key, format!("invalid label name `{k}` (letters, digits and _, not starting with a digit)"));
        } else if ["alertname", "job", "tenant"].contains(&k.as_str()) {
            cx.err(&v.span, &v.key, format!("the label `{k}` is set by tenantflow (alertname, job and tenant identify an alert)"));
        }
    }
    Some(AlertRuleSpec {
        name: name.value,
        condition,
        labels: labels.into_iter().map(|(k, v)| (k, v.value)).collect(),
        annotations: t.string_map(cx, "annotations").unwrap_or_default(),
    })
}

fn valid_label(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn read_matchers(cx: &mut Cx, t: &T, k: &str) -> Vec<Matcher> {
    let mut out = Vec::new();
    for m in t.string_list(cx, k).unwrap_or_default() {
        match Matcher::parse(&m.value) {
            Ok(parsed) => out.push(parsed),
            Err(e) => cx.err(&m.span, &m.key, e),
        }
    }
    out
}

fn read_alerting(cx: &mut Cx, t: &T) -> Option<AlertingSpec> {
    t.check_keys(cx, &["route", "receivers", "inhibit_rules", "resolve_timeout", "state_dir"]);
    let receivers: Vec<ReceiverSpec> = t.tables(cx, "receivers").iter().filter_map(|r| read_receiver(cx, r)).collect();
    if receivers.is_empty() && t.get("receivers").is_none() {
        t.missing(cx, "receivers", "at least one [[alerting.receivers]] (webhook, slack, pagerduty, email or redis)");
    }
    let route = match t.table(cx, "route") {
        Some(r) => read_route(cx, &r, true, &receivers)?,
        None => {
            if t.get("route").is_none() {
                t.missing(cx, "route", "an [alerting.route] with at least `receiver`");
            }
            return None;
        }
    };
    let inhibit_rules = t
        .tables(cx, "inhibit_rules")
        .iter()
        .map(|r| {
            r.check_keys(cx, &["source_matchers", "target_matchers", "equal"]);
            InhibitRuleSpec {
                source: read_matchers(cx, r, "source_matchers"),
                target: read_matchers(cx, r, "target_matchers"),
                equal: r.string_list(cx, "equal").unwrap_or_default().into_iter().map(|e| e.value).collect(),
            }
        })
        .collect();
    Some(AlertingSpec {
        route,
        receivers,
        inhibit_rules,
        resolve_timeout: t.duration(cx, "resolve_timeout").filter(|&d| d > 0).unwrap_or(crate::alerting::DEFAULT_RESOLVE_TIMEOUT),
        state_dir: t.string(cx, "state_dir").map(|s| s.value),
    })
}

fn read_route(cx: &mut Cx, t: &T, root: bool, receivers: &[ReceiverSpec]) -> Option<RouteSpec> {
    let mut keys = vec!["receiver", "group_by", "group_wait", "group_interval", "repeat_interval", "routes"];
    if !root {
        keys.extend(["matchers", "continue"]);
    }
    t.check_keys(cx, &keys);
    let receiver = t.string(cx, "receiver");
    if let Some(r) = &receiver {
        if !receivers.iter().any(|x| x.name == r.value) {
            let names: Vec<&str> = receivers.iter().map(|x| x.name.as_str()).collect();
            cx.err(&r.span, &r.key, format!("unknown receiver \"{}\" (expected one of: {})", r.value, names.join(", ")));
        }
    } else if root && t.get("receiver").is_none() {
        t.missing(cx, "receiver", "the receiver for alerts no child route takes");
    }
    let mut routes = Vec::new();
    for child in t.tables(cx, "routes") {
        routes.extend(read_route(cx, &child, false, receivers));
    }
    Some(RouteSpec {
        receiver: receiver.map(|r| r.value),
        matchers: if root { Vec::new() } else { read_matchers(cx, t, "matchers") },
        group_by: t.string_list(cx, "group_by").map(|l| l.into_iter().map(|g| g.value).collect()),
        group_wait: t.duration(cx, "group_wait"),
        group_interval: t.duration(cx, "group_interval").filter(|&d| d > 0),
        repeat_interval: t.duration(cx, "repeat_interval").filter(|&d| d > 0),
        continue_matching: t.boolean(cx, "continue").unwrap_or(false),
        routes,
    })
}

/// A secret given inline (`key`) or by environment variable (`key_env`). The variable is read
/// when the job starts, where the notifications are sent: every process of a cluster validates
/// the job, and only one needs the secret.
fn secret(cx: &mut Cx, t: &T, k: &str) -> Option<Secret> {
    let env_key = format!("{k}_env");
    match (t.string(cx, k), t.string(cx, &env_key)) {
        (Some(_), Some(var)) => {
            cx.err(&var.span, &var.key, format!("give either `{k}` or `{env_key}`, not both"));
            None
        }
        (Some(v), None) => Some(Secret::Value(v.value)),
        (None, Some(var)) if var.value.is_empty() => {
            cx.err(&var.span, &var.key, "expected the name of an environment variable");
            None
        }
        (None, Some(var)) => Some(Secret::Env(var.value)),
        (None, None) => None,
    }
}

fn http_url(cx: &mut Cx, t: &T, k: &str, expected: &str) -> Option<String> {
    let url = t.required_string(cx, k, expected)?;
    if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
        cx.err(&url.span, &url.key, format!("expected an http:// or https:// URL, found \"{}\"", url.value));
        return None;
    }
    Some(url.value)
}

fn read_receiver(cx: &mut Cx, t: &T) -> Option<ReceiverSpec> {
    #[derive(Clone, Copy)]
    enum K {
        Webhook,
        Slack,
        PagerDuty,
        Email,
        Redis,
    }
    let name = t.required_string(cx, "name", "the receiver's name, used by routes")?;
    let kinds = [("webhook", K::Webhook), ("slack", K::Slack), ("pagerduty", K::PagerDuty), ("email", K::Email), ("redis", K::Redis)];
    let kind = t.choice(cx, "type", &kinds, None)?;
    let timeout = t.duration(cx, "timeout").filter(|&d| d > 0).unwrap_or(10 * time::MICROS_PER_SEC);
    // Alertmanager's defaults: webhooks and PagerDuty hear about resolution, chat and mail do not.
    let (kind, resolved_default) = match kind {
        K::Webhook => {
            t.check_keys(cx, &["name", "type", "url", "secret", "secret_env", "timeout", "send_resolved"]);
            let url = http_url(cx, t, "url", "the URL alerts are POSTed to")?;
            (ReceiverKind::Webhook { url, secret: secret(cx, t, "secret"), timeout }, true)
        }
        K::Slack => {
            t.check_keys(cx, &["name", "type", "url", "url_env", "channel", "timeout", "send_resolved"]);
            let url = match t.get("url") {
                Some(_) => Secret::Value(http_url(cx, t, "url", "the Slack incoming-webhook URL")?),
                None => match secret(cx, t, "url") {
                    Some(u) => u,
                    None => {
                        t.missing(cx, "url", "the Slack incoming-webhook URL (or url_env)");
                        return None;
                    }
                },
            };
            (ReceiverKind::Slack { url, channel: t.string(cx, "channel").map(|c| c.value), timeout }, false)
        }
        K::PagerDuty => {
            t.check_keys(cx, &["name", "type", "url", "routing_key", "routing_key_env", "timeout", "send_resolved"]);
            let url = match t.get("url") {
                Some(_) => http_url(cx, t, "url", "the Events API v2 endpoint")?,
                None => "https://events.pagerduty.com/v2/enqueue".to_string(),
            };
            let Some(routing_key) = secret(cx, t, "routing_key") else {
                if t.get("routing_key_env").is_none() {
                    t.missing(cx, "routing_key", "the integration's routing key (or routing_key_env)");
                }
                return None;
            };
            (ReceiverKind::PagerDuty { url, routing_key, timeout }, true)
        }
        K::Email => {
            t.check_keys(cx, &["name", "type", "smtp", "from", "to", "username", "password", "password_env", "starttls", "send_resolved"]);
            let smtp = t.required_string(cx, "smtp", "the SMTP server as host:port, e.g. \"smtp.example.com:587\"")?;
            if smtp.value.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                cx.err(&smtp.span, &smtp.key, format!("expected host:port, found \"{}\"", smtp.value));
                return None;
            }
            let from = t.required_string(cx, "from", "the sender address")?.value;
            let to: Vec<String> = t.string_list(cx, "to").unwrap_or_default().into_iter().map(|a| a.value).collect();
            if to.is_empty() {
                t.missing(cx, "to", "one or more recipient addresses");
                return None;
            }
            let kind = ReceiverKind::Email {
                smtp: smtp.value,
                from,
                to,
                username: t.string(cx, "username").map(|u| u.value),
                password: secret(cx, t, "password"),
                starttls: t.boolean(cx, "starttls").unwrap_or(true),
            };
            (kind, false)
        }
        K::Redis => {
            t.check_keys(cx, &["name", "type", "url", "channel", "send_resolved"]);
            let url = t.required_string(cx, "url", "Redis's address, e.g. \"redis://127.0.0.1:6379\"")?;
            if !(url.value.starts_with("redis://") || url.value.starts_with("rediss://")) {
                cx.err(&url.span, &url.key, format!("expected a redis:// or rediss:// URL, found \"{}\"", url.value));
                return None;
            }
            let channel = t.required_string(cx, "channel", "the channel alerts are published on")?.value;
            (ReceiverKind::RedisPubSub { url: url.value, channel }, true)
        }
    };
    Some(ReceiverSpec { name: name.value, send_resolved: t.boolean(cx, "send_resolved").unwrap_or(resolved_default), kind })
}
