//! Opening a sink whose service may be down. The first attempt runs in the caller, so a
//! configuration error or a service that answers is known at once; while the service is
//! unavailable ([`ConnectorError::Unavailable`]), a thread retries with the senders' backoff
//! (0.1 s to 5 s, jittered) and the caller polls for the outcome without blocking its worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sender::Backoff;
use crate::ConnectorError;

/// The result of [`open`].
pub enum Opening<S> {
    Open(S),
    /// The service is unavailable: retried in the background.
    Waiting(Opener<S>),
    /// Refused for good (configuration): the caller fails the job.
    Failed(ConnectorError),
}

/// Tries `attempt` once here, then, while it reports the service unavailable, on a thread.
pub fn open<S: Send + 'static>(mut attempt: impl FnMut() -> Result<S, ConnectorError> + Send + 'static) -> Opening<S> {
    match attempt() {
        Ok(s) => Opening::Open(s),
        Err(ConnectorError::Unavailable(reason)) => match Opener::start(reason.clone(), attempt) {
            Ok(opener) => Opening::Waiting(opener),
            Err(e) => Opening::Failed(ConnectorError::Sink(format!("{reason}; cannot start retrying: {e}"))),
        },
        Err(e) => Opening::Failed(e),
    }
}

/// A sink being opened in the background; dropping it stops the retries.
pub struct Opener<S> {
    outcome: mpsc::Receiver<Result<S, ConnectorError>>,
    last_error: Arc<Mutex<String>>,
    attempts: Arc<AtomicU64>,
    since: Instant,
    stop: Arc<AtomicBool>,
}

impl<S: Send + 'static> Opener<S> {
    fn start(first_error: String, mut attempt: impl FnMut() -> Result<S, ConnectorError> + Send + 'static) -> std::io::Result<Opener<S>> {
        let (tx, outcome) = mpsc::channel();
        let last_error = Arc::new(Mutex::new(first_error));
        let attempts = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (last, tries, stopped) = (Arc::clone(&last_error), Arc::clone(&attempts), Arc::clone(&stop));
        std::thread::Builder::new().name("sink-open".into()).spawn(move || {
            let mut backoff = Backoff::new();
            loop {
                // Sleep in slices so a cancelled job does not wait out a long backoff.
                let until = Instant::now() + backoff.next_wait();
                while Instant::now() < until {
                    if stopped.load(Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
                }
                tries.fetch_add(1, Relaxed);
                match attempt() {
                    Err(ConnectorError::Unavailable(reason)) => {
                        tracing::warn!("sink not open yet, retrying: {reason}");
                        if let Ok(mut l) = last.lock() {
                            *l = reason;
                        }
                    }
                    done => {
                        // The receiver is gone when the job ended meanwhile: nothing to do.
                        let _ = tx.send(done);
                        return;
                    }
                }
            }
        })?;
        Ok(Opener { outcome, last_error, attempts, since: Instant::now(), stop })
    }
}

impl<S> Opener<S> {
    /// The opened sink or the final refusal, once there is one.
    pub fn poll(&self) -> Option<Result<S, ConnectorError>> {
        match self.outcome.try_recv() {
            Ok(done) => Some(done),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(ConnectorError::Sink("the sink's opening thread ended".into()))),
        }
    }

    /// Why the sink is not open yet, for status lines: the last error, attempts and wait.
    pub fn reason(&self) -> String {
        let last = self.last_error.lock().map(|l| l.clone()).unwrap_or_default();
        format!("{last} (attempt {}, waiting {:.0} s)", self.attempts.load(Relaxed), self.since.elapsed().as_secs_f64())
    }
}

impl<S> Drop for Opener<S> {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_services_are_retried_until_they_answer_and_refusals_are_final() {
        let mut calls = 0;
        let opening = open(move || {
            calls += 1;
            if calls < 3 {
                Err(ConnectorError::Unavailable(format!("down ({calls})")))
            } else {
                Ok(calls)
            }
        });
        let Opening::Waiting(opener) = opening else { panic!("expected to wait") };
        assert!(opener.reason().starts_with("down (1) (attempt 1"), "{}", opener.reason());
        let started = Instant::now();
        let opened = loop {
            if let Some(r) = opener.poll() {
                break r;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never opened");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(opened.ok(), Some(3));

        match open(|| Err::<(), _>(ConnectorError::Sink("bad password".into()))) {
            Opening::Failed(e) => assert_eq!(e.to_string(), "bad password"),
            _ => panic!("a configuration error must not be retried"),
        }
        assert!(matches!(open(|| Ok::<_, ConnectorError>(1)), Opening::Open(1)));
    }
}
