//! The source interface, and the file and stdin sources of JSON lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};

use tenantflow_core::Value;

use crate::json::JsonDecoder;
use crate::ConnectorError;

/// Rows read by a source, stored flat: row `i` is `values[i * width..(i + 1) * width]`.
/// The first fields are the declared schema; the rest are slots for derived fields. Each row
/// remembers where it came from, so a row rejected later still names its source position.
pub struct Batch {
    pub width: usize,
    pub values: Vec<Value>,
    /// Records that could not be decoded, each with the number of rows read before it in this
    /// batch (dead letters take their place in the stream's order: see `engine::ingest`).
    pub dead: Vec<(usize, DeadLetter)>,
    /// Per row: (index into `origins`, 1-based line or sequence number).
    pub positions: Vec<(u32, u64)>,
    /// Source names (file paths, `stdin`, `generator`).
    pub origins: Vec<String>,
    /// Bytes of input read into this batch (0 for generated events).
    pub bytes: u64,
}

impl Batch {
    pub fn new(width: usize) -> Batch {
        Batch { width, values: Vec::new(), dead: Vec::new(), positions: Vec::new(), origins: Vec::new(), bytes: 0 }
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.width.max(1)
    }

    /// Adds a record that could not be decoded, after the rows read so far.
    pub fn push_dead(&mut self, d: DeadLetter) {
        self.dead.push((self.rows(), d));
    }

    /// The index of a source name, for [`Batch::push_row`].
    pub fn origin(&mut self, name: &str) -> u32 {
        match self.origins.iter().position(|o| o == name) {
            Some(i) => i as u32,
            None => {
                self.origins.push(name.to_string());
                (self.origins.len() - 1) as u32
            }
        }
    }

    /// Appends a row of NULLs read at `position` of source `origin`, and returns it for filling in.
    #[inline]
    pub fn push_row(&mut self, origin: u32, position: u64) -> &mut [Value] {
        let start = self.values.len();
        self.values.reserve(self.width);
        // Pushing a constant is much cheaper than `resize`, which clones a template value.
        for _ in 0..self.width {
            self.values.push(Value::Null);
        }
        self.positions.push((origin, position));
        &mut self.values[start..]
    }

    /// Appends a row whose first fields are `values` (the rest NULL); cheaper than
    /// [`Batch::push_row`] followed by assignments.
    #[inline]
    pub fn push_values<const N: usize>(&mut self, origin: u32, position: u64, values: [Value; N]) {
        self.values.reserve(self.width);
        for v in values {
            self.values.push(v);
        }
        for _ in N..self.width {
            self.values.push(Value::Null);
        }
        self.positions.push((origin, position));
    }

    /// Removes the last row (after a decoding error).
    pub fn pop_row(&mut self) {
        let len = self.values.len().saturating_sub(self.width);
        self.values.truncate(len);
        self.positions.pop();
    }

    /// Where row `i` came from.
    pub fn position(&self, i: usize) -> (&str, u64) {
        match self.positions.get(i) {
            Some(&(o, p)) => (self.origins.get(o as usize).map_or("?", String::as_str), p),
            None => ("?", 0),
        }
    }

    pub fn clear(&mut self) {
        self.values.clear();
        self.dead.clear();
        self.positions.clear();
    }
}

/// A record that could not become a row, with why and where it came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    /// File path, `stdin` or `generator`.
    pub source: String,
    /// 1-based line number (or sequence number for generated records).
    pub position: u64,
    /// The record as read, truncated to 64 KiB.
    pub raw: String,
    /// The tenant, when it could be read.
    pub tenant: Option<String>,
}

impl DeadLetter {
    pub fn new(reason: String, source: &str, position: u64, raw: &[u8]) -> DeadLetter {
        let cut = raw.len().min(64 * 1024);
        DeadLetter { reason, source: source.to_string(), position, raw: String::from_utf8_lossy(&raw[..cut]).into_owned(), tenant: None }
    }

    /// Topic and partition of a record read from Kafka, whose `source` is `topic[partition]`
    /// (topic names cannot contain `[`, so this is unambiguous).
    pub fn kafka_origin(&self) -> Option<(&str, i32)> {
        let (topic, rest) = self.source.split_once('[')?;
        Some((topic, rest.strip_suffix(']')?.parse().ok()?))
    }
}

pub enum Poll {
    /// Read what was available (up to the limit); call again.
    Ready,
    /// Nothing available now; call again later.
    Pending,
    /// Exhausted.
    Done,
}

pub trait Source {
    /// Appends up to `max` records to `batch`.
    fn poll(&mut self, batch: &mut Batch, max: usize) -> Poll;

    /// For sources made of partitions: the lowest largest-event-time over the active ones, so
    /// one slow partition holds the watermark back (and a finished or idle one does not).
    fn watermark_hint(&self) -> Option<i64> {
        None
    }

    /// Backpressure: `true` each time the engine holds the source back (it will not be polled
    /// until a `false`); a source may stop fetching ahead meanwhile.
    fn pause(&mut self, _hold: bool) {}

    /// How long to wait before polling again after `Poll::Pending`.
    fn retry_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(5)
    }

    /// The read position, for a checkpoint; `None` when the source cannot be replayed.
    fn checkpoint(&self) -> Option<Vec<u8>> {
        None
    }

    /// Continues from a position `checkpoint` returned.
    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        Err("this source cannot be restored from a checkpoint".into())
    }

    /// The checkpoint holding `state` (from `checkpoint`) is committed: a source with an outside
    /// record of progress (a Kafka consumer group) can publish it now.
    fn committed(&mut self, _state: &[u8]) {}
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Option<Vec<u8>> {
    bincode::serialize(value).ok()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| format!("bad source position in checkpoint: {e}"))
}

/// A source with nothing to read (e.g. workers other than the one reading stdin).
pub struct Empty;

impl Source for Empty {
    fn poll(&mut self, _: &mut Batch, _: usize) -> Poll {
        Poll::Done
    }

    fn checkpoint(&self) -> Option<Vec<u8>> {
        Some(Vec::new())
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Expands file patterns (globs allowed) into a sorted list of files.
pub fn expand(patterns: &[String]) -> Result<Vec<PathBuf>, ConnectorError> {
    let mut files = Vec::new();
    for p in patterns {
        let matches = glob::glob(p).map_err(|e| ConnectorError::BadPattern { pattern: p.clone(), message: e.to_string() })?;
        let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).filter(|f| f.is_file()).collect();
        if found.is_empty() {
            return Err(ConnectorError::NoMatch(p.clone()));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Split {
    path: PathBuf,
    start: u64,
    end: u64,
    /// Set when `start` is known to begin a line (a restored position): its line number.
    line: Option<u64>,
}

struct OpenSplit {
    name: String,
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset of the next unread byte.
    pos: u64,
    end: u64,
    /// Line number of the next line.
    line: u64,
}

/// JSON lines from files. The files are treated as one byte stream cut into one contiguous
/// range per worker; a line belongs to the worker whose range holds its first byte. So every
/// line is read exactly once whatever the number of workers.
pub struct FileSource {
    splits: Vec<Split>,
    open: Option<OpenSplit>,
    decoder: JsonDecoder,
    buf: Vec<u8>,
}

impl FileSource {
    pub fn open(patterns: &[String], worker: usize, workers: usize, decoder: JsonDecoder) -> Result<FileSource, ConnectorError> {
        let files = expand(patterns)?;
        let mut sizes = Vec::new();
        for f in &files {
            let len = std::fs::metadata(f).map_err(|e| ConnectorError::Io { path: f.display().to_string(), source: e })?.len();
            sizes.push(len);
        }
        let total: u64 = sizes.iter().sum();
        let (lo, hi) = (total * worker as u64 / workers as u64, total * (worker as u64 + 1) / workers as u64);
        let mut splits = Vec::new();
        let mut offset = 0;
        for (f, len) in files.into_iter().zip(sizes) {
            let (s, e) = (lo.max(offset), hi.min(offset + len));
            if s < e {
                splits.push(Split { path: f, start: s - offset, end: e - offset, line: None });
            }
            offset += len;
        }
        splits.reverse();
        Ok(FileSource { splits, open: None, decoder, buf: Vec::with_capacity(4096) })
    }

    fn open_next(&mut self) -> Result<bool, (String, std::io::Error)> {
        let Some(split) = self.splits.pop() else { return Ok(false) };
        let name = split.path.display().to_string();
        let wrap = |e| (name.clone(), e);
        let mut file = File::open(&split.path).map_err(wrap)?;
        if let Some(line) = split.line {
            file.seek(SeekFrom::Start(split.start)).map_err(wrap)?;
            let reader = BufReader::with_capacity(1 << 20, file);
            self.open = Some(OpenSplit { name, path: split.path, reader, pos: split.start, end: split.end, line });
            return Ok(true);
        }
        // Line numbers: count the newlines before the split (fast, and only once per split).
        let mut line = 1;
        if split.start > 0 {
            let mut head = (&mut file).take(split.start);
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                let n = head.read(&mut chunk).map_err(wrap)?;
                if n == 0 {
                    break;
                }
                line += memchr::memchr_iter(b'\n', &chunk[..n]).count() as u64;
            }
        }
        // A split that starts mid-line leaves that line to the previous worker.
        let mut pos = split.start;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        if split.start > 0 {
            reader.seek(SeekFrom::Start(split.start - 1)).map_err(wrap)?;
            let mut skipped = Vec::new();
            let n = reader.read_until(b'\n', &mut skipped).map_err(wrap)? as u64;
            pos = split.start - 1 + n;
            if n > 1 {
                // The byte before the split was not a newline: the partial line was skipped.
                line += 1;
            }
        }
        self.open = Some(OpenSplit { name, path: split.path, reader, pos, end: split.end, line });
        Ok(true)
    }
}

impl Source for FileSource {
    /// The splits still to read, the open one from its next line.
    fn checkpoint(&self) -> Option<Vec<u8>> {
        let mut splits = self.splits.clone();
        if let Some(open) = &self.open {
            splits.push(Split { path: open.path.clone(), start: open.pos, end: open.end, line: Some(open.line) });
        }
        encode(&splits)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.splits = decode(state)?;
        self.open = None;
        Ok(())
    }

    fn poll(&mut self, batch: &mut Batch, max: usize) -> Poll {
        let mut n = 0;
        while n < max {
            if self.open.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => return Poll::Done,
                    Err((name, e)) => {
                        batch.push_dead(DeadLetter::new(format!("cannot read file: {e}"), &name, 0, b""));
                        continue;
                    }
                }
            }
            let Some(open) = self.open.as_mut() else { return Poll::Done };
            if open.pos >= open.end {
                self.open = None;
                continue;
            }
            self.buf.clear();
            let read = match open.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.open = None;
                    continue;
                }
                Ok(r) => r,
                Err(e) => {
                    batch.push_dead(DeadLetter::new(format!("read error: {e}"), &open.name, open.line, b""));
                    self.open = None;
                    continue;
                }
            };
            open.pos += read as u64;
            let line_no = open.line;
            open.line += 1;
            let line = trim_line(&self.buf);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            n += 1;
            let origin = batch.origin(&open.name);
            batch.bytes += line.len() as u64;
            let row = batch.push_row(origin, line_no);
            if let Err(reason) = self.decoder.decode(line, row) {
                batch.pop_row();
                batch.push_dead(DeadLetter::new(reason, &open.name, line_no, line));
            }
        }
        Poll::Ready
    }
}

fn trim_line(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == b'\r') {
        end -= 1;
    }
    &b[..end]
}

/// JSON lines from standard input, read by a thread into a bounded queue (so a slow job
/// pushes back on the writer instead of buffering without limit).
pub struct StdinSource {
    rx: Receiver<Vec<u8>>,
    decoder: JsonDecoder,
    line: u64,
}

impl StdinSource {
    pub fn spawn(decoder: JsonDecoder) -> StdinSource {
        let (tx, rx) = sync_channel::<Vec<u8>>(4096);
        std::thread::Builder::new()
            .name("stdin-reader".into())
            .spawn(move || {
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                loop {
                    let mut buf = Vec::new();
                    match lock.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if tx.send(buf).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .ok();
        StdinSource { rx, decoder, line: 0 }
    }
}

impl Source for StdinSource {
    fn poll(&mut self, batch: &mut Batch, max: usize) -> Poll {
        for _ in 0..max {
            match self.rx.try_recv() {
                Ok(buf) => {
                    self.line += 1;
                    let line = trim_line(&buf);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let origin = batch.origin("stdin");
                    batch.bytes += line.len() as u64;
                    let row = batch.push_row(origin, self.line);
                    if let Err(reason) = self.decoder.decode(line, row) {
                        batch.pop_row();
                        batch.push_dead(DeadLetter::new(reason, "stdin", self.line, line));
                    }
                }
                Err(TryRecvError::Empty) => return Poll::Pending,
                Err(TryRecvError::Disconnected) => return Poll::Done,
            }
        }
        Poll::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tenantflow_core::{DataType, Schema};

    /// Every non-blank line of the files is read exactly once, with its own line number,
    /// whatever the number of workers and wherever the byte ranges cut.
    fn read_all(paths: &[String], workers: usize) -> Vec<(String, u64, i64)> {
        let schema = Schema::new(vec![("n".into(), DataType::Int)]);
        let mut seen = Vec::new();
        for w in 0..workers {
            let mut src = FileSource::open(paths, w, workers, JsonDecoder::new(&schema)).expect("open");
            let mut batch = Batch::new(1);
            while !matches!(src.poll(&mut batch, 7), Poll::Done) {}
            assert!(batch.dead.is_empty(), "{:?}", batch.dead);
            for i in 0..batch.rows() {
                let (file, line) = batch.position(i);
                seen.push((file.to_string(), line, batch.values[i].as_i64().unwrap_or(-1)));
            }
        }
        seen.sort();
        seen
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn splits_read_each_line_once(files in prop::collection::vec(prop::collection::vec((0u8..4, 0usize..40), 0..30), 1..4)) {
            let dir = std::env::temp_dir().join(format!("tenantflow-split-{}-{:?}", std::process::id(), std::thread::current().id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut paths = Vec::new();
            let mut expected = Vec::new();
            for (f, lines) in files.iter().enumerate() {
                let path = dir.join(format!("{f}.jsonl")).display().to_string();
                let mut text = String::new();
                for (i, (kind, pad)) in lines.iter().enumerate() {
                    let n = (f * 1000 + i) as i64;
                    match kind {
                        0 => text.push('\n'),                                             // blank line
                        1 => text.push_str(&format!("{{\"n\":{n}}}\r\n")),              // CRLF
                        _ => text.push_str(&format!("{{\"n\":{n}{}}}\n", " ".repeat(*pad))),
                    }
                    if *kind != 0 {
                        expected.push((path.clone(), i as u64 + 1, n));
                    }
                }
                // Sometimes no newline at the end of the file.
                if lines.len() % 2 == 1 && text.ends_with('\n') && !text.ends_with("\n\n") {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                std::fs::write(&path, text).expect("write");
                paths.push(path);
            }
            expected.sort();
            for workers in 1..=5 {
                prop_assert_eq!(read_all(&paths, workers), expected.clone(), "workers = {}", workers);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
