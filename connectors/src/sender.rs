//! The background sender of the sinks that write to a service (ClickHouse, Redis): batches are
//! applied in order on a thread of their own while the worker encodes the next one; at most
//! one waits beyond the one being applied, so a slow or absent service holds the worker back
//! (backpressure) instead of buffering without bound. The first refused batch fails the sink:
//! later batches are dropped and every later call reports it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Batches handed over and not yet applied, at most (beyond, the worker waits).
const IN_FLIGHT: usize = 1;

enum Job<B> {
    Batch(B),
    /// Answers once every batch before it is applied (or with the first failure).
    Flush(mpsc::Sender<Result<(), String>>),
}

/// The batch a sink is building: it goes to the sender once it holds `max_rows` rows or its
/// first row is `max_age_us` old.
pub(crate) struct Batching {
    rows: usize,
    since: Option<Instant>,
    max_rows: usize,
    max_age_us: i64,
}

impl Batching {
    pub fn new(max_rows: usize, max_age_us: i64) -> Batching {
        Batching { rows: 0, since: None, max_rows, max_age_us }
    }

    /// Counts a row added to the batch; true when the batch is full.
    pub fn add(&mut self) -> bool {
        self.rows += 1;
        self.since.get_or_insert_with(Instant::now);
        self.rows >= self.max_rows
    }

    /// The batch holds rows old enough to go.
    pub fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed().as_micros() as i64 >= self.max_age_us)
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The batch was handed over: the next one starts empty.
    pub fn restart(&mut self) {
        self.rows = 0;
        self.since = None;
    }
}

/// What a batch's apply function sees while it retries.
pub(crate) struct Retrying<'a> {
    /// Retries so far, for metrics.
    pub retries: &'a AtomicU64,
    /// Set when the sink is dropped (job cancelled): retrying stops.
    pub shutdown: &'a AtomicBool,
}

/// Exponential backoff from 0.1 s to 5 s, each wait jittered to 50–150% so that many writers
/// do not retry in step.
pub(crate) struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Backoff {
        Backoff(Backoff::MIN)
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.0.mul_f64(0.5 + jitter_unit());
        self.0 = (self.0 * 2).min(Backoff::MAX);
        wait
    }
}

/// A number in [0, 1) from the clock: jitter needs no quality randomness.
fn jitter_unit() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos % 1000) as f64 / 1000.0
}

pub(crate) struct Sender<B> {
    /// Names the service in messages.
    service: &'static str,
    tx: Option<mpsc::SyncSender<Job<B>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    retries: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<String>>>,
    shutdown: Arc<AtomicBool>,
}

impl<B: Send + 'static> Sender<B> {
    /// Starts the thread; `apply` takes one batch to the service, retrying as long as it sees
    /// fit, and returns an error only for a batch the service refused.
    pub fn start(
        service: &'static str,
        mut apply: impl FnMut(B, &Retrying) -> Result<(), String> + Send + 'static,
    ) -> io::Result<Sender<B>> {
        let (tx, rx) = mpsc::sync_channel::<Job<B>>(IN_FLIGHT);
        let retries = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(None::<String>));
        let shutdown = Arc::new(AtomicBool::new(false));
        let (counter, failure, stop) = (Arc::clone(&retries), Arc::clone(&failed), Arc::clone(&shutdown));
        let thread = std::thread::Builder::new().name(format!("{service}-sink")).spawn(move || {
            let first_failure = || failure.lock().ok().and_then(|f| f.clone());
            for job in rx {
                match job {
                    Job::Batch(batch) if first_failure().is_none() => {
                        if let Err(e) = apply(batch, &Retrying { retries: &counter, shutdown: &stop }) {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                    Job::Batch(_) => {}
                    Job::Flush(reply) => {
                        let _ = reply.send(first_failure().map_or(Ok(()), Err));
                    }
                }
            }
        })?;
        Ok(Sender { service, tx: Some(tx), thread: Some(thread), retries, failed, shutdown })
    }

    /// The first refused batch, if any.
    pub fn check(&self) -> io::Result<()> {
        match self.failed.lock().ok().and_then(|f| f.clone()) {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }

    /// Hands a batch over (waiting while [`IN_FLIGHT`] batches already wait).
    pub fn send(&self, batch: B) -> io::Result<()> {
        self.check()?;
        self.enqueue(Job::Batch(batch))
    }

    /// Waits until every batch handed over so far is applied.
    pub fn wait(&self) -> io::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.enqueue(Job::Flush(reply))?;
        answer.recv().map_err(|_| self.gone())?.map_err(io::Error::other)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    fn enqueue(&self, job: Job<B>) -> io::Result<()> {
        self.tx.as_ref().ok_or_else(|| self.gone())?.send(job).map_err(|_| self.gone())
    }

    fn gone(&self) -> io::Error {
        io::Error::other(format!("the {} sender stopped", self.service))
    }
}

impl<B> Drop for Sender<B> {
    fn drop(&mut self) {
        self.shutdown.store(true, Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_apply_in_order_and_the_first_refusal_sticks() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let s = Sender::start("test", move |b: u32, _| {
            log.lock().map_err(|e| e.to_string())?.push(b);
            if b == 2 {
                Err("refused 2".into())
            } else {
                Ok(())
            }
        })
        .expect("start");
        s.send(1).expect("1");
        s.wait().expect("applied");
        s.send(2).expect("2 is handed over");
        assert!(s.wait().is_err());
        assert!(s.send(3).is_err(), "later batches report the refusal");
        drop(s);
        assert_eq!(*seen.lock().expect("lock"), [1, 2]);
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] < Duration::from_millis(150));
        assert!(waits[7] >= Duration::from_millis(2500) && waits[7] < Duration::from_millis(7500));
    }
}
