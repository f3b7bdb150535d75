//! Sinks: a readable table or JSON lines on stdout, JSON lines to a file, or nothing; and the
//! dead-letter file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use tenantflow_core::{time, DataType, Value};

use crate::source::DeadLetter;

pub trait Sink {
    fn write(&mut self, row: &[Value]) -> io::Result<()>;
    /// Hands what was written on (to the OS, to librdkafka) without waiting for it to arrive.
    fn flush(&mut self) -> io::Result<()>;

    /// The job is ending: waits until everything written has arrived.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }

    /// Makes everything written so far durable and returns how far the output goes (bytes for
    /// files), for a checkpoint; `None` when the output cannot be rolled back (stdout, Kafka).
    fn checkpoint(&mut self) -> io::Result<Option<u64>> {
        self.flush()?;
        Ok(None)
    }

    /// The rows that follow belong to Timely timestamp `t` (each timestamp's rows come sorted).
    /// Sinks that give rows deterministic ids use it, so ids do not depend on what came before.
    fn begin_time(&mut self, _t: u64) {}

    /// Requests to the sink's service retried so far (cumulative), for metrics.
    fn retries(&self) -> u64 {
        0
    }

    /// Rows wait in a batch that [`Sink::flush`] sends once it is old enough: the engine calls
    /// `flush` now and then even while no rows come.
    fn pending(&self) -> bool {
        false
    }
}

/// Writes one JSON object per row. Field names are escaped once, up front.
pub struct JsonLines<W: Write> {
    out: W,
    keys: Vec<String>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W, names: &[&str]) -> JsonLines<W> {
        let keys = names.iter().map(|n| serde_json::to_string(n).unwrap_or_else(|_| format!("\"{n}\""))).collect();
        JsonLines { out, keys }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// Writes a value as JSON; timestamps as RFC 3339 strings.
pub fn write_json_value(out: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::Null => out.write_all(b"null"),
        Value::Bool(b) => out.write_all(if *b { b"true" } else { b"false" }),
        Value::Int(i) | Value::Interval(i) => write!(out, "{i}"),
        Value::Float(f) if f.is_finite() => out.write_all(tenantflow_core::value::shortest_float(*f, &mut ryu::Buffer::new()).as_bytes()),
        Value::Float(_) => out.write_all(b"null"),
        Value::Str(s) => serde_json::to_writer(&mut *out, s.as_str()).map_err(io::Error::other),
        Value::Ts(t) => write!(out, "\"{}\"", time::format_rfc3339(*t)),
    }
}

/// A row as a JSON object string (for dead letters and logs).
pub fn row_to_json(names: &[&str], row: &[Value]) -> String {
    let mut out = JsonLines::new(Vec::new(), names);
    // Writing to a Vec cannot fail.
    let _ = out.write(row);
    let mut s = String::from_utf8(out.out).unwrap_or_default();
    s.pop();
    s
}

impl<W: Write> Sink for JsonLines<W> {
    fn write(&mut self, row: &[Value]) -> io::Result<()> {
        self.out.write_all(b"{")?;
        for (i, (k, v)) in self.keys.iter().zip(row).enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            self.out.write_all(k.as_bytes())?;
            self.out.write_all(b":")?;
            write_json_value(&mut self.out, v)?;
        }
        self.out.write_all(b"}\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A JSON-lines file that can be rolled back to a checkpoint: on restore it is cut back to the
/// length the checkpoint recorded, so rows written after it are written again exactly once.
pub struct FileSink {
    out: JsonLines<BufWriter<File>>,
}

/// Opens a JSON-lines file sink, creating parent directories. `resume` is the length recorded by
/// a checkpoint (the file is cut to it); without it the file is truncated.
pub fn file_sink(path: &str, names: &[&str], resume: Option<u64>) -> io::Result<FileSink> {
    let file = match resume {
        None => create(path)?,
        Some(len) => resume_file(path, len)?,
    };
    Ok(FileSink { out: JsonLines::new(BufWriter::with_capacity(1 << 16, file), names) })
}

fn resume_file(path: &str, len: u64) -> io::Result<File> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    // Shorter than the checkpoint recorded: output it holds was lost (the file was replaced or
    // cut). Growing it would fill the gap with zeros and hide that.
    let found = f.metadata()?.len();
    if found < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: the checkpoint recorded {len} bytes but the file has {found}; it was replaced or truncated since"),
        ));
    }
    f.set_len(len)?;
    f.seek(SeekFrom::Start(len))?;
    Ok(f)
}

impl Sink for FileSink {
    fn write(&mut self, row: &[Value]) -> io::Result<()> {
        self.out.write(row)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn checkpoint(&mut self) -> io::Result<Option<u64>> {
        self.out.flush()?;
        let file = self.out.get_mut().get_mut();
        file.sync_data()?;
        Ok(Some(file.metadata()?.len()))
    }
}

fn create(path: &str) -> io::Result<File> {
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// A fixed-width table for people watching a terminal.
pub struct Table<W: Write> {
    out: W,
    names: Vec<String>,
    widths: Vec<usize>,
    rows: u64,
}

impl<W: Write> Table<W> {
    pub fn new(out: W, fields: &[(String, DataType)]) -> Table<W> {
        let widths = fields
            .iter()
            .map(|(n, t)| {
                let w = match t {
                    DataType::Timestamp => 24,
                    DataType::String => 14,
                    DataType::Float => 12,
                    _ => 9,
                };
                w.max(n.chars().count())
            })
            .collect();
        Table { out, names: fields.iter().map(|(n, _)| n.clone()).collect(), widths, rows: 0 }
    }

    fn line(&mut self, cells: &[String]) -> io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&self.widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let n = c.chars().count();
            if n > *w {
                s.extend(c.chars().take(w - 1));
                s.push('…');
            } else {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', w - n));
            }
        }
        writeln!(self.out, "{}", s.trim_end())
    }
}

impl<W: Write> Sink for Table<W> {
    fn write(&mut self, row: &[Value]) -> io::Result<()> {
        let cells: Vec<String> = row
            .iter()
            .map(|v| match v {
                Value::Float(f) => format!("{f:.3}"),
                other => other.to_string(),
            })
            .collect();
        if self.rows == 0 {
            // Widen columns to the first row's values (up to a limit) so typical rows fit.
            for (w, c) in self.widths.iter_mut().zip(&cells) {
                *w = (*w).max(c.chars().count().min(64));
            }
        }
        if self.rows.is_multiple_of(40) {
            let header = self.names.clone();
            self.line(&header)?;
        }
        self.rows += 1;
        self.line(&cells)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Drops rows, optionally slowly: it sleeps off `delay_per_row` in slices of at least 1 ms.
pub struct Discard {
    delay_per_row_us: f64,
    owed_us: f64,
}

impl Discard {
    pub fn new(delay_per_row_us: f64) -> Discard {
        Discard { delay_per_row_us, owed_us: 0.0 }
    }
}

impl Sink for Discard {
    fn write(&mut self, _: &[Value]) -> io::Result<()> {
        if self.delay_per_row_us > 0.0 {
            self.owed_us += self.delay_per_row_us;
            if self.owed_us >= 1000.0 {
                std::thread::sleep(std::time::Duration::from_micros(self.owed_us as u64));
                self.owed_us = 0.0;
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes dead letters as JSON lines; the file is created on the first one (the engine removes
/// a previous run's file when a job starts).
/// Where dead letters go (`[dead_letter]`): a JSON-lines file or a Kafka topic.
pub trait DeadLetterSink: Send {
    fn write(&mut self, d: &DeadLetter) -> io::Result<()>;
    /// As [`Sink::flush`].
    fn flush(&mut self) -> io::Result<()>;
    /// As [`Sink::finish`].
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// Makes what was written durable and returns the position to resume from after a restore
    /// (the file length; 0 for outputs that deduplicate by record id instead).
    fn checkpoint(&mut self) -> io::Result<u64>;
    /// Continues from a checkpoint's position.
    fn resume(&mut self, position: u64) -> io::Result<()>;
    /// Where the dead letters go, for messages.
    fn describe(&self) -> &str;
}

/// Dead letters as JSON lines in a file, created when the first one comes.
pub struct DeadLetterWriter {
    path: String,
    out: Option<BufWriter<File>>,
}

impl DeadLetterWriter {
    pub fn new(path: &str) -> DeadLetterWriter {
        DeadLetterWriter { path: path.to_string(), out: None }
    }
}

impl DeadLetterSink for DeadLetterWriter {
    fn describe(&self) -> &str {
        &self.path
    }

    fn write(&mut self, d: &DeadLetter) -> io::Result<()> {
        if self.out.is_none() {
            self.out = Some(BufWriter::new(create(&self.path)?));
        }
        if let Some(out) = self.out.as_mut() {
            serde_json::to_writer(&mut *out, d).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    /// Durable length of the file so far (0 when nothing was written).
    fn checkpoint(&mut self) -> io::Result<u64> {
        match self.out.as_mut() {
            Some(o) => {
                o.flush()?;
                o.get_ref().sync_data()?;
                Ok(o.get_ref().metadata()?.len())
            }
            None => Ok(0),
        }
    }

    /// Continues the file of a checkpoint, cut back to `len` bytes.
    fn resume(&mut self, len: u64) -> io::Result<()> {
        if len == 0 {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        self.out = Some(BufWriter::new(resume_file(&self.path, len)?));
        Ok(())
    }
}
