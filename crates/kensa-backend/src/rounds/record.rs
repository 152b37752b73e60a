//! Round ids and round records: what decides, across every backend, whether a round-robin
//! round already ran.
//!
//! A round-robin round id is `<namespace>/<check>@<tick ms>[/<proxy entity>]#<subscription>`
//! (`@adhoc-<id>` instead of the tick for ad hoc runs). Names never contain `/`, `@` or `#`, so
//! the id parses back unambiguously.
//!
//! Each `(check, proxy entity, subscription)` keeps a ring of [`RING`] records in the store
//! (kind [`KIND`], name `<check>[/<proxy>]#<subscription>/<slot>`), the slot being the round's
//! tick counted in check periods modulo the ring size. A record says which round last used the
//! slot and whether it was completed (by which agent, with which event) or reported missed,
//! plus the second executions that arrived after completion. The ring bounds storage without a
//! pruning job and is what the dashboard shows as "last rounds".
//!
//! Claims are compare-and-set writes on the slot (create, or replace at the read revision), so
//! two backends storing results of the same round concurrently get exactly one winner.
//! Invariant: a round is completed at most once; a result for a completed round is a duplicate
//! unless it is the very event that completed it (an agent re-sending after a lost ack).

use std::sync::Arc;

use kensa_store::batched::BatchedPuts;
use kensa_store::{Key, Precondition, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store kind of round records.
pub const KIND: &str = "kensa.rounds";
/// Records kept per `(check, proxy entity, subscription)`.
pub const RING: i64 = 64;
/// Duplicates remembered on one record (the counter keeps counting).
const MAX_DUPLICATES_KEPT: usize = 16;
/// Compare-and-set attempts before giving up on a contended slot.
const CAS_ATTEMPTS: usize = 8;

/// A parsed round-robin round id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoundRef {
    /// The whole id.
    pub id: String,
    pub namespace: String,
    pub check: String,
    /// The scheduled tick (Unix ms); `None` for an ad hoc run.
    pub tick_ms: Option<i64>,
    /// The ad hoc request id, for ad hoc runs.
    pub adhoc: Option<String>,
    pub proxy_entity: Option<String>,
    pub subscription: String,
}

impl RoundRef {
    /// Parses a round-robin round id; `None` for any other round (fan-out checks carry a
    /// round without `#<subscription>`).
    pub fn parse(id: &str) -> Option<RoundRef> {
        let (base, subscription) = id.split_once('#')?;
        let (namespace, rest) = base.split_once('/')?;
        let (check, after) = rest.split_once('@')?;
        let (when, proxy) = match after.split_once('/') {
            Some((when, proxy)) => (when, Some(proxy.to_owned())),
            None => (after, None),
        };
        let (tick_ms, adhoc) = match when.strip_prefix("adhoc-") {
            Some(request) => (None, Some(request.to_owned())),
            None => (Some(when.parse().ok()?), None),
        };
        if namespace.is_empty() || check.is_empty() || subscription.is_empty() {
            return None;
        }
        Some(RoundRef {
            id: id.to_owned(),
            namespace: namespace.to_owned(),
            check: check.to_owned(),
            tick_ms,
            adhoc,
            proxy_entity: proxy,
            subscription: subscription.to_owned(),
        })
    }

    /// The round-robin id of `base` (a scheduler round id) for one subscription.
    pub fn id_for(base: &str, subscription: &str) -> String {
        format!("{base}#{subscription}")
    }

    /// The store key of this round's slot; `period_ms` is the check's interval (or a minute
    /// for cron checks).
    pub fn slot_key(&self, period_ms: i64) -> Key {
        let slot = match (self.tick_ms, &self.adhoc) {
            (Some(tick), _) => format!("{:02}", (tick / period_ms.max(1)).rem_euclid(RING)),
            (None, adhoc) => format!(
                "adhoc-{:02}",
                stable_hash(adhoc.as_deref().unwrap_or("")) % 16
            ),
        };
        let series = match &self.proxy_entity {
            Some(proxy) => format!("{}/{proxy}", self.check),
            None => self.check.clone(),
        };
        Key::new(
            KIND,
            &self.namespace,
            format!("{series}#{}/{slot}", self.subscription),
        )
    }
}

/// The period a check's rounds are counted in: its interval, or a minute for cron checks.
pub fn period_ms(interval_seconds: u64) -> i64 {
    match interval_seconds {
        0 => 60_000,
        seconds => seconds as i64 * 1000,
    }
}

fn stable_hash(text: &str) -> u64 {
    // FNV-1a: the same on every backend and every build (unlike the std hasher's seed).
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a slot records about its round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundRecord {
    pub round: String,
    /// `completed` or `missed`.
    pub state: String,
    /// The scheduled tick (Unix ms), 0 for ad hoc rounds.
    pub tick: i64,
    /// The agent whose result completed the round.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub entity: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub event_id: String,
    pub status: u32,
    /// When the completing result was executed (Unix seconds).
    pub executed: i64,
    /// When the backend stored the completion / reported the miss (Unix ms).
    pub recorded_at: i64,
    /// Whether the round was reported missed before its result finally arrived.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// Second executions that arrived after completion (at most a few kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<Duplicate>,
    pub duplicate_count: u64,
    /// The queue's delivery count when the round was settled: 1 when a completion is
    /// recorded, raised by [`note_deliveries`] when the round had gone back to the queue first
    /// (its agent left or ran out of time, no free agent could take it at once, a backend
    /// died); 0 when unknown (missed rounds, records written before this field).
    #[serde(skip_serializing_if = "is_zero")]
    pub deliveries: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

pub const COMPLETED: &str = "completed";
pub const MISSED: &str = "missed";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Duplicate {
    pub entity: String,
    pub event_id: String,
    pub status: u32,
    pub executed: i64,
    pub recorded_at: i64,
}

/// The result asking to complete a round.
#[derive(Debug, Clone)]
pub struct Completion {
    pub entity: String,
    pub event_id: String,
    pub status: u32,
    pub executed: i64,
    pub now_ms: i64,
}

/// What claiming a round decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This result completes the round (or is the re-sent event that already did).
    First,
    /// Completes a round that was already reported missed.
    Late,
    /// The round was completed by another execution: store nothing, handle nothing.
    Duplicate,
}

/// What reporting a round missed decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// This caller recorded the miss and must raise the event.
    Recorded,
    /// Another backend already recorded it.
    AlreadyRecorded,
    /// The round was completed after all.
    Completed,
}

/// The revision and round this backend last wrote to each slot: the common claim — a new
/// round replacing the one this backend completed a ring ago — is then one conditional write
/// instead of a read and a write. A stale entry only costs a failed write and the full path.
///
/// With [`SlotCache::batched`], those conditional writes share store transactions with the
/// claims of other results arriving meanwhile ([`BatchedPuts`]).
#[derive(Default)]
pub struct SlotCache {
    slots: std::sync::Mutex<std::collections::HashMap<Key, (i64, String)>>,
    puts: Option<BatchedPuts>,
}

/// Entries kept before the cache starts over (a few hundred bytes each).
const SLOT_CACHE_LIMIT: usize = 500_000;

impl SlotCache {
    /// A cache whose claim writes go through one group-committing writer on `store` (start it
    /// inside the Tokio runtime).
    pub fn batched(store: Arc<dyn Store>) -> SlotCache {
        SlotCache {
            slots: Default::default(),
            puts: Some(BatchedPuts::start(store)),
        }
    }

    fn get(&self, key: &Key) -> Option<(i64, String)> {
        self.slots
            .lock()
            .expect("slot cache poisoned")
            .get(key)
            .cloned()
    }

    fn set(&self, key: Key, revision: i64, round: &str) {
        let mut slots = self.slots.lock().expect("slot cache poisoned");
        if slots.len() >= SLOT_CACHE_LIMIT {
            slots.clear();
        }
        slots.insert(key, (revision, round.to_owned()));
    }

    /// Whether the last record this backend wrote to `round`'s slot is of an earlier round, so
    /// that — when this backend is the store's only writer — `round` cannot be completed and
    /// no store read is needed to know it. `false` means "not known": ask the store.
    pub fn holds_earlier_round(&self, round: &RoundRef, period_ms: i64) -> bool {
        let Some(tick) = round.tick_ms else {
            return false;
        };
        let Some((_, last)) = self.get(&round.slot_key(period_ms)) else {
            return false;
        };
        RoundRef::parse(&last)
            .and_then(|last| last.tick_ms)
            .is_some_and(|last_tick| last_tick < tick)
    }
}

/// Claims `round` for `result` (see the module comment).
pub async fn claim(
    store: &dyn Store,
    cache: &SlotCache,
    round: &RoundRef,
    period_ms: i64,
    result: &Completion,
) -> Result<Claim, StoreError> {
    let key = round.slot_key(period_ms);
    // The common claims are one conditional write: a new round replacing the one this
    // backend wrote to the slot a ring ago, or a slot this backend never wrote (most likely
    // never written: the first ring of a check). Anything else, or a failed precondition,
    // takes the full path below.
    let fast = match cache.get(&key) {
        Some((revision, previous)) if previous != round.id => {
            Some(Precondition::Revision(revision))
        }
        Some(_) => None,
        None => Some(Precondition::Absent),
    };
    if let Some(precondition) = fast {
        let mut record = RoundRecord {
            round: round.id.clone(),
            tick: round.tick_ms.unwrap_or(0),
            ..RoundRecord::default()
        };
        record.complete(result);
        let value =
            serde_json::to_value(&record).map_err(|err| StoreError::Internal(err.to_string()))?;
        let written = match &cache.puts {
            Some(puts) => puts.put(key.clone(), value, precondition).await,
            None => store.put(&key, &value, precondition).await,
        };
        match written {
            Ok(revision) => {
                cache.set(key, revision, &round.id);
                return Ok(Claim::First);
            }
            Err(
                StoreError::Conflict(_) | StoreError::NotFound(_) | StoreError::AlreadyExists(_),
            ) => {}
            Err(err) => return Err(err),
        }
    }
    for _ in 0..CAS_ATTEMPTS {
        let current = store.get(&key).await?;
        let (mut record, precondition) = match &current {
            Some(stored) => (
                decode(&stored.value),
                Precondition::Revision(stored.revision),
            ),
            None => (RoundRecord::default(), Precondition::None),
        };
        let claim = if record.round == round.id {
            match record.state.as_str() {
                COMPLETED if record.event_id == result.event_id => return Ok(Claim::First),
                COMPLETED => {
                    record.duplicate_count += 1;
                    if record.duplicates.len() < MAX_DUPLICATES_KEPT {
                        record.duplicates.push(Duplicate {
                            entity: result.entity.clone(),
                            event_id: result.event_id.clone(),
                            status: result.status,
                            executed: result.executed,
                            recorded_at: result.now_ms,
                        });
                    }
                    Claim::Duplicate
                }
                _ => {
                    record.complete(result);
                    record.late = true;
                    Claim::Late
                }
            }
        } else {
            record = RoundRecord {
                round: round.id.clone(),
                tick: round.tick_ms.unwrap_or(0),
                ..RoundRecord::default()
            };
            record.complete(result);
            Claim::First
        };
        match write(store, &key, &record, current.is_none(), precondition).await {
            Ok(revision) => {
                cache.set(key, revision, &round.id);
                return Ok(claim);
            }
            Err(StoreError::AlreadyExists(_) | StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key}: too much contention on the round record"
    )))
}

/// Records `round` as missed unless it was completed (see [`Miss`]).
pub async fn mark_missed(
    store: &dyn Store,
    round: &RoundRef,
    period_ms: i64,
    now_ms: i64,
) -> Result<Miss, StoreError> {
    let key = round.slot_key(period_ms);
    for _ in 0..CAS_ATTEMPTS {
        let current = store.get(&key).await?;
        let precondition = match &current {
            Some(stored) => {
                let record = decode(&stored.value);
                if record.round == round.id {
                    return Ok(if record.state == COMPLETED {
                        Miss::Completed
                    } else {
                        Miss::AlreadyRecorded
                    });
                }
                Precondition::Revision(stored.revision)
            }
            None => Precondition::None,
        };
        let record = RoundRecord {
            round: round.id.clone(),
            state: MISSED.to_owned(),
            tick: round.tick_ms.unwrap_or(0),
            recorded_at: now_ms,
            ..RoundRecord::default()
        };
        match write(store, &key, &record, current.is_none(), precondition).await {
            Ok(_) => return Ok(Miss::Recorded),
            Err(StoreError::AlreadyExists(_) | StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key}: too much contention on the round record"
    )))
}

/// Raises the delivery count recorded for `round` to `deliveries` (the attempt number of the
/// delivery whose agent answered). Only redeliveries need it: the completion records one.
pub async fn note_deliveries(
    store: &dyn Store,
    round: &RoundRef,
    period_ms: i64,
    deliveries: u32,
) -> Result<(), StoreError> {
    let key = round.slot_key(period_ms);
    for _ in 0..CAS_ATTEMPTS {
        let Some(stored) = store.get(&key).await? else {
            return Ok(());
        };
        let mut record = decode(&stored.value);
        if record.round != round.id || record.deliveries >= deliveries {
            return Ok(());
        }
        record.deliveries = deliveries;
        let precondition = Precondition::Revision(stored.revision);
        match write(store, &key, &record, false, precondition).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{key}: too much contention on the round record"
    )))
}

/// Whether `round` was completed, from its slot.
pub async fn is_completed(
    store: &dyn Store,
    round: &RoundRef,
    period_ms: i64,
) -> Result<bool, StoreError> {
    let key = round.slot_key(period_ms);
    Ok(store.get(&key).await?.is_some_and(|stored| {
        let record = decode(&stored.value);
        record.round == round.id && record.state == COMPLETED
    }))
}

impl RoundRecord {
    fn complete(&mut self, result: &Completion) {
        self.state = COMPLETED.to_owned();
        self.entity = result.entity.clone();
        self.event_id = result.event_id.clone();
        self.status = result.status;
        self.executed = result.executed;
        self.recorded_at = result.now_ms;
        self.deliveries = self.deliveries.max(1);
    }
}

pub fn decode(value: &Value) -> RoundRecord {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

async fn write(
    store: &dyn Store,
    key: &Key,
    record: &RoundRecord,
    create: bool,
    precondition: Precondition,
) -> Result<i64, StoreError> {
    let value =
        serde_json::to_value(record).map_err(|err| StoreError::Internal(err.to_string()))?;
    if create {
        store.create(key, &value).await
    } else {
        store.put(key, &value, precondition).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_ids_parse_back() {
        let cases = [
            (
                "default/ping@1700000000000#zone-a",
                Some((
                    "default",
                    "ping",
                    Some(1_700_000_000_000),
                    None,
                    None,
                    "zone-a",
                )),
            ),
            (
                "ops/http@1700000000000/router-1#entity:web-1",
                Some((
                    "ops",
                    "http",
                    Some(1_700_000_000_000),
                    None,
                    Some("router-1"),
                    "entity:web-1",
                )),
            ),
            (
                "default/ping@adhoc-4f2a#linux",
                Some(("default", "ping", None, Some("4f2a"), None, "linux")),
            ),
            ("default/ping@1700000000000", None), // fan-out round
            ("default/ping@soon#linux", None),
            ("ping@1#linux", None),
        ];
        for (id, expected) in cases {
            let parsed = RoundRef::parse(id);
            let got = parsed.as_ref().map(|r| {
                (
                    r.namespace.as_str(),
                    r.check.as_str(),
                    r.tick_ms,
                    r.adhoc.as_deref(),
                    r.proxy_entity.as_deref(),
                    r.subscription.as_str(),
                )
            });
            assert_eq!(got, expected, "{id}");
        }
    }

    #[test]
    fn consecutive_rounds_use_distinct_slots_for_a_whole_ring() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..RING {
            let tick = 1_700_000_000_000 + n * 10_000;
            let round = RoundRef::parse(&format!("default/ping@{tick}#linux")).unwrap();
            assert!(seen.insert(round.slot_key(10_000).name));
        }
        let wrapped = RoundRef::parse(&format!(
            "default/ping@{}#linux",
            1_700_000_000_000 + RING * 10_000
        ))
        .unwrap();
        assert!(seen.contains(&wrapped.slot_key(10_000).name));
    }
    /// `claim` with a cache of its own (the tests are about the store's answers).
    async fn claim(
        store: &dyn Store,
        round: &RoundRef,
        period_ms: i64,
        result: &Completion,
    ) -> Result<Claim, StoreError> {
        super::claim(store, &SlotCache::default(), round, period_ms, result).await
    }

    fn result(entity: &str, event_id: &str) -> Completion {
        Completion {
            entity: entity.into(),
            event_id: event_id.into(),
            status: 0,
            executed: 1_700_000_000,
            now_ms: 1_700_000_000_500,
        }
    }

    async fn store() -> std::sync::Arc<dyn Store> {
        std::sync::Arc::new(
            kensa_store::sqlite::SqliteStore::open_in_memory()
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn the_slot_cache_knows_a_round_is_open_only_behind_an_earlier_claim() {
        let store = store().await;
        let cache = SlotCache::default();
        let period = 10_000;
        let tick = |ring: i64| {
            format!(
                "default/ping@{}#zone",
                1_700_000_000_000 + ring * RING * period
            )
        };
        let (first, next, older) = (
            RoundRef::parse(&tick(1)).unwrap(),
            RoundRef::parse(&tick(2)).unwrap(),
            RoundRef::parse(&tick(0)).unwrap(),
        );
        assert_eq!(first.slot_key(period), next.slot_key(period));
        // Nothing written to the slot by this backend: not known (the store must say).
        assert!(!cache.holds_earlier_round(&next, period));
        super::claim(store.as_ref(), &cache, &first, period, &result("a", "e1"))
            .await
            .unwrap();
        // The slot holds an earlier round: the next one of the slot cannot be completed.
        assert!(cache.holds_earlier_round(&next, period));
        // The claimed round itself, and an older one, are not known to be open.
        assert!(!cache.holds_earlier_round(&first, period));
        assert!(!cache.holds_earlier_round(&older, period));
        super::claim(store.as_ref(), &cache, &next, period, &result("b", "e2"))
            .await
            .unwrap();
        assert!(!cache.holds_earlier_round(&next, period));
        assert!(is_completed(store.as_ref(), &next, period).await.unwrap());
    }

    #[tokio::test]
    async fn the_first_result_completes_a_round_and_later_ones_are_duplicates() {
        let store = store().await;
        let round = RoundRef::parse("default/ping@1700000000000#zone").unwrap();
        let cases = [
            (result("a", "e1"), Claim::First),
            (result("a", "e1"), Claim::First), // the same event re-sent after a lost ack
            (result("b", "e2"), Claim::Duplicate),
            (result("c", "e3"), Claim::Duplicate),
        ];
        for (completion, expected) in cases {
            let claim = claim(store.as_ref(), &round, 10_000, &completion)
                .await
                .unwrap();
            assert_eq!(claim, expected, "{completion:?}");
        }
        let stored = store.get(&round.slot_key(10_000)).await.unwrap().unwrap();
        let record = decode(&stored.value);
        assert_eq!(
            (record.state.as_str(), record.entity.as_str()),
            (COMPLETED, "a")
        );
        assert_eq!(record.duplicate_count, 2);
        assert_eq!(
            record
                .duplicates
                .iter()
                .map(|d| d.entity.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert!(is_completed(store.as_ref(), &round, 10_000).await.unwrap());
        // The next round reuses nothing of it.
        let next = RoundRef::parse("default/ping@1700000010000#zone").unwrap();
        assert!(!is_completed(store.as_ref(), &next, 10_000).await.unwrap());
        assert_eq!(
            claim(store.as_ref(), &next, 10_000, &result("b", "e4"))
                .await
                .unwrap(),
            Claim::First
        );
    }

    #[tokio::test]
    async fn a_missed_round_is_recorded_once_and_a_late_result_still_completes_it() {
        let store = store().await;
        let round = RoundRef::parse("default/ping@1700000000000#zone").unwrap();
        assert_eq!(
            mark_missed(store.as_ref(), &round, 10_000, 1)
                .await
                .unwrap(),
            Miss::Recorded
        );
        assert_eq!(
            mark_missed(store.as_ref(), &round, 10_000, 2)
                .await
                .unwrap(),
            Miss::AlreadyRecorded,
            "a second backend does not raise it again"
        );
        assert_eq!(
            claim(store.as_ref(), &round, 10_000, &result("a", "e1"))
                .await
                .unwrap(),
            Claim::Late
        );
        assert_eq!(
            mark_missed(store.as_ref(), &round, 10_000, 3)
                .await
                .unwrap(),
            Miss::Completed
        );
        let record = decode(
            &store
                .get(&round.slot_key(10_000))
                .await
                .unwrap()
                .unwrap()
                .value,
        );
        assert!(record.late);
    }

    #[tokio::test]
    async fn concurrent_claims_of_one_round_have_exactly_one_winner() {
        let store = store().await;
        let round = RoundRef::parse("default/ping@1700000000000#zone").unwrap();
        let claims = futures::future::join_all((0..8).map(|i| {
            let store = store.clone();
            let round = round.clone();
            async move {
                claim(
                    store.as_ref(),
                    &round,
                    10_000,
                    &result(&format!("agent-{i}"), &format!("e{i}")),
                )
                .await
                .unwrap()
            }
        }))
        .await;
        assert_eq!(
            claims.iter().filter(|c| **c == Claim::First).count(),
            1,
            "{claims:?}"
        );
        assert_eq!(claims.iter().filter(|c| **c == Claim::Duplicate).count(), 7);
    }
    #[tokio::test]
    async fn a_stale_slot_cache_never_lets_a_round_complete_twice() {
        let store = store().await;
        let (cache_a, cache_b) = (SlotCache::default(), SlotCache::default());
        let first = RoundRef::parse("default/ping@1700000000000#zone").unwrap();
        // The same slot one ring later.
        let later = RoundRef::parse(&format!(
            "default/ping@{}#zone",
            1_700_000_000_000 + RING * 10_000
        ))
        .unwrap();
        let claim_with = |cache, round, entity, id| {
            let store = store.clone();
            async move {
                super::claim(store.as_ref(), cache, round, 10_000, &result(entity, id))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(claim_with(&cache_a, &first, "a", "e1").await, Claim::First);
        // Backend B completes the later round: A's cached revision is now stale.
        assert_eq!(claim_with(&cache_b, &later, "b", "e2").await, Claim::First);
        assert_eq!(
            claim_with(&cache_a, &later, "c", "e3").await,
            Claim::Duplicate,
            "the fast path's conditional write fails and the full path sees the completion"
        );
        // A's cache is fresh again: its next round is one write, and correct.
        let next = RoundRef::parse(&format!(
            "default/ping@{}#zone",
            1_700_000_000_000 + 2 * RING * 10_000
        ))
        .unwrap();
        assert_eq!(claim_with(&cache_a, &next, "a", "e4").await, Claim::First);
        assert_eq!(
            claim_with(&cache_b, &next, "b", "e5").await,
            Claim::Duplicate
        );
    }

    #[tokio::test]
    async fn redeliveries_are_counted_on_the_completed_round_only() {
        let store = store().await;
        let round = RoundRef::parse("default/ping@1700000000000#zone").unwrap();
        let read = || async {
            decode(
                &store
                    .get(&round.slot_key(10_000))
                    .await
                    .unwrap()
                    .unwrap()
                    .value,
            )
        };
        // A record written before the field existed reads as "unknown".
        let old = json!({"round": round.id, "state": COMPLETED, "tick": 1, "entity": "a",
                         "status": 0, "executed": 1, "recorded_at": 1, "duplicate_count": 0});
        assert_eq!(decode(&old).deliveries, 0);

        claim(store.as_ref(), &round, 10_000, &result("a", "e1"))
            .await
            .unwrap();
        assert_eq!(read().await.deliveries, 1, "a completion is one delivery");
        note_deliveries(store.as_ref(), &round, 10_000, 3)
            .await
            .unwrap();
        note_deliveries(store.as_ref(), &round, 10_000, 2)
            .await
            .unwrap();
        assert_eq!(read().await.deliveries, 3, "the highest attempt stays");
        // Another round of the same slot is left alone, and so is a slot never written.
        let later = RoundRef::parse(&format!(
            "default/ping@{}#zone",
            1_700_000_000_000 + RING * 10_000
        ))
        .unwrap();
        note_deliveries(store.as_ref(), &later, 10_000, 7)
            .await
            .unwrap();
        assert_eq!(read().await.deliveries, 3);
        let elsewhere = RoundRef::parse("default/ping@1700000000000#other").unwrap();
        note_deliveries(store.as_ref(), &elsewhere, 10_000, 2)
            .await
            .unwrap();
        assert!(store
            .get(&elsewhere.slot_key(10_000))
            .await
            .unwrap()
            .is_none());
        // A missed round knows nothing of its deliveries.
        let missed = RoundRef::parse("default/ping@1700000010000#zone").unwrap();
        mark_missed(store.as_ref(), &missed, 10_000, 5)
            .await
            .unwrap();
        let stored = store.get(&missed.slot_key(10_000)).await.unwrap().unwrap();
        assert_eq!(decode(&stored.value).deliveries, 0);
        assert!(stored.value.get("deliveries").is_none());
    }
}
