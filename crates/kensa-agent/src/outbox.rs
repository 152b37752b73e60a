//! The durable outbox: every event the agent produces (check and hook results, StatsD flushes,
//! socket and API submissions) is written under `<cache-dir>/outbox/` before it is sent, and
//! removed only when the backend acknowledges its id (`ack`), or refuses it for good
//! (`rejected`, logged). Delivery is at-least-once; the backend drops duplicates by event id.
//! This replaces Sensu's 10-slot in-memory queue that blocked producers while disconnected and
//! dropped what failed to send (reference §1.9, §8.6).
//!
//! # On-disk format: one file per event
//!
//! `<seq:020>-<uuid>.json` holds the event's JSON (with its `id`). It is written to a hidden
//! temporary name, fsync'd, renamed into place, and the directory fsync'd, so once
//! [`Outbox::push`] returns `Ok` the event survives a crash, and a crash mid-write leaves only a
//! temporary file that the next start deletes. The sequence number in the name gives the
//! sending order (oldest first) after a restart without reading any file; the id in the name
//! lets acks be matched without reading either. A file per event was chosen over an
//! append-only segment log because deletion is then just `unlink` — no compaction, no
//! tombstones, no torn tail to repair — and the expected backlog (thousands of events during an
//! outage) is well within what a directory handles. Deletions are not fsync'd: a deletion lost
//! in a crash only re-sends an event the backend will recognize as a duplicate.
//!
//! # Bounds
//!
//! At most [`OutboxLimits::max_events`] events and [`OutboxLimits::max_bytes`] bytes are kept.
//! When either is reached, `push` fails with [`OutboxError::Full`] without touching the disk;
//! the *caller* logs the loss (it knows what was lost) and the outbox counts it
//! ([`Outbox::refused_full`]). Older events are never evicted for newer ones.
//!
//! Only metadata (sequence, id, size) is kept in memory; the events themselves are read back
//! from disk when sent, so a long outage costs disk, not RAM.
//!
//! # Sending window
//!
//! The sender takes at most [`OutboxLimits::in_flight`] unacknowledged events at a time
//! ([`Outbox::take_sendable`]); acks open the window again. When a session ends, in-flight
//! events become sendable again ([`Outbox::release_in_flight`]) and go out first on the next
//! session.
//!
//! A lock file (`outbox/.lock`, an advisory `flock`) keeps two agents from sharing one outbox.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kensa_proto::{MAX_FRAME_BYTES, TYPE_EVENT};
use kensa_types::resources::event::Event;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The outbox holds its maximum number of events or bytes; the event was not stored.
    #[error("outbox is full ({0} events waiting)")]
    Full(usize),
    /// The event could never be delivered: its frame would exceed the protocol's limit.
    #[error("event of {0} bytes exceeds the {MAX_FRAME_BYTES} byte frame limit")]
    TooLarge(usize),
    #[error("outbox {0} is in use by another agent")]
    Locked(PathBuf),
    /// A stored event could not be read back (deleted by hand, or corrupt); it was dropped.
    #[error("stored event {id} is unreadable and was dropped: {reason}")]
    Unreadable { id: Uuid, reason: String },
}

/// How much the outbox holds and sends at once.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Events kept on disk at most.
    pub max_events: usize,
    /// Bytes of event JSON kept on disk at most.
    pub max_bytes: u64,
    /// Events sent and not yet acknowledged at most.
    pub in_flight: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_events: 100_000,
            max_bytes: 256 * 1024 * 1024,
            in_flight: 256,
        }
    }
}

/// An event handed to the sender: read it with [`Outbox::read_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: u64,
    pub id: Uuid,
}

#[derive(Debug)]
struct Entry {
    id: Uuid,
    size: u64,
    /// When it was last handed to the sender; `None` while it waits to be sent.
    sent_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    /// Stored events by sequence number: iteration order is sending order.
    entries: BTreeMap<u64, Entry>,
    /// Stored and being-written events by id.
    by_id: HashMap<Uuid, u64>,
    next_seq: u64,
    /// Bytes stored plus bytes reserved by pushes still writing.
    bytes: u64,
    /// Pushes still writing; they count against `max_events`.
    reserved: usize,
    in_flight: usize,
}

struct Inner {
    dir: PathBuf,
    limits: OutboxLimits,
    state: Mutex<State>,
    /// Wakes the sender: something became sendable or the window opened.
    work: Notify,
    refused_full: AtomicU64,
    /// Holds the advisory lock for the life of the outbox.
    _lock: File,
}

/// The durable outbox. Cheap to share through `Arc`; every method takes `&self`.
pub struct Outbox {
    inner: Arc<Inner>,
}

fn file_name(seq: u64, id: Uuid) -> String {
    format!("{seq:020}-{}.json", id.hyphenated())
}

/// `<seq>-<uuid>.json` → (seq, id).
fn parse_file_name(name: &str) -> Option<(u64, Uuid)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, id) = stem.split_once('-')?;
    Some((seq.parse().ok()?, Uuid::parse_str(id).ok()?))
}

/// How long opening an outbox waits for another agent's lock on it to go away.
const LOCK_WAIT: Duration = Duration::from_secs(3);

impl Outbox {
    /// Opens (creating it if needed) the outbox in `dir`, re-loading the events a previous run
    /// left unacknowledged and deleting half-written ones.
    pub async fn open(
        dir: impl Into<PathBuf>,
        limits: OutboxLimits,
    ) -> Result<Outbox, OutboxError> {
        let dir = dir.into();
        tokio::task::spawn_blocking(move || Outbox::open_blocking(dir, limits))
            .await
            .map_err(|err| OutboxError::Io(std::io::Error::other(err)))?
    }

    fn open_blocking(dir: PathBuf, limits: OutboxLimits) -> Result<Outbox, OutboxError> {
        fs::create_dir_all(&dir)?;
        let lock = File::create(dir.join(".lock"))?;
        // A previous agent on this cache-dir may still be finishing its shutdown (a restart in
        // the same process, or a service manager that starts the next process early): wait a
        // moment for its lock before giving up.
        let waited_until = Instant::now() + LOCK_WAIT;
        while lock.try_lock().is_err() {
            if Instant::now() >= waited_until {
                return Err(OutboxError::Locked(dir));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut state = State::default();
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == ".lock" {
                continue;
            }
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A push that crashed before its rename: it never returned Ok.
                let _ = fs::remove_file(item.path());
                continue;
            }
            let Some((seq, id)) = parse_file_name(name) else {
                tracing::warn!(file = %item.path().display(), "ignoring unknown file in the outbox");
                continue;
            };
            let size = item.metadata()?.len();
            state.bytes += size;
            state.next_seq = state.next_seq.max(seq + 1);
            state.by_id.insert(id, seq);
            state.entries.insert(
                seq,
                Entry {
                    id,
                    size,
                    sent_at: None,
                },
            );
        }
        if !state.entries.is_empty() {
            tracing::info!(
                events = state.entries.len(),
                bytes = state.bytes,
                "outbox holds undelivered events from a previous run"
            );
        }
        Ok(Outbox {
            inner: Arc::new(Inner {
                dir,
                limits,
                state: Mutex::new(state),
                work: Notify::new(),
                refused_full: AtomicU64::new(0),
                _lock: lock,
            }),
        })
    }

    /// Stores `event` durably (assigning a new UUID v4 `id` when it has none, or when its id is
    /// already in the outbox); once this returns `Ok`, the event survives an agent crash and
    /// will be delivered.
    pub async fn push(&self, event: Event) -> Result<(), OutboxError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.push_blocking(event))
            .await
            .map_err(|err| OutboxError::Io(std::io::Error::other(err)))?
    }

    /// Up to the free part of the in-flight window, oldest first, now marked in flight.
    pub fn take_sendable(&self) -> Vec<Outgoing> {
        let mut state = self.inner.lock();
        let room = self.inner.limits.in_flight.saturating_sub(state.in_flight);
        if room == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut taken = Vec::new();
        for (seq, entry) in state.entries.iter_mut() {
            if taken.len() == room {
                break;
            }
            if entry.sent_at.is_none() {
                entry.sent_at = Some(now);
                taken.push(Outgoing {
                    seq: *seq,
                    id: entry.id,
                });
            }
        }
        state.in_flight += taken.len();
        taken
    }

    /// The `event` frame for `outgoing`, read from disk. An unreadable or corrupt file is
    /// dropped from the outbox (it could never be acknowledged) and reported as
    /// [`OutboxError::Unreadable`].
    pub async fn read_frame(&self, outgoing: &Outgoing) -> Result<Vec<u8>, OutboxError> {
        let path = self.inner.dir.join(file_name(outgoing.seq, outgoing.id));
        let checked = match tokio::fs::read(&path).await {
            Ok(body) => check_body(&body, outgoing.id).map(|()| body),
            Err(err) => Err(err.to_string()),
        };
        match checked {
            Ok(body) => {
                let mut frame = Vec::with_capacity(TYPE_EVENT.len() + 1 + body.len());
                frame.extend_from_slice(TYPE_EVENT.as_bytes());
                frame.push(b'\n');
                frame.extend_from_slice(&body);
                Ok(frame)
            }
            Err(reason) => {
                self.remove(&[outgoing.id]).await;
                Err(OutboxError::Unreadable {
                    id: outgoing.id,
                    reason,
                })
            }
        }
    }

    /// Deletes the acknowledged events (unknown ids — duplicates, or already deleted — are
    /// ignored) and returns how many were deleted.
    pub async fn remove(&self, ids: &[uuid::Uuid]) -> usize {
        let paths = {
            let mut state = self.inner.lock();
            let mut paths = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(seq) = state.by_id.get(id).copied() else {
                    continue;
                };
                // A push still writing this id has no entry yet: it cannot have been sent.
                let Some(entry) = state.entries.remove(&seq) else {
                    continue;
                };
                state.by_id.remove(id);
                state.bytes -= entry.size;
                if entry.sent_at.is_some() {
                    state.in_flight -= 1;
                }
                paths.push(self.inner.dir.join(file_name(seq, entry.id)));
            }
            paths
        };
        if paths.is_empty() {
            return 0;
        }
        self.inner.work.notify_one();
        let count = paths.len();
        let deleted = tokio::task::spawn_blocking(move || {
            for path in paths {
                if let Err(err) = fs::remove_file(&path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %path.display(), error = %err, "could not delete an acknowledged event");
                    }
                }
            }
        })
        .await;
        if let Err(err) = deleted {
            tracing::warn!(error = %err, "deleting acknowledged events failed");
        }
        count
    }

    /// Makes every in-flight event sendable again (the session that carried them ended).
    pub fn release_in_flight(&self) {
        let mut state = self.inner.lock();
        for entry in state.entries.values_mut() {
            entry.sent_at = None;
        }
        state.in_flight = 0;
        drop(state);
        self.inner.work.notify_one();
    }

    /// Makes events sent more than `ack_timeout` ago and still unacknowledged sendable again,
    /// within the same session: a backend that could not take an event (its queue was full)
    /// does not acknowledge it, and it must not hold a window slot until the next reconnect.
    /// Re-sending is safe: the backend drops duplicates by event id. Returns how many.
    pub fn release_overdue(&self, ack_timeout: Duration) -> usize {
        let mut state = self.inner.lock();
        let now = Instant::now();
        let mut released = 0;
        for entry in state.entries.values_mut() {
            if entry
                .sent_at
                .is_some_and(|sent| now.duration_since(sent) >= ack_timeout)
            {
                entry.sent_at = None;
                released += 1;
            }
        }
        state.in_flight -= released;
        drop(state);
        if released > 0 {
            self.inner.work.notify_one();
        }
        released
    }

    /// Resolves when something may have become sendable. Meant for one sender at a time; a
    /// wake-up that arrives while nobody waits is kept for the next call.
    pub async fn wait_for_work(&self) {
        self.inner.work.notified().await;
    }

    /// Events stored (sent or not) and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events refused because the outbox was full, since start.
    pub fn refused_full(&self) -> u64 {
        self.inner.refused_full.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock poisoned")
    }

    /// Serializes, reserves room, writes and commits; runs on the blocking pool.
    fn push_blocking(&self, mut event: Event) -> Result<(), OutboxError> {
        let mut id = event.id.unwrap_or_else(Uuid::new_v4);
        let (seq, body) = loop {
            event.id = Some(id);
            let body = serde_json::to_vec(&event).expect("events always serialize");
            if body.len() + TYPE_EVENT.len() + 1 > MAX_FRAME_BYTES {
                return Err(OutboxError::TooLarge(body.len()));
            }
            let size = body.len() as u64;
            let mut state = self.lock();
            if state.by_id.contains_key(&id) {
                id = Uuid::new_v4();
                continue;
            }
            let events = state.entries.len() + state.reserved;
            if events >= self.limits.max_events || state.bytes + size > self.limits.max_bytes {
                self.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(OutboxError::Full(events));
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.reserved += 1;
            state.bytes += size;
            state.by_id.insert(id, seq);
            break (seq, body);
        };
        let size = body.len() as u64;
        let written = write_durably(&self.dir, &file_name(seq, id), &body);
        let mut state = self.lock();
        state.reserved -= 1;
        match written {
            Ok(()) => {
                state.entries.insert(
                    seq,
                    Entry {
                        id,
                        size,
                        sent_at: None,
                    },
                );
                drop(state);
                self.work.notify_one();
                Ok(())
            }
            Err(err) => {
                state.bytes -= size;
                state.by_id.remove(&id);
                Err(err.into())
            }
        }
    }
}

/// Writes `body` to `dir/name` so that it is either complete or absent after a crash.
fn write_durably(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(body)?;
        file.sync_all()?;
        fs::rename(&temporary, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// A stored body must be JSON whose `id` is the one in its file name: anything else could never
/// be acknowledged and would block the window forever.
fn check_body(body: &[u8], expected: Uuid) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    let probe: IdOnly =
        serde_json::from_slice(body).map_err(|err| format!("invalid JSON: {err}"))?;
    match probe.id.as_deref().map(Uuid::parse_str) {
        Some(Ok(id)) if id == expected => Ok(()),
        _ => Err(format!("the file's id does not match {expected}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(output: &str) -> Event {
        let mut event = Event::default();
        let mut check = kensa_types::resources::check::Check::default();
        check.metadata.name = "disk".into();
        check.output = output.into();
        event.check = Some(check);
        event
    }

    /// An outbox with the default limits on `dir`, which must be free.
    async fn open(dir: &Path) -> Outbox {
        Outbox::open(dir, OutboxLimits::default()).await.unwrap()
    }

    fn stored_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".json"))
            .collect();
        names.sort();
        names
    }

    fn output_of(frame: &[u8]) -> String {
        let body = frame.strip_prefix(b"event\n").expect("event frame");
        let event: Event = serde_json::from_slice(body).unwrap();
        event.check.unwrap().output
    }

    #[tokio::test]
    async fn a_second_outbox_on_a_directory_waits_for_the_first_to_close() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).await;
        // Held for good: refused after the wait.
        let refused = Outbox::open(dir.path(), OutboxLimits::default()).await;
        assert!(
            matches!(refused, Err(OutboxError::Locked(_))),
            "a second outbox on a held directory must be refused"
        );
        // Closed during the wait (an agent finishing its shutdown): opened.
        let next = tokio::spawn(Outbox::open(dir.path().to_owned(), OutboxLimits::default()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(first);
        next.await
            .unwrap()
            .expect("opened once the first outbox closed");
    }

    #[tokio::test]
    async fn events_are_sent_oldest_first_and_deleted_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path()).await;
        for output in ["one", "two", "three"] {
            outbox.push(event(output)).await.unwrap();
        }
        assert_eq!(stored_files(dir.path()).len(), 3);

        let sendable = outbox.take_sendable();
        let mut outputs = Vec::new();
        for outgoing in &sendable {
            outputs.push(output_of(&outbox.read_frame(outgoing).await.unwrap()));
        }
        assert_eq!(outputs, ["one", "two", "three"]);
        assert!(outbox.take_sendable().is_empty(), "all in flight");

        assert_eq!(outbox.remove(&[sendable[0].id, Uuid::new_v4()]).await, 1);
        assert_eq!(outbox.len(), 2);
        assert_eq!(stored_files(dir.path()).len(), 2);

        outbox.release_in_flight();
        let again: Vec<Uuid> = outbox.take_sendable().iter().map(|o| o.id).collect();
        assert_eq!(again, [sendable[1].id, sendable[2].id]);
    }

    #[tokio::test]
    async fn unacknowledged_events_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let outbox = open(dir.path()).await;
            outbox.push(event("first")).await.unwrap();
            outbox.push(event("second")).await.unwrap();
            let sent = outbox.take_sendable();
            assert_eq!(
                Outbox::open(dir.path(), OutboxLimits::default())
                    .await
                    .err()
                    .map(|e| e.to_string()),
                Some(format!(
                    "outbox {} is in use by another agent",
                    dir.path().display()
                ))
            );
            sent.into_iter().map(|o| o.id).collect::<Vec<_>>()
        };
        fs::write(
            dir.path().join(".00000000000000000009-x.json.tmp"),
            b"{half",
        )
        .unwrap();

        let outbox = open(dir.path()).await;
        let sendable = outbox.take_sendable();
        assert_eq!(sendable.iter().map(|o| o.id).collect::<Vec<_>>(), ids);
        assert_eq!(
            output_of(&outbox.read_frame(&sendable[1]).await.unwrap()),
            "second"
        );
        assert!(!dir.path().join(".00000000000000000009-x.json.tmp").exists());
        outbox.push(event("third")).await.unwrap();
        let names = stored_files(dir.path());
        assert!(names[2].starts_with("00000000000000000002-"), "{names:?}");
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            max_events: 2,
            ..OutboxLimits::default()
        };
        let outbox = Outbox::open(dir.path(), limits).await.unwrap();
        outbox.push(event("a")).await.unwrap();
        outbox.push(event("b")).await.unwrap();
        assert!(matches!(
            outbox.push(event("c")).await,
            Err(OutboxError::Full(2))
        ));
        assert_eq!(outbox.refused_full(), 1);
        assert_eq!(stored_files(dir.path()).len(), 2);

        let small = OutboxLimits {
            max_bytes: 10,
            ..OutboxLimits::default()
        };
        let other = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(other.path(), small).await.unwrap();
        assert!(matches!(
            outbox.push(event("a")).await,
            Err(OutboxError::Full(0))
        ));
    }

    #[tokio::test]
    async fn the_window_bounds_events_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            in_flight: 2,
            ..OutboxLimits::default()
        };
        let outbox = Outbox::open(dir.path(), limits).await.unwrap();
        for output in ["a", "b", "c"] {
            outbox.push(event(output)).await.unwrap();
        }
        let first = outbox.take_sendable();
        assert_eq!(first.len(), 2);
        assert!(outbox.take_sendable().is_empty());
        outbox.remove(&[first[0].id]).await;
        assert_eq!(outbox.take_sendable().len(), 1);
    }

    #[tokio::test]
    async fn events_whose_ack_is_overdue_are_sent_again_in_the_same_session() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            in_flight: 2,
            ..OutboxLimits::default()
        };
        let outbox = Outbox::open(dir.path(), limits).await.unwrap();
        for output in ["a", "b"] {
            outbox.push(event(output)).await.unwrap();
        }
        let sent = outbox.take_sendable();
        assert_eq!(sent.len(), 2);
        // Not overdue yet: nothing to re-send, the window stays full.
        assert_eq!(outbox.release_overdue(Duration::from_secs(3600)), 0);
        assert!(outbox.take_sendable().is_empty());
        // Never acknowledged (the backend had no room): both go out again, oldest first.
        assert_eq!(outbox.release_overdue(Duration::ZERO), 2);
        let again = outbox.take_sendable();
        assert_eq!(
            again.iter().map(|o| o.id).collect::<Vec<_>>(),
            sent.iter().map(|o| o.id).collect::<Vec<_>>()
        );
        outbox.remove(&[again[0].id, again[1].id]).await;
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn an_id_already_stored_is_replaced_and_corrupt_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path()).await;
        let id = Uuid::new_v4();
        let mut with_id = event("x");
        with_id.id = Some(id);
        outbox.push(with_id.clone()).await.unwrap();
        outbox.push(with_id).await.unwrap();
        let sent = outbox.take_sendable();
        assert_eq!(sent[0].id, id);
        assert_ne!(sent[1].id, id);

        fs::write(
            dir.path().join(file_name(sent[1].seq, sent[1].id)),
            b"garbage",
        )
        .unwrap();
        let err = outbox.read_frame(&sent[1]).await.unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
        assert_eq!(outbox.len(), 1);
    }
}
