//! The dashboard's in-memory index of events, entities and silences, per namespace.
//!
//! Why: the overview counts events by state and the events page sorts by severity over tens of
//! thousands of events. The store can only list in key order, so answering either from it would
//! read every event on every page view. The index keeps a compact summary of each event and
//! entity (never the full documents: output is cut, system facts are dropped), built once by
//! paging through the store and kept current by following the change feed the same way
//! [`crate::view::ConfigView`] does — including its rule that a gap in the feed (pruned past us)
//! means "reload everything".
//!
//! Silencing is evaluated at read time against the namespace's current silences (Sensu's
//! matching rules, reference sensu-internals §3.6), so creating or deleting a silence changes
//! what the dashboard shows at once, without waiting for the event's next result.
//!
//! Everything that interprets the summaries (buckets, ordering, filters, counts) is pure and
//! tested here; the HTTP side is `web::handlers`.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kensa_store::{ChangeOp, ListQuery, RawChange, Store};
use kensa_types::resources::silenced::Silenced;
use kensa_types::selector::Selector;
use kensa_types::Kind;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pruned::{self, Keep};

/// The store kinds the index follows.
const INDEXED_KINDS: [&str; 3] = ["events", "entities", "silenced"];

/// The keys of a stored event that [`EventSummary::from_value`] reads (with what
/// `Kind::Event.redact` reads), so followed events are parsed without building the rest
/// (`pruned.rs`). Keep the two in step; `pruned_summaries_equal_full_ones` compares them.
static EVENT_SUMMARY_KEYS: Keep = Keep::Keys(&[
    ("timestamp", Keep::All),
    ("metadata", Keep::All),
    (
        "entity",
        Keep::Keys(&[
            ("metadata", Keep::All),
            ("entity_class", Keep::All),
            ("subscriptions", Keep::All),
            ("redact", Keep::All),
        ]),
    ),
    (
        "check",
        Keep::Keys(&[
            ("metadata", Keep::All),
            ("status", Keep::All),
            ("history", Keep::All),
            ("occurrences", Keep::All),
            ("executed", Keep::All),
            ("output", Keep::All),
            ("state", Keep::All),
            ("last_ok", Keep::All),
            ("round_robin", Keep::All),
            ("processed_by", Keep::All),
            ("subscriptions", Keep::All),
            ("proxy_entity_name", Keep::All),
        ]),
    ),
]);

/// Characters of check output kept per event (for the list and free-text search); the event
/// detail reads the whole event from the store.
pub const OUTPUT_CHARS: usize = 240;

/// The name of the check agents' keepalives are reported under.
pub const KEEPALIVE_CHECK: &str = "keepalive";

/// Marks an event as "a round-robin round was missed" (no agent ran the check in its round).
///
/// Hook: the scheduler work defines how a missed round is reported. Until then an event counts
/// as a missed round when its check carries this annotation with the value `"true"`; change
/// [`is_missed_round`] (only) when the scheduler settles on its own name or annotation.
pub const MISSED_ROUND_ANNOTATION: &str = "kensa.io/missed-round";

/// Where an event stands, as the overview counts it. Every event is in exactly one bucket:
/// a silenced problem is counted under `Silenced`, not under its severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Critical,
    Warning,
    Unknown,
    Silenced,
    Ok,
}

impl Bucket {
    pub fn parse(word: &str) -> Option<Bucket> {
        Some(match word {
            "critical" => Bucket::Critical,
            "warning" => Bucket::Warning,
            "unknown" => Bucket::Unknown,
            "silenced" => Bucket::Silenced,
            "ok" | "passing" => Bucket::Ok,
            _ => return None,
        })
    }
}

/// Severity of a check status: 0 OK, 1 WARNING, 2 CRITICAL, anything else UNKNOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Unknown,
    Ok,
}

impl Severity {
    pub fn of(status: u32) -> Severity {
        match status {
            0 => Severity::Ok,
            1 => Severity::Warning,
            2 => Severity::Critical,
            _ => Severity::Unknown,
        }
    }

    /// Worst first.
    fn rank(self) -> u8 {
        match self {
            Severity::Critical => 0,
            Severity::Warning => 1,
            Severity::Unknown => 2,
            Severity::Ok => 3,
        }
    }
}

/// What an event is about, for "keepalive failures and missed rounds stand out".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    Keepalive,
    MissedRound,
    Check,
}

impl Problem {
    pub fn parse(word: &str) -> Option<Problem> {
        Some(match word {
            "keepalive" => Problem::Keepalive,
            "missed_round" => Problem::MissedRound,
            "check" => Problem::Check,
            _ => return None,
        })
    }

    fn rank(self) -> u8 {
        match self {
            Problem::Keepalive => 0,
            Problem::MissedRound => 1,
            Problem::Check => 2,
        }
    }
}

/// The part of an event the dashboard lists, sorts and filters on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSummary {
    pub entity: String,
    pub check: String,
    pub status: u32,
    /// `passing`, `failing` or `flapping`.
    pub state: String,
    pub timestamp: i64,
    pub executed: i64,
    pub last_ok: i64,
    pub occurrences: i64,
    /// When the current run of identical statuses began (from the history), or the oldest
    /// known result if the run is longer than the history.
    pub since: i64,
    /// The last statuses, oldest first (at most 21).
    pub history: Vec<u32>,
    /// The start of the output, at most [`OUTPUT_CHARS`] characters.
    pub output: String,
    pub entity_class: String,
    pub problem: Problem,
    pub round_robin: bool,
    /// The agent that executed the check.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub processed_by: String,
    #[serde(skip)]
    pub check_subscriptions: Vec<String>,
    #[serde(skip)]
    pub entity_subscriptions: Vec<String>,
    /// True when the check ran for a proxy entity (`proxy_entity_name`): silences then match
    /// any of the entity's subscriptions, not only those shared with the check.
    #[serde(skip)]
    pub proxy: bool,
    /// `event.labels.<key>` fields (event, entity and check labels merged, check winning), as
    /// label selectors read them; entity values already redacted.
    #[serde(skip)]
    pub label_fields: Vec<(String, String)>,
    /// Lowercased entity, check and output, for free-text search.
    #[serde(skip)]
    pub haystack: String,
}

impl EventSummary {
    /// Summarizes a stored event; `None` for values that are not events with an entity and a
    /// check (the store holds only those, but the index never trusts that). Reads only the
    /// keys listed in [`EVENT_SUMMARY_KEYS`].
    pub fn from_value(mut value: Value) -> Option<EventSummary> {
        Kind::Event.redact(&mut value);
        let entity = value["entity"]["metadata"]["name"].as_str()?.to_owned();
        let check = &value["check"];
        let check_name = check["metadata"]["name"].as_str()?.to_owned();
        let status = check["status"].as_u64().unwrap_or(0).min(u32::MAX as u64) as u32;
        let history: Vec<(u32, i64)> = check["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["status"].as_u64().unwrap_or(0).min(u32::MAX as u64) as u32,
                    h["executed"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        let occurrences = check["occurrences"].as_i64().unwrap_or(0);
        let executed = check["executed"].as_i64().unwrap_or(0);
        let timestamp = value["timestamp"].as_i64().unwrap_or(0);
        let since = run_start(&history, occurrences).unwrap_or(if executed > 0 {
            executed
        } else {
            timestamp
        });
        let output = truncate_chars(check["output"].as_str().unwrap_or_default(), OUTPUT_CHARS);
        let mut labels = BTreeMap::new();
        for source in [
            &value["metadata"]["labels"],
            &value["entity"]["metadata"]["labels"],
            &check["metadata"]["labels"],
        ] {
            if let Some(map) = source.as_object() {
                for (key, label) in map {
                    if let Some(label) = label.as_str() {
                        labels.insert(key.clone(), label.to_owned());
                    }
                }
            }
        }
        let label_fields = labels
            .into_iter()
            .map(|(key, label)| (format!("event.labels.{key}"), label))
            .collect();
        let problem = if check_name == KEEPALIVE_CHECK {
            Problem::Keepalive
        } else if is_missed_round(check) {
            Problem::MissedRound
        } else {
            Problem::Check
        };
        let haystack = format!("{entity}\n{check_name}\n{output}").to_lowercase();
        Some(EventSummary {
            status,
            state: check["state"].as_str().unwrap_or_default().to_owned(),
            timestamp,
            executed,
            last_ok: check["last_ok"].as_i64().unwrap_or(0),
            occurrences,
            since,
            history: history.iter().map(|(status, _)| *status).collect(),
            output,
            entity_class: value["entity"]["entity_class"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            problem,
            round_robin: check["round_robin"].as_bool().unwrap_or(false),
            processed_by: check["processed_by"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            check_subscriptions: strings(&check["subscriptions"]),
            entity_subscriptions: strings(&value["entity"]["subscriptions"]),
            proxy: !check["proxy_entity_name"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            label_fields,
            haystack,
            entity,
            check: check_name,
        })
    }

    pub fn severity(&self) -> Severity {
        Severity::of(self.status)
    }

    pub fn is_flapping(&self) -> bool {
        self.state == "flapping"
    }

    /// Whether `silence` mutes this event at `now`, with Sensu's rules: the entity's own
    /// `entity:<name>` subscription always counts; otherwise a subscription the entity has
    /// and (unless the check ran for a proxy entity) the check has too.
    ///
    /// Runs for every (event, silence) pair on every page, so it does not allocate.
    pub fn silenced_by(&self, silence: &Silenced, now: i64) -> bool {
        let any = |pattern: &str| pattern.is_empty() || pattern == "*";
        if !silence.is_active(now) || !(any(&silence.check) || silence.check == self.check) {
            return false;
        }
        let subscription = silence.subscription.as_str();
        any(subscription)
            || subscription.strip_prefix("entity:") == Some(self.entity.as_str())
            || (self.entity_subscriptions.iter().any(|s| s == subscription)
                && (self.proxy || self.check_subscriptions.iter().any(|s| s == subscription)))
    }

    pub fn bucket(&self, silenced: bool) -> Bucket {
        match self.severity() {
            Severity::Ok => Bucket::Ok,
            _ if silenced => Bucket::Silenced,
            Severity::Critical => Bucket::Critical,
            Severity::Warning => Bucket::Warning,
            Severity::Unknown => Bucket::Unknown,
        }
    }
}

/// See [`MISSED_ROUND_ANNOTATION`].
fn is_missed_round(check: &Value) -> bool {
    check["metadata"]["annotations"][MISSED_ROUND_ANNOTATION] == "true"
}

/// The `executed` time of the first result of the current run of `occurrences` identical
/// statuses, or of the oldest result when the run goes back further than the history.
fn run_start(history: &[(u32, i64)], occurrences: i64) -> Option<i64> {
    if history.is_empty() {
        return None;
    }
    let run = usize::try_from(occurrences.max(1)).unwrap_or(usize::MAX);
    let first = history.len().saturating_sub(run);
    Some(history[first].1)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The part of an entity the dashboard lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntitySummary {
    pub name: String,
    pub entity_class: String,
    pub last_seen: i64,
    pub subscriptions: Vec<String>,
    pub hostname: String,
    pub platform: String,
    pub os: String,
    pub agent_version: String,
    #[serde(skip)]
    pub haystack: String,
}

impl EntitySummary {
    pub fn from_value(mut value: Value) -> Option<EntitySummary> {
        Kind::Entity.redact(&mut value);
        let name = value["metadata"]["name"].as_str()?.to_owned();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let system = &value["system"];
        let hostname = text(&system["hostname"]);
        let platform = text(&system["platform"]);
        let haystack = format!("{name}\n{hostname}\n{platform}").to_lowercase();
        Some(EntitySummary {
            entity_class: text(&value["entity_class"]),
            last_seen: value["last_seen"].as_i64().unwrap_or(0),
            subscriptions: strings(&value["subscriptions"]),
            hostname,
            platform,
            os: text(&system["os"]),
            agent_version: text(&value["sensu_agent_version"]),
            haystack,
            name,
        })
    }
}

/// One namespace's share of the index.
#[derive(Debug, Default)]
pub struct NamespaceIndex {
    /// Keyed by `<entity>/<check>` (the store's event name), so an entity's events are a range.
    pub events: BTreeMap<String, Arc<EventSummary>>,
    pub entities: BTreeMap<String, Arc<EntitySummary>>,
    pub silences: BTreeMap<String, Arc<Silenced>>,
    /// The store revision of the last change applied to this namespace (live updates compare
    /// it to what a page last saw).
    pub revision: i64,
}

/// Counts by state for the overview; see [`Bucket`] for what goes where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub critical: u64,
    pub warning: u64,
    pub unknown: u64,
    pub ok: u64,
    pub silenced: u64,
    /// Events whose state is `flapping` (also counted in their bucket).
    pub flapping: u64,
    pub total: u64,
    /// Unsilenced keepalive problems: agents that stopped reporting.
    pub keepalive_failures: u64,
    /// Unsilenced missed round-robin rounds.
    pub missed_rounds: u64,
}

impl Counts {
    fn add(&mut self, event: &EventSummary, bucket: Bucket) {
        self.total += 1;
        match bucket {
            Bucket::Critical => self.critical += 1,
            Bucket::Warning => self.warning += 1,
            Bucket::Unknown => self.unknown += 1,
            Bucket::Silenced => self.silenced += 1,
            Bucket::Ok => self.ok += 1,
        }
        if event.is_flapping() {
            self.flapping += 1;
        }
        let unsilenced_problem = !matches!(bucket, Bucket::Ok | Bucket::Silenced);
        if unsilenced_problem && event.problem == Problem::Keepalive {
            self.keepalive_failures += 1;
        }
        if unsilenced_problem && event.problem == Problem::MissedRound {
            self.missed_rounds += 1;
        }
    }
}

/// What the events page asks for. Empty fields select everything.
#[derive(Debug, Default)]
pub struct EventQuery {
    /// Any of these buckets (empty: all).
    pub buckets: Vec<Bucket>,
    /// Also select flapping events (a state, not a bucket).
    pub flapping: bool,
    pub entity: Option<String>,
    pub check: Option<String>,
    /// A subscription of the check or of the entity.
    pub subscription: Option<String>,
    pub labels: Option<Selector>,
    /// Lowercased; matched as a substring of entity, check or output.
    pub text: Option<String>,
    /// Only keepalives, only missed rounds, or only other checks.
    pub problem: Option<Problem>,
}

impl EventQuery {
    fn matches(&self, event: &EventSummary, bucket: Bucket) -> bool {
        let state_ok = (self.buckets.is_empty() && !self.flapping)
            || self.buckets.contains(&bucket)
            || (self.flapping && event.is_flapping());
        state_ok
            && self.problem.is_none_or(|p| p == event.problem)
            && self.entity.as_deref().is_none_or(|e| e == event.entity)
            && self.check.as_deref().is_none_or(|c| c == event.check)
            && self.subscription.as_deref().is_none_or(|s| {
                // Every entity subscribes to `entity:<name>`, whether or not the copy of the
                // entity inside the event lists it.
                s.strip_prefix("entity:") == Some(event.entity.as_str())
                    || event.check_subscriptions.iter().any(|x| x == s)
                    || event.entity_subscriptions.iter().any(|x| x == s)
            })
            && self
                .labels
                .as_ref()
                .is_none_or(|selector| selector.matches(&event.label_fields))
            && self
                .text
                .as_deref()
                .is_none_or(|text| event.haystack.contains(text))
    }
}

/// An event with what was decided about it at read time.
#[derive(Debug, Clone, Serialize)]
pub struct ListedEvent {
    #[serde(flatten)]
    pub event: Arc<EventSummary>,
    pub severity: Severity,
    pub bucket: Bucket,
    pub silenced: bool,
    /// Names of the silences that mute it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub silenced_by: Vec<String>,
}

/// A page of a sorted, filtered listing.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// How many items match the filter (all pages).
    pub total: usize,
    pub offset: usize,
    pub items: Vec<T>,
}

impl NamespaceIndex {
    fn silences_of(&self, event: &EventSummary, now: i64) -> Vec<String> {
        self.silences
            .iter()
            .filter(|(_, silence)| event.silenced_by(silence, now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The active silences that mute `event`.
    pub fn matching_silences(&self, event: &EventSummary, now: i64) -> Vec<Arc<Silenced>> {
        self.silences
            .values()
            .filter(|silence| event.silenced_by(silence, now))
            .cloned()
            .collect()
    }

    fn listed(&self, event: &Arc<EventSummary>, now: i64) -> ListedEvent {
        let silenced_by = self.silences_of(event, now);
        let silenced = !silenced_by.is_empty();
        ListedEvent {
            event: event.clone(),
            severity: event.severity(),
            bucket: event.bucket(silenced),
            silenced,
            silenced_by,
        }
    }

    pub fn counts(&self, now: i64) -> Counts {
        let mut counts = Counts::default();
        for event in self.events.values() {
            let silenced = self
                .silences
                .values()
                .any(|silence| event.silenced_by(silence, now));
            counts.add(event, event.bucket(silenced));
        }
        counts
    }

    /// Events matching `query`, worst first (see [`event_order`]), `limit` from `offset`.
    pub fn events(
        &self,
        query: &EventQuery,
        offset: usize,
        limit: usize,
        now: i64,
    ) -> Page<ListedEvent> {
        let candidates: Box<dyn Iterator<Item = &Arc<EventSummary>>> = match &query.entity {
            // An entity's events are one key range.
            Some(entity) => Box::new(
                self.events
                    .range(format!("{entity}/")..)
                    .take_while(move |(key, _)| {
                        key.strip_prefix(entity.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                    })
                    .map(|(_, e)| e),
            ),
            None => Box::new(self.events.values()),
        };
        let mut matching: Vec<ListedEvent> = candidates
            .filter_map(|event| {
                let listed = self.listed(event, now);
                query.matches(event, listed.bucket).then_some(listed)
            })
            .collect();
        page_of(&mut matching, offset, limit, event_order)
    }

    /// Entities whose name, hostname or platform contains `text`, of `class` and with
    /// `subscription` when given, by name.
    pub fn entities(
        &self,
        text: Option<&str>,
        class: Option<&str>,
        subscription: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Page<Arc<EntitySummary>> {
        let matches = |entity: &EntitySummary| {
            text.is_none_or(|t| entity.haystack.contains(t))
                && class.is_none_or(|c| entity.entity_class == c)
                && subscription.is_none_or(|s| entity.subscriptions.iter().any(|x| x == s))
        };
        let mut total = 0;
        let mut items = Vec::new();
        for entity in self.entities.values().filter(|e| matches(e)) {
            if total >= offset && items.len() < limit {
                items.push(entity.clone());
            }
            total += 1;
        }
        Page {
            total,
            offset,
            items,
        }
    }

    /// The worst bucket among an entity's events and how many it has.
    pub fn entity_health(&self, entity: &str, now: i64) -> (Option<Bucket>, usize) {
        let prefix = format!("{entity}/");
        let mut worst = None;
        let mut count = 0;
        for (_, event) in self
            .events
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
        {
            count += 1;
            let bucket = self.listed(event, now).bucket;
            worst = Some(worst.map_or(bucket, |w: Bucket| w.min(bucket)));
        }
        (worst, count)
    }
}

/// The order of the events page and of the overview's problems: bucket (critical, warning,
/// unknown, silenced, ok), then severity (within silenced), then keepalives and missed rounds
/// before other checks, then the newest change of state first, then by name. `since` does not
/// move while an event keeps its status, so rows stay put as results come in.
pub fn event_order(a: &ListedEvent, b: &ListedEvent) -> Ordering {
    let key = |e: &ListedEvent| {
        (
            e.bucket,
            e.severity.rank(),
            e.event.problem.rank(),
            Reverse(e.event.since),
        )
    };
    key(a)
        .cmp(&key(b))
        .then_with(|| a.event.entity.cmp(&b.event.entity))
        .then_with(|| a.event.check.cmp(&b.event.check))
}

/// Sorts only as much as the page needs: the first `offset + limit` items are selected in
/// linear time, then sorted.
fn page_of<T>(
    items: &mut Vec<T>,
    offset: usize,
    limit: usize,
    order: fn(&T, &T) -> Ordering,
) -> Page<T> {
    let total = items.len();
    let end = offset.saturating_add(limit).min(total);
    if end < total && end > 0 {
        items.select_nth_unstable_by(end - 1, order);
        items.truncate(end);
    }
    items.sort_unstable_by(order);
    let page: Vec<T> = items.drain(..).skip(offset).take(limit).collect();
    Page {
        total,
        offset,
        items: page,
    }
}

/// The index of every namespace, kept current by [`Index::follow`].
pub struct Index {
    /// Written only by the follower task; readers compute their answer under the read lock
    /// and never hold it across an await.
    namespaces: RwLock<HashMap<String, NamespaceIndex>>,
    /// The store revision the index reflects; live updates subscribe to it. 0 until loaded.
    applied: watch::Sender<i64>,
    ready: watch::Sender<bool>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            namespaces: RwLock::new(HashMap::new()),
            applied: watch::channel(0).0,
            ready: watch::channel(false).0,
        }
    }
}

/// How many items one store page or change-feed read brings in.
const PAGE: usize = 1000;

impl Index {
    /// Runs `read` on `namespace`'s index (an empty one if nothing is known about it).
    pub fn read<T>(&self, namespace: &str, read: impl FnOnce(&NamespaceIndex) -> T) -> T {
        let namespaces = self
            .namespaces
            .read()
            .expect("dashboard index lock poisoned");
        match namespaces.get(namespace) {
            Some(index) => read(index),
            None => read(&NamespaceIndex::default()),
        }
    }

    /// The store revision of the last change applied to `namespace`.
    pub fn namespace_revision(&self, namespace: &str) -> i64 {
        self.read(namespace, |index| index.revision)
    }

    /// A receiver that sees the applied revision move.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Waits (at most `timeout`) for the first load; false if it has not happened by then.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        let loaded = tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        loaded
    }

    /// Waits (at most `timeout`) until the index reflects store revision `revision`; false if
    /// it still lags behind.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let caught_up = tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        caught_up
    }

    /// Replaces the whole index with what the store holds now.
    async fn reload(&self, store: &dyn Store) -> kensa_store::Result<()> {
        // Read the revision first: replaying changes after it onto the listing is idempotent.
        let revision = store.revision().await?;
        let mut fresh: HashMap<String, NamespaceIndex> = HashMap::new();
        for kind in INDEXED_KINDS {
            let mut query = ListQuery {
                kind: kind.to_owned(),
                namespace: None,
                limit: PAGE,
                ..Default::default()
            };
            loop {
                let page = store.list(&query).await?;
                for item in page.items {
                    if let Some(update) = Update::of(kind, Some(item.value)) {
                        let index = fresh.entry(item.key.namespace).or_default();
                        update.apply(index, item.key.name);
                    }
                }
                match page.continue_token {
                    Some(token) => query.continue_token = Some(token),
                    None => break,
                }
            }
        }
        for index in fresh.values_mut() {
            index.revision = revision;
        }
        *self
            .namespaces
            .write()
            .expect("dashboard index lock poisoned") = fresh;
        self.applied.send_replace(revision);
        self.ready.send_replace(true);
        Ok(())
    }

    /// Loads the index, then follows the change feed until `shutdown`. Store errors are
    /// logged and retried every second.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            let loaded = tokio::select! {
                _ = shutdown.cancelled() => return,
                loaded = self.reload(store.as_ref()) => loaded,
            };
            match loaded {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(%err, "dashboard index could not load; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        self.follow_changes(store, shutdown).await;
    }

    /// Applies the change feed after the revision the index reflects, until `shutdown`. Only
    /// the indexed kinds are read (the store skips the rest).
    async fn follow_changes(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            let after = *self.applied.borrow();
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = store.changes_of_kinds(after, &INDEXED_KINDS, PAGE) => read,
            };
            match read {
                Ok(read) if read.pruned => {
                    // The feed was pruned past us: start over.
                    tracing::warn!(
                        after,
                        "dashboard index fell behind the change feed; reloading"
                    );
                    if let Err(err) = self.reload(store.as_ref()).await {
                        tracing::error!(%err, "dashboard index reload failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
                Ok(read) if read.through == after => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = store.wait_for_change(after) => {}
                    }
                }
                Ok(read) => {
                    let updates: Vec<_> = latest_per_key(read.changes)
                        .into_iter()
                        .filter_map(|change| {
                            let text = match change.op {
                                ChangeOp::Put => change.value,
                                ChangeOp::Delete => None,
                            };
                            let update = Update::of_text(&change.key.kind, text.as_deref())?;
                            Some((change.revision, change.key, update))
                        })
                        .collect();
                    {
                        let mut namespaces = self
                            .namespaces
                            .write()
                            .expect("dashboard index lock poisoned");
                        for (revision, key, update) in updates {
                            let index = namespaces.entry(key.namespace).or_default();
                            update.apply(index, key.name);
                            index.revision = revision;
                        }
                    }
                    self.applied.send_replace(read.through);
                }
                Err(err) => {
                    tracing::warn!(%err, "dashboard index could not read the change feed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// The last change of each key, in revision order. A page is applied under one lock, so the
/// earlier changes of a key could never be seen: summarizing only the last one gives the same
/// index (and the same namespace revisions, a namespace's last change being the last of its
/// key) while a follower behind a burst parses each hot event once per page, not once per
/// result.
fn latest_per_key(changes: Vec<RawChange>) -> Vec<RawChange> {
    let mut seen = HashSet::with_capacity(changes.len());
    let mut latest: Vec<RawChange> = changes
        .into_iter()
        .rev()
        .filter(|change| seen.insert(change.key.clone()))
        .collect();
    latest.reverse();
    latest
}

/// A stored value turned into what the index keeps (`None`: remove the entry). Built outside
/// the lock, so readers wait only for the map updates.
enum Update {
    Event(Option<EventSummary>),
    Entity(Option<EntitySummary>),
    Silence(Option<Silenced>),
}

impl Update {
    /// [`Update::of`] for a value as the store's JSON text. Events, written at event rate,
    /// are parsed pruned to what their summary reads.
    fn of_text(kind: &str, text: Option<&str>) -> Option<Update> {
        let value = text.and_then(|text| match kind {
            "events" => pruned::parse(text, &EVENT_SUMMARY_KEYS).ok(),
            _ => serde_json::from_str::<Value>(text).ok(),
        });
        Update::of(kind, value)
    }

    /// `None` for kinds the index does not follow. A value that does not parse removes the
    /// entry rather than keeping a stale one.
    fn of(kind: &str, value: Option<Value>) -> Option<Update> {
        Some(match kind {
            "events" => Update::Event(value.and_then(EventSummary::from_value)),
            "entities" => Update::Entity(value.and_then(EntitySummary::from_value)),
            "silenced" => {
                Update::Silence(value.and_then(|v| serde_json::from_value::<Silenced>(v).ok()))
            }
            _ => return None,
        })
    }

    fn apply(self, index: &mut NamespaceIndex, name: String) {
        fn put<T>(map: &mut BTreeMap<String, Arc<T>>, name: String, value: Option<T>) {
            match value {
                Some(value) => {
                    map.insert(name, Arc::new(value));
                }
                None => {
                    map.remove(&name);
                }
            }
        }
        match self {
            Update::Event(summary) => put(&mut index.events, name, summary),
            Update::Entity(summary) => put(&mut index.entities, name, summary),
            Update::Silence(silence) => put(&mut index.silences, name, silence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An event as the store holds it; `history` is `(status, executed)`, oldest first.
    fn stored_event(entity: &str, check: &str, history: &[(u32, i64)]) -> Value {
        let (status, executed) = *history.last().expect("at least one result");
        let occurrences = history
            .iter()
            .rev()
            .take_while(|(s, _)| *s == status)
            .count();
        json!({
            "timestamp": executed,
            "entity": {
                "entity_class": "agent",
                "subscriptions": ["linux", format!("entity:{entity}")],
                "metadata": {"name": entity, "namespace": "default", "labels": {"tier": "web"}},
            },
            "check": {
                "metadata": {"name": check, "namespace": "default"},
                "status": status,
                "executed": executed,
                "output": format!("{check} on {entity}: status {status}"),
                "subscriptions": ["linux"],
                "occurrences": occurrences,
                "state": if status == 0 { "passing" } else { "failing" },
                "history": history.iter().map(|(s, e)| json!({"status": s, "executed": e})).collect::<Vec<_>>(),
            },
            "metadata": {"namespace": "default"},
        })
    }

    fn summary(entity: &str, check: &str, history: &[(u32, i64)]) -> EventSummary {
        EventSummary::from_value(stored_event(entity, check, history)).unwrap()
    }

    fn silence(subscription: &str, check: &str, begin: i64, expire_at: i64) -> Silenced {
        let mut value: Silenced = serde_json::from_value(json!({
            "metadata": {"namespace": "default"},
            "subscription": subscription,
            "check": check,
            "begin": begin,
            "expire_at": expire_at,
        }))
        .unwrap();
        value.metadata.name = Silenced::derived_name(subscription, check).unwrap();
        value
    }

    fn index_of(events: Vec<EventSummary>, silences: Vec<Silenced>) -> NamespaceIndex {
        let mut index = NamespaceIndex::default();
        for event in events {
            index
                .events
                .insert(format!("{}/{}", event.entity, event.check), Arc::new(event));
        }
        for silence in silences {
            index
                .silences
                .insert(silence.metadata.name.clone(), Arc::new(silence));
        }
        index
    }

    /// Followed events are parsed pruned to what the summary reads; the summary must be the
    /// one of the whole document.
    #[test]
    fn pruned_summaries_equal_full_ones() {
        let mut rich = stored_event("web1", "disk", &[(0, 100), (2, 160), (2, 220)]);
        rich["id"] = json!("3b0f4a0e-7d5c-4d0a-9f43-2d0c3c8e9a11");
        rich["metadata"]["labels"] = json!({"event": "label", "tier": "event"});
        rich["entity"]["redact"] = json!(["secret"]);
        rich["entity"]["metadata"]["labels"]["secret"] = json!("hunter2");
        rich["entity"]["metadata"]["annotations"] = json!({"secret": "x"});
        rich["entity"]["system"] = json!({"hostname": "web1", "network": {"interfaces": []}});
        rich["entity"]["last_seen"] = json!(1700000000);
        rich["check"]["command"] = json!("check-disk --warn 80");
        rich["check"]["metadata"]["labels"] = json!({"tier": "db"});
        rich["check"]["metadata"]["annotations"] = json!({MISSED_ROUND_ANNOTATION: "true"});
        rich["check"]["last_ok"] = json!(100);
        rich["check"]["round_robin"] = json!(true);
        rich["check"]["processed_by"] = json!("agent-7");
        rich["check"]["proxy_entity_name"] = json!("router");
        rich["check"]["hooks"] = json!([{"name": "h", "output": "long"}]);
        rich["check"]["state"] = json!("flapping");
        let mut odd = stored_event("db1", "keepalive", &[(1, 5)]);
        odd["check"]["status"] = json!("not a number");
        odd["check"]["history"] = json!("not a list");
        odd["entity"]["subscriptions"] = json!([1, "linux", null]);
        odd["metadata"] = json!(["not", "an", "object"]);
        let mut no_entity_name = stored_event("x", "y", &[(0, 1)]);
        no_entity_name["entity"]["metadata"] = json!({"name": 5});
        for event in [rich, odd, no_entity_name, json!({"check": 1, "entity": []})] {
            let text = event.to_string();
            let full = Update::of("events", serde_json::from_str(&text).ok());
            let pruned = Update::of_text("events", Some(&text));
            match (full, pruned) {
                (Some(Update::Event(full)), Some(Update::Event(pruned))) => {
                    assert_eq!(pruned, full, "{text}")
                }
                _ => panic!("events are indexed"),
            }
        }
    }

    #[test]
    fn summaries_keep_what_the_pages_need() {
        let mut value = stored_event("web1", "disk", &[(0, 100), (2, 160), (2, 220)]);
        value["check"]["output"] = json!("é".repeat(OUTPUT_CHARS + 10));
        value["entity"]["redact"] = json!(["secret"]);
        value["entity"]["metadata"]["labels"]["secret"] = json!("hunter2");
        value["check"]["metadata"]["labels"] = json!({"tier": "db"});
        let event = EventSummary::from_value(value).unwrap();
        assert_eq!(event.severity(), Severity::Critical);
        // Critical since the first of the two critical results.
        assert_eq!(event.since, 160);
        assert_eq!(event.history, vec![0, 2, 2]);
        assert_eq!(event.output.chars().count(), OUTPUT_CHARS);
        // The check's labels win over the entity's; redacted values never reach the index.
        assert!(event
            .label_fields
            .contains(&("event.labels.tier".into(), "db".into())));
        assert!(event
            .label_fields
            .contains(&("event.labels.secret".into(), "REDACTED".into())));
        assert_eq!(event.problem, Problem::Check);

        let keepalive = summary("web1", KEEPALIVE_CHECK, &[(2, 100)]);
        assert_eq!(keepalive.problem, Problem::Keepalive);
        let mut missed = stored_event("web1", "rr", &[(1, 100)]);
        missed["check"]["metadata"]["annotations"] = json!({MISSED_ROUND_ANNOTATION: "true"});
        assert_eq!(
            EventSummary::from_value(missed).unwrap().problem,
            Problem::MissedRound
        );
        // A run longer than the history starts at its oldest entry.
        let mut long = stored_event("web1", "disk", &[(1, 100), (1, 160)]);
        long["check"]["occurrences"] = json!(40);
        assert_eq!(EventSummary::from_value(long).unwrap().since, 100);
        // Not an event: no summary.
        assert!(EventSummary::from_value(json!({"check": {}})).is_none());
    }

    #[test]
    fn silences_match_with_sensu_rules() {
        let now = 1_000;
        let event = summary("web1", "disk", &[(2, 900)]);
        let mut proxy = summary("web1", "disk", &[(2, 900)]);
        proxy.check_subscriptions = vec!["other".into()];
        proxy.proxy = true;
        let mut unshared = proxy.clone();
        unshared.proxy = false;
        let cases = [
            (silence("linux", "disk", 0, 0), &event, true),
            (silence("linux", "*", 0, 0), &event, true),
            (silence("*", "disk", 0, 0), &event, true),
            (silence("entity:web1", "", 0, 0), &event, true),
            (silence("entity:web2", "", 0, 0), &event, false),
            (silence("linux", "cpu", 0, 0), &event, false),
            (silence("windows", "", 0, 0), &event, false),
            // Not yet begun, already expired.
            (silence("linux", "", now + 10, 0), &event, false),
            (silence("linux", "", 0, now), &event, false),
            (silence("linux", "", 0, now + 1), &event, true),
            // A subscription only the entity has counts for proxy checks only.
            (silence("linux", "", 0, 0), &proxy, true),
            (silence("linux", "", 0, 0), &unshared, false),
            (silence("entity:web1", "", 0, 0), &unshared, true),
        ];
        for (i, (silence, event, expected)) in cases.iter().enumerate() {
            assert_eq!(
                event.silenced_by(silence, now),
                *expected,
                "case {i}: {}",
                silence.metadata.name
            );
        }
    }

    #[test]
    fn counts_put_every_event_in_one_bucket() {
        let mut flapping = summary("web3", "load", &[(1, 100), (0, 110), (1, 120)]);
        flapping.state = "flapping".into();
        let index = index_of(
            vec![
                summary("web1", "disk", &[(2, 100)]),
                summary("web1", KEEPALIVE_CHECK, &[(2, 100)]),
                summary("web2", "disk", &[(2, 100)]),
                summary("web2", "mem", &[(0, 100)]),
                summary("web2", "swap", &[(3, 100)]),
                flapping,
            ],
            vec![silence("entity:web2", "disk", 0, 0)],
        );
        assert_eq!(
            index.counts(1_000),
            Counts {
                critical: 2,
                warning: 1,
                unknown: 1,
                ok: 1,
                silenced: 1,
                flapping: 1,
                total: 6,
                keepalive_failures: 1,
                missed_rounds: 0,
            }
        );
    }

    fn keys(page: &Page<ListedEvent>) -> Vec<String> {
        page.items
            .iter()
            .map(|e| format!("{}/{}", e.event.entity, e.event.check))
            .collect()
    }

    #[test]
    fn events_sort_by_severity_then_newest_change_of_state() {
        let index = index_of(
            vec![
                summary("a", "ok", &[(0, 500)]),
                summary("a", "warn-old", &[(1, 100), (1, 400)]),
                summary("b", "warn-new", &[(0, 100), (1, 300)]),
                summary("b", "crit", &[(2, 50)]),
                summary("c", "crit", &[(2, 60)]),
                summary("c", KEEPALIVE_CHECK, &[(2, 10)]),
                summary("c", "unknown", &[(3, 10)]),
                summary("d", "silenced-crit", &[(2, 900)]),
                summary("d", "silenced-warn", &[(1, 900)]),
            ],
            vec![silence("entity:d", "", 0, 0)],
        );
        let all = index.events(&EventQuery::default(), 0, 100, 1_000);
        assert_eq!(
            keys(&all),
            vec![
                // Critical: the keepalive first, then the newest change of state.
                "c/keepalive",
                "c/crit",
                "b/crit",
                // Warning: warn-new went bad at 300, warn-old at 100.
                "b/warn-new",
                "a/warn-old",
                "c/unknown",
                // Silenced problems by severity, then OK.
                "d/silenced-crit",
                "d/silenced-warn",
                "a/ok",
            ]
        );
        assert!(all.items[6].silenced);
        assert_eq!(all.items[6].silenced_by, vec!["entity:d:*".to_owned()]);
        // Every page is the matching slice of the full order, whatever its bounds.
        for (offset, limit) in [(0, 1), (0, 3), (2, 4), (7, 5), (9, 5), (20, 5)] {
            let page = index.events(&EventQuery::default(), offset, limit, 1_000);
            assert_eq!(page.total, 9);
            let expected: Vec<String> = keys(&all).into_iter().skip(offset).take(limit).collect();
            assert_eq!(keys(&page), expected, "offset {offset} limit {limit}");
        }
    }

    #[test]
    fn filters_select_events() {
        let mut labelled = summary("web10", "http", &[(1, 100)]);
        labelled.label_fields = vec![("event.labels.region".into(), "eu".into())];
        labelled.check_subscriptions = vec!["http-probes".into()];
        let mut flapping = summary("db1", "load", &[(0, 100)]);
        flapping.state = "flapping".into();
        let index = index_of(
            vec![
                summary("web1", "disk", &[(2, 100)]),
                summary("web1", "mem", &[(0, 100)]),
                labelled,
                flapping,
            ],
            vec![silence("entity:web1", "mem", 0, 0)],
        );
        let query = |f: fn(&mut EventQuery)| {
            let mut query = EventQuery::default();
            f(&mut query);
            let mut found = keys(&index.events(&query, 0, 100, 1_000));
            found.sort();
            found
        };
        type Case = (fn(&mut EventQuery), Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (|q| q.buckets = vec![Bucket::Critical], vec!["web1/disk"]),
            (
                |q| q.buckets = vec![Bucket::Ok, Bucket::Warning],
                vec!["db1/load", "web1/mem", "web10/http"],
            ),
            (|q| q.flapping = true, vec!["db1/load"]),
            (
                |q| {
                    q.buckets = vec![Bucket::Critical];
                    q.flapping = true;
                },
                vec!["db1/load", "web1/disk"],
            ),
            // The entity filter is exact: web1 is not web10.
            (
                |q| q.entity = Some("web1".into()),
                vec!["web1/disk", "web1/mem"],
            ),
            (|q| q.check = Some("http".into()), vec!["web10/http"]),
            (
                |q| q.subscription = Some("http-probes".into()),
                vec!["web10/http"],
            ),
            // An entity subscription selects too.
            (
                |q| q.subscription = Some("entity:db1".into()),
                vec!["db1/load"],
            ),
            (
                |q| q.labels = Some(Selector::parse_labels("region == eu", "event").unwrap()),
                vec!["web10/http"],
            ),
            (|q| q.text = Some("status 2".into()), vec!["web1/disk"]),
            (
                |q| q.text = Some("web1".into()),
                vec!["web1/disk", "web1/mem", "web10/http"],
            ),
            (|q| q.text = Some("nothing".into()), vec![]),
            (
                |q| q.problem = Some(Problem::Check),
                vec!["db1/load", "web1/disk", "web1/mem", "web10/http"],
            ),
            (|q| q.problem = Some(Problem::Keepalive), vec![]),
        ];
        for (i, (f, expected)) in cases.into_iter().enumerate() {
            assert_eq!(query(f), expected, "case {i}");
        }
    }

    #[test]
    fn entities_page_by_name_with_their_worst_state() {
        let mut index = index_of(
            vec![
                summary("web1", "disk", &[(1, 100)]),
                summary("web1", "cpu", &[(2, 100)]),
                summary("web10", "cpu", &[(0, 100)]),
            ],
            vec![silence("entity:web1", "cpu", 0, 0)],
        );
        for (name, class) in [("web1", "agent"), ("web10", "agent"), ("router", "proxy")] {
            let entity = EntitySummary::from_value(json!({
                "metadata": {"name": name},
                "entity_class": class,
                "subscriptions": ["linux"],
                "system": {"hostname": format!("{name}.example.com"), "platform": "debian"},
            }))
            .unwrap();
            index.entities.insert(name.into(), Arc::new(entity));
        }
        let names = |page: Page<Arc<EntitySummary>>| -> (usize, Vec<String>) {
            (
                page.total,
                page.items.iter().map(|e| e.name.clone()).collect(),
            )
        };
        assert_eq!(
            names(index.entities(None, None, None, 0, 2)),
            (3, vec!["router".into(), "web1".into()])
        );
        assert_eq!(
            names(index.entities(None, None, None, 2, 2)),
            (3, vec!["web10".into()])
        );
        assert_eq!(
            names(index.entities(Some("web1"), Some("agent"), Some("linux"), 0, 10)),
            (2, vec!["web1".into(), "web10".into()])
        );
        assert_eq!(names(index.entities(None, Some("proxy"), None, 0, 10)).0, 1);
        // web1's critical cpu is silenced, so its worst is the warning.
        assert_eq!(
            index.entity_health("web1", 1_000),
            (Some(Bucket::Warning), 2)
        );
        assert_eq!(index.entity_health("web10", 1_000), (Some(Bucket::Ok), 1));
        assert_eq!(index.entity_health("router", 1_000), (None, 0));
    }

    #[tokio::test]
    async fn the_index_follows_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            kensa_store::sqlite::SqliteStore::open(&dir.path().join("store.db"))
                .await
                .unwrap(),
        );
        let key = |kind: &str, name: &str| kensa_store::Key::new(kind, "default", name);
        store
            .create(
                &key("events", "web1/disk"),
                &stored_event("web1", "disk", &[(2, 1)]),
            )
            .await
            .unwrap();
        let index = Arc::new(Index::default());
        let shutdown = CancellationToken::new();
        let follower = tokio::spawn(index.clone().follow(store.clone(), shutdown.clone()));
        assert!(index.wait_ready(Duration::from_secs(10)).await);
        let critical = |index: &Index| index.read("default", |i| i.counts(0).critical);
        assert_eq!(critical(&index), 1);

        // Later writes and deletes arrive through the change feed.
        let mut applied = index.subscribe();
        let revision = store
            .create(
                &key("events", "web2/disk"),
                &stored_event("web2", "disk", &[(2, 1)]),
            )
            .await
            .unwrap();
        applied.wait_for(|r| *r >= revision).await.unwrap();
        assert_eq!(critical(&index), 2);
        assert_eq!(index.namespace_revision("default"), revision);
        store
            .delete(&key("events", "web1/disk"), kensa_store::Precondition::None)
            .await
            .unwrap();
        let revision = store.revision().await.unwrap();
        applied.wait_for(|r| *r >= revision).await.unwrap();
        assert_eq!(critical(&index), 1);

        // Writes of kinds the index does not follow move it on without touching namespaces;
        // several writes of one event in one batch leave its last state.
        let event_revision = index.namespace_revision("default");
        let check = store
            .create(&key("checks", "disk"), &json!({"command": "true"}))
            .await
            .unwrap();
        applied.wait_for(|r| *r >= check).await.unwrap();
        assert_eq!(index.namespace_revision("default"), event_revision);
        store
            .put_all(&[
                (
                    key("events", "web5/disk"),
                    stored_event("web5", "disk", &[(2, 1)]),
                ),
                (key("checks", "disk"), json!({"command": "false"})),
                (
                    key("events", "web5/disk"),
                    stored_event("web5", "disk", &[(0, 2)]),
                ),
            ])
            .await
            .unwrap();
        let revision = store.revision().await.unwrap();
        applied.wait_for(|r| *r >= revision).await.unwrap();
        assert_eq!(critical(&index), 1);
        assert_eq!(index.read("default", |i| i.counts(0).ok), 1);
        assert_eq!(index.namespace_revision("default"), revision);

        // A gap in the feed (pruned past the follower) means a full reload.
        shutdown.cancel();
        follower.await.unwrap();
        store
            .create(
                &key("events", "web3/disk"),
                &stored_event("web3", "disk", &[(2, 1)]),
            )
            .await
            .unwrap();
        store
            .create(
                &key("events", "web4/disk"),
                &stored_event("web4", "disk", &[(2, 1)]),
            )
            .await
            .unwrap();
        let latest = store.revision().await.unwrap();
        store.prune_changes(latest).await.unwrap();
        let shutdown = CancellationToken::new();
        // Pretend the follower had stopped before the two writes.
        index.applied.send_replace(latest - 2);
        let follower = tokio::spawn(
            index
                .clone()
                .follow_changes(store.clone(), shutdown.clone()),
        );
        index
            .applied
            .subscribe()
            .wait_for(|r| *r >= latest)
            .await
            .unwrap();
        assert_eq!(critical(&index), 3);
        shutdown.cancel();
        follower.await.unwrap();
    }

    #[test]
    fn latest_per_key_keeps_each_keys_last_change_in_order() {
        let change = |revision: i64, name: &str, op: ChangeOp| RawChange {
            revision,
            op,
            key: kensa_store::Key::new("events", "default", name),
            value: (op == ChangeOp::Put).then(|| revision.to_string()),
        };
        let changes = vec![
            change(1, "a", ChangeOp::Put),
            change(2, "b", ChangeOp::Put),
            change(3, "a", ChangeOp::Put),
            change(4, "c", ChangeOp::Put),
            change(5, "b", ChangeOp::Delete),
            change(6, "c", ChangeOp::Put),
        ];
        let latest: Vec<(i64, String)> = latest_per_key(changes)
            .into_iter()
            .map(|change| (change.revision, change.key.name))
            .collect();
        assert_eq!(
            latest,
            [
                (3, "a".to_owned()),
                (5, "b".to_owned()),
                (6, "c".to_owned())
            ]
        );
    }
}
