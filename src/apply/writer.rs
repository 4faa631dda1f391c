//! The state's writer while a plan is applied: a thread that owns the [`State`] and
//! records the links of the changes the portal confirmed. What is confirmed within
//! [`COMMIT_WINDOW`] of the first link of a batch, and what was confirmed while the
//! previous commit ran, is committed together, in one transaction (group commit): a
//! provisioning of hundreds of users a second costs some forty fsyncs a second, not one
//! per user, and the task that drives the portal requests never waits for the disk.
//!
//! A change's outcome goes into [`Progress`] only once its link is committed: what the
//! report counts as applied is in the state. [`Writer::finish`] commits what is still
//! queued and hands the state back; a cycle stopped hard calls it too, so every change
//! the portal confirmed before the stop is recorded. A kill loses at most the batches not
//! committed yet (what was confirmed in the last window and commit), which SQLite rolls back whole; the next cycle finds those portal users
//! by their externalId (a create answered `409` is taken over).

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::debug;

use super::{lock, Outcome, Progress};
use crate::plan::Baseline;
use crate::state::{State, StateError};

/// Links committed in one transaction at most.
const MAX_BATCH: usize = 1000;

/// How long a batch takes links after its first before it is committed. Each commit is
/// an fsync: at 400 creates a second, committing whatever had queued meanwhile meant a
/// commit for every one to four users. The window took 17% off dirsync's CPU during a
/// provisioning of 3,000 users, CPU the portal could use when it shares the machine
/// (BENCHMARKS.md); a link is recorded at most this much later.
const COMMIT_WINDOW: Duration = Duration::from_millis(25);

/// Why the writer cannot take a job: its thread is gone (it panicked).
const STOPPED: &str = "stopped unexpectedly";

/// A portal user the portal confirmed for a directory anchor, with its last-synced values.
pub struct Link {
    pub anchor: String,
    pub portal_id: String,
    pub user_name: String,
    pub baseline: Baseline,
}

enum Job {
    /// A link to record, and the outcome of plan change `i` to report once it is.
    Link(Link, Option<(usize, Outcome)>),
    /// Anything else on the state, run after the links queued before it are committed.
    Call(Box<dyn FnOnce(&mut State) + Send>),
}

/// What the thread hands back: the state, and the first write that failed.
type Ended = (State, Option<StateError>);

pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<Option<Ended>>>,
    /// Why the state cannot be written, once a commit failed or the thread is gone.
    failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    /// Starts the thread, which owns `state` until [`Writer::finish`]. Outcomes of
    /// recorded changes go into `progress`. If no thread can be started, the state comes
    /// back with the error.
    pub fn start(
        state: State,
        progress: Arc<Progress>,
    ) -> Result<Writer, Box<(State, StateError)>> {
        let (jobs, queue) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        // The state is handed over once the thread runs, so that it is not lost if none
        // can be started.
        let (hand_over, handed) = mpsc::sync_channel::<State>(1);
        let failed = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                let state = handed.recv().ok()?;
                Some(serve(state, &queue, &progress, &failed))
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let e = StateError::Writer(format!("could not start: {e}"));
                return Err(Box::new((state, e)));
            }
        };
        if let Err(mpsc::SendError(state)) = hand_over.send(state) {
            return Err(Box::new((state, StateError::Writer(STOPPED.into()))));
        }
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
            failure,
        })
    }

    /// Queues a confirmed change's link; `outcome` (plan index, outcome) is reported
    /// once the link is committed.
    pub fn link(&self, link: Link, outcome: Option<(usize, Outcome)>) {
        self.send(Job::Link(link, outcome));
    }

    /// Runs `f` on the state after the links queued so far are committed, and gives its
    /// result. The job is queued now, before anything is awaited.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StateError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StateError>> + Send {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Call(Box::new(move |state| {
            let _ = tx.send(f(state));
        })));
        async move {
            rx.await
                .unwrap_or_else(|_| Err(StateError::Writer(STOPPED.into())))
        }
    }

    /// Why the state cannot be written any more, once a write failed.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn send(&self, job: Job) {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            lock(&self.failure)
                .get_or_insert_with(|| StateError::Writer(STOPPED.into()).to_string());
        }
    }

    /// Commits what is still queued, ends the thread and hands the state back, with the
    /// first write that failed, if one did. The state is lost only if the thread panicked.
    /// Blocks until the last commit is done (run it through [`super::blocking`]).
    pub fn finish(mut self) -> (Option<State>, Result<(), StateError>) {
        self.jobs = None;
        let Some(thread) = self.thread.take() else {
            return (None, Err(StateError::Writer(STOPPED.into())));
        };
        match thread.join() {
            Ok(Some((state, None))) => (Some(state), Ok(())),
            Ok(Some((state, Some(e)))) => (Some(state), Err(e)),
            Ok(None) | Err(_) => (None, Err(StateError::Writer(STOPPED.into()))),
        }
    }
}

impl Drop for Writer {
    /// A writer dropped without [`Writer::finish`] (its cycle was dropped) still commits
    /// what is queued, and lets go of the state (and its lock) before it is gone.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: takes the jobs in order; the links queued together are committed in one
/// transaction, before any call queued after them runs.
fn serve(
    mut state: State,
    queue: &mpsc::Receiver<Job>,
    progress: &Progress,
    failure: &Mutex<Option<String>>,
) -> Ended {
    let mut error = None;
    let mut links = Vec::new();
    while let Ok(first) = queue.recv() {
        let window = Instant::now() + COMMIT_WINDOW;
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::Link(link, outcome) => links.push((link, outcome)),
                Job::Call(f) => {
                    commit(&mut state, &mut links, progress, &mut error, failure);
                    f(&mut state);
                }
            }
            next = if links.len() < MAX_BATCH {
                // Disconnected (finish) or the window closed: commit what is here.
                queue
                    .recv_timeout(window.saturating_duration_since(Instant::now()))
                    .ok()
            } else {
                None
            };
        }
        commit(&mut state, &mut links, progress, &mut error, failure);
    }
    (state, error)
}

/// Records `links` in one transaction and reports their outcomes. Once a commit failed,
/// nothing more is written: the cycle fails with that error.
fn commit(
    state: &mut State,
    links: &mut Vec<(Link, Option<(usize, Outcome)>)>,
    progress: &Progress,
    error: &mut Option<StateError>,
    failure: &Mutex<Option<String>>,
) {
    if links.is_empty() {
        return;
    }
    let batch = std::mem::take(links);
    if error.is_some() {
        return;
    }
    let started = Instant::now();
    let recorded = state.record_links(batch.iter().map(|(l, _)| {
        (
            l.anchor.as_str(),
            l.portal_id.as_str(),
            l.user_name.as_str(),
            &l.baseline,
        )
    }));
    match recorded {
        Ok(()) => {
            debug!(
                links = batch.len(),
                ms = started.elapsed().as_millis() as u64,
                "links recorded"
            );
            for (i, outcome) in batch.into_iter().filter_map(|(_, o)| o) {
                progress.set(i, outcome);
            }
        }
        Err(e) => {
            lock(failure).get_or_insert_with(|| e.to_string());
            *error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Status;

    fn link(anchor: &str, portal_id: &str) -> Link {
        Link {
            anchor: anchor.into(),
            portal_id: portal_id.into(),
            user_name: format!("{anchor}@x.se"),
            baseline: Baseline::new(),
        }
    }

    fn applied() -> Outcome {
        Outcome {
            status: Status::Applied,
            message: None,
        }
    }

    /// Statuses in plan order; `None` for a change not reported yet.
    fn statuses(progress: &Progress) -> Vec<Option<Status>> {
        lock(&progress.outcomes)
            .iter()
            .map(|o| o.as_ref().map(|o| o.status))
            .collect()
    }

    #[tokio::test]
    async fn a_change_counts_as_applied_once_its_link_is_committed_and_finish_commits_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let progress = Arc::new(Progress::sized(3, 0));
        let writer = Writer::start(State::open(&path).unwrap(), Arc::clone(&progress))
            .map_err(|e| e.1)
            .unwrap();
        // Hold the thread while links queue up behind it.
        let (release, gate) = mpsc::channel::<()>();
        let held = writer.call(move |_| {
            let _ = gate.recv();
            Ok(())
        });
        writer.link(link("a-1", "p1"), Some((0, applied())));
        writer.link(link("a-2", "p2"), Some((2, applied())));
        writer.link(link("orphan", "p9"), None);
        assert_eq!(statuses(&progress), [None, None, None]);
        release.send(()).unwrap();
        held.await.unwrap();
        // A call runs after the links queued before it are committed.
        let ids = writer.call(|s| s.portal_ids()).await.unwrap();
        assert_eq!(ids.len(), 3, "{ids:?}");
        let applied = Some(Status::Applied);
        assert_eq!(statuses(&progress), [applied, None, applied]);

        // Queued, then finished at once (as after a hard stop): still recorded.
        writer.link(link("a-3", "p3"), Some((1, self::applied())));
        let (state, written) = writer.finish();
        written.unwrap();
        assert_eq!(statuses(&progress), [applied; 3]);
        assert_eq!(state.unwrap().managed().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_failing_commit_stops_the_writing_and_finish_gives_the_error_and_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = State::open(&path).unwrap();
        // The database refuses one anchor, from another connection.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON managed_user WHEN new.anchor = 'bad'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let progress = Arc::new(Progress::sized(3, 0));
        let writer = Writer::start(state, Arc::clone(&progress))
            .map_err(|e| e.1)
            .unwrap();
        writer.link(link("a-1", "p1"), Some((0, applied())));
        writer.call(|_| Ok(())).await.unwrap();
        assert_eq!(writer.failure(), None);
        writer.link(link("bad", "p2"), Some((1, applied())));
        writer.call(|_| Ok(())).await.unwrap();
        let failure = writer.failure().unwrap();
        assert!(failure.contains("refused"), "{failure}");
        // Nothing more is written once a commit failed.
        writer.link(link("a-3", "p3"), Some((2, applied())));
        let (state, written) = writer.finish();
        let err = written.unwrap_err();
        assert!(matches!(err, StateError::Sql(_)), "{err:?}");
        assert_eq!(statuses(&progress), [Some(Status::Applied), None, None]);
        let managed = state.unwrap().managed().unwrap();
        assert_eq!(managed.into_iter().collect::<Vec<_>>(), ["a-1"]);
    }
}
