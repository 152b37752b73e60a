//! The one conformance suite every [`Store`] implementation must pass: each case is an async
//! function that takes a fresh, empty store and checks one behaviour callers rely on (the
//! invariants in the crate docs). [`store_conformance_tests!`](crate::store_conformance_tests)
//! turns the cases into one `#[tokio::test]` each for a backend; [`run_all`] runs them in
//! sequence for callers that prefer a single test.
//!
//! Fixtures should set a long change-poll interval ([`LONG_POLL_INTERVAL`]), so the cases about
//! waking followers prove that a write wakes them rather than the one-second poll.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use crate::{ChangeOp, Key, ListQuery, Precondition, Store, StoreError, Stored, DEFAULT_PAGE_SIZE};

/// A change-poll interval longer than any wait in the suite.
pub const LONG_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// How long a woken follower may take; far above a real wake-up, far below the poll interval.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A bound on the concurrency cases, so a lost wake-up fails the test instead of hanging it.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// One conformance case.
pub type Case = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// A fresh store plus whatever must happen after the case (removing a temp dir, dropping a
/// database). If the case panics the teardown future is dropped unpolled, so guards inside it
/// must clean up in `Drop` too.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    teardown: BoxFuture<'static, ()>,
}

impl Fixture {
    pub fn new(
        store: Arc<dyn Store>,
        teardown: impl Future<Output = ()> + Send + 'static,
    ) -> Fixture {
        Fixture {
            store,
            teardown: Box::pin(teardown),
        }
    }
}

/// Every case, by name. [`store_conformance_tests!`](crate::store_conformance_tests) lists the
/// same names and checks that the lists agree.
pub const CASES: &[(&str, Case)] = &[
    ("create_get_put_delete", |store| {
        Box::pin(create_get_put_delete(store))
    }),
    ("create_refuses_an_existing_key", |store| {
        Box::pin(create_refuses_an_existing_key(store))
    }),
    ("put_honours_preconditions", |store| {
        Box::pin(put_honours_preconditions(store))
    }),
    ("delete_honours_preconditions", |store| {
        Box::pin(delete_honours_preconditions(store))
    }),
    ("revisions_increase_densely", |store| {
        Box::pin(revisions_increase_densely(store))
    }),
    ("values_keep_their_text", |store| {
        Box::pin(values_keep_their_text(store))
    }),
    ("list_pages_in_bytewise_order", |store| {
        Box::pin(list_pages_in_bytewise_order(store))
    }),
    ("list_default_page_size", |store| {
        Box::pin(list_default_page_size(store))
    }),
    ("list_filters_by_name_prefix", |store| {
        Box::pin(list_filters_by_name_prefix(store))
    }),
    ("list_one_namespace_or_all", |store| {
        Box::pin(list_one_namespace_or_all(store))
    }),
    ("list_rejects_invalid_tokens", |store| {
        Box::pin(list_rejects_invalid_tokens(store))
    }),
    ("delete_prefix_removes_only_matches", |store| {
        Box::pin(delete_prefix_removes_only_matches(store))
    }),
    ("delete_all_removes_the_existing_keys_at_once", |store| {
        Box::pin(delete_all_removes_the_existing_keys_at_once(store))
    }),
    (
        "put_each_skips_only_the_writes_whose_precondition_fails",
        |store| {
            Box::pin(put_each_skips_only_the_writes_whose_precondition_fails(
                store,
            ))
        },
    ),
    ("count_in_namespace_counts_every_kind", |store| {
        Box::pin(count_in_namespace_counts_every_kind(store))
    }),
    ("put_all_is_atomic_and_consecutive", |store| {
        Box::pin(put_all_is_atomic_and_consecutive(store))
    }),
    ("put_all_keeps_the_last_write_of_a_key", |store| {
        Box::pin(put_all_keeps_the_last_write_of_a_key(store))
    }),
    ("change_feed_records_every_write", |store| {
        Box::pin(change_feed_records_every_write(store))
    }),
    (
        "change_feed_is_complete_under_concurrent_writers",
        |store| Box::pin(change_feed_is_complete_under_concurrent_writers(store)),
    ),
    ("change_feed_by_kinds", |store| {
        Box::pin(change_feed_by_kinds(store))
    }),
    (
        "change_feed_by_kinds_is_complete_under_concurrent_writers",
        |store| {
            Box::pin(change_feed_by_kinds_is_complete_under_concurrent_writers(
                store,
            ))
        },
    ),
    ("change_feed_by_kinds_reports_pruning", |store| {
        Box::pin(change_feed_by_kinds_reports_pruning(store))
    }),
    ("prune_changes_forgets_old_entries_only", |store| {
        Box::pin(prune_changes_forgets_old_entries_only(store))
    }),
    ("wait_for_change_wakes_on_a_write", |store| {
        Box::pin(wait_for_change_wakes_on_a_write(store))
    }),
    ("conditional_puts_never_lose_an_update", |store| {
        Box::pin(conditional_puts_never_lose_an_update(store))
    }),
    ("concurrent_creates_have_one_winner", |store| {
        Box::pin(concurrent_creates_have_one_winner(store))
    }),
];

/// Runs the case called `name` on `fixture` (`None`: the backend is not available here, e.g.
/// no PostgreSQL server configured; the case is skipped), then the fixture's teardown.
pub async fn run_case(name: &str, fixture: Option<Fixture>) {
    let Some(Fixture { store, teardown }) = fixture else {
        return;
    };
    let (_, case) = CASES
        .iter()
        .find(|(case_name, _)| *case_name == name)
        .unwrap_or_else(|| panic!("no store conformance case named {name}"));
    tokio::time::timeout(CASE_TIMEOUT, case(store))
        .await
        .unwrap_or_else(|_| panic!("{name} timed out"));
    teardown.await;
}

/// Runs every case, each on a fresh fixture from `make_fixture`; stops quietly if it returns
/// `None`.
pub async fn run_all<F, Fut>(make_fixture: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<Fixture>>,
{
    for (name, _) in CASES {
        let Some(fixture) = make_fixture().await else {
            return;
        };
        eprintln!("store conformance: {name}");
        run_case(name, Some(fixture)).await;
    }
}

/// Instantiates the suite as one `#[tokio::test]` per case in the calling module. `$fixture`
/// names an `async fn() -> Option<Fixture>`. The calling crate needs tokio's `macros` and
/// `rt-multi-thread` features.
#[macro_export]
macro_rules! store_conformance_tests {
    (@cases $fixture:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::run_case(stringify!($case), $fixture().await).await;
            }
        )+

        #[test]
        fn every_conformance_case_is_instantiated() {
            let instantiated = [$(stringify!($case)),+];
            let defined: Vec<&str> = $crate::conformance::CASES.iter().map(|(name, _)| *name).collect();
            assert_eq!(instantiated.to_vec(), defined);
        }
    };
    ($fixture:path) => {
        $crate::store_conformance_tests!(@cases $fixture;
            create_get_put_delete,
            create_refuses_an_existing_key,
            put_honours_preconditions,
            delete_honours_preconditions,
            revisions_increase_densely,
            values_keep_their_text,
            list_pages_in_bytewise_order,
            list_default_page_size,
            list_filters_by_name_prefix,
            list_one_namespace_or_all,
            list_rejects_invalid_tokens,
            delete_prefix_removes_only_matches,
            delete_all_removes_the_existing_keys_at_once,
            put_each_skips_only_the_writes_whose_precondition_fails,
            count_in_namespace_counts_every_kind,
            put_all_is_atomic_and_consecutive,
            put_all_keeps_the_last_write_of_a_key,
            change_feed_records_every_write,
            change_feed_is_complete_under_concurrent_writers,
            change_feed_by_kinds,
            change_feed_by_kinds_is_complete_under_concurrent_writers,
            change_feed_by_kinds_reports_pruning,
            prune_changes_forgets_old_entries_only,
            wait_for_change_wakes_on_a_write,
            conditional_puts_never_lose_an_update,
            concurrent_creates_have_one_winner,
        );
    };
}

fn key(kind: &str, namespace: &str, name: &str) -> Key {
    Key::new(kind, namespace, name)
}

/// Every item of a listing, following continue tokens with pages of `limit`; checks that
/// every page but the last is full and that the last carries no token.
async fn list_all(store: &dyn Store, mut query: ListQuery) -> Vec<Stored> {
    let page_size = if query.limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        query.limit
    };
    let mut items = Vec::new();
    loop {
        let page = store.list(&query).await.unwrap();
        assert!(
            page.items.len() <= page_size,
            "a page holds at most the limit"
        );
        items.extend(page.items.iter().cloned());
        match page.continue_token {
            Some(token) => {
                assert_eq!(
                    page.items.len(),
                    page_size,
                    "only the last page may be short"
                );
                query.continue_token = Some(token);
            }
            None => return items,
        }
    }
}

fn positions(items: &[Stored]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|item| (item.key.namespace.clone(), item.key.name.clone()))
        .collect()
}

pub async fn create_get_put_delete(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let web = key("checks", "default", "web");
    assert_eq!(store.get(&web).await.unwrap(), None);

    let first = json!({"command": "check-http", "interval": 60, "metadata": {"name": "web", "namespace": "default"}});
    let created = store.create(&web, &first).await.unwrap();
    assert_eq!(
        store.get(&web).await.unwrap(),
        Some(Stored {
            key: web.clone(),
            value: first,
            revision: created
        })
    );

    let second = json!({"command": "check-http -v", "interval": 30});
    let replaced = store.put(&web, &second, Precondition::None).await.unwrap();
    assert!(replaced > created);
    assert_eq!(
        store.get(&web).await.unwrap(),
        Some(Stored {
            key: web.clone(),
            value: second,
            revision: replaced
        })
    );

    // An unconditional put creates.
    let db = key("checks", "default", "db");
    let put_created = store
        .put(&db, &json!({}), Precondition::None)
        .await
        .unwrap();
    assert_eq!(
        store.get(&db).await.unwrap().map(|stored| stored.revision),
        Some(put_created)
    );

    store.delete(&web, Precondition::None).await.unwrap();
    assert_eq!(store.get(&web).await.unwrap(), None);
    assert!(matches!(
        store.delete(&web, Precondition::None).await,
        Err(StoreError::NotFound(_))
    ));
    // The neighbour is untouched.
    assert!(store.get(&db).await.unwrap().is_some());
}

pub async fn create_refuses_an_existing_key(store: Arc<dyn Store>) {
    let web = key("checks", "default", "web");
    let revision = store.create(&web, &json!({"version": 1})).await.unwrap();
    let err = store
        .create(&web, &json!({"version": 2}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    let stored = store.get(&web).await.unwrap().unwrap();
    assert_eq!(
        (stored.value, stored.revision),
        (json!({"version": 1}), revision)
    );
    // The same name in another namespace or kind is another resource.
    store
        .create(&key("checks", "dev", "web"), &json!({}))
        .await
        .unwrap();
    store
        .create(&key("handlers", "default", "web"), &json!({}))
        .await
        .unwrap();
}

pub async fn put_honours_preconditions(store: Arc<dyn Store>) {
    let web = key("checks", "default", "web");
    for precondition in [Precondition::MustExist, Precondition::Revision(1)] {
        let err = store.put(&web, &json!({}), precondition).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "{precondition:?} on an absent key: {err:?}"
        );
    }
    assert_eq!(
        store.get(&web).await.unwrap(),
        None,
        "a refused put creates nothing"
    );

    let created = store.create(&web, &json!({"v": 0})).await.unwrap();
    for stale in [created - 1, created + 1, 0] {
        let err = store
            .put(&web, &json!({"v": "lost"}), Precondition::Revision(stale))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(_)),
            "Revision({stale}) when at {created}: {err:?}"
        );
    }
    let updated = store
        .put(&web, &json!({"v": 1}), Precondition::Revision(created))
        .await
        .unwrap();
    // The revision just used is now stale too.
    let err = store
        .put(&web, &json!({"v": "lost"}), Precondition::Revision(created))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let must_exist = store
        .put(&web, &json!({"v": 2}), Precondition::MustExist)
        .await
        .unwrap();
    assert!(must_exist > updated);
    let stored = store.get(&web).await.unwrap().unwrap();
    assert_eq!(
        (stored.value, stored.revision),
        (json!({"v": 2}), must_exist)
    );
}

pub async fn delete_honours_preconditions(store: Arc<dyn Store>) {
    let web = key("checks", "default", "web");
    for precondition in [
        Precondition::None,
        Precondition::MustExist,
        Precondition::Revision(1),
    ] {
        let err = store.delete(&web, precondition).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "{precondition:?} on an absent key: {err:?}"
        );
    }
    let created = store.create(&web, &json!({})).await.unwrap();
    let err = store
        .delete(&web, Precondition::Revision(created + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        store.get(&web).await.unwrap().is_some(),
        "a refused delete deletes nothing"
    );
    store
        .delete(&web, Precondition::Revision(created))
        .await
        .unwrap();
    assert_eq!(store.get(&web).await.unwrap(), None);
}

/// Each successful write takes the next revision; refused writes take none, so the feed has no
/// gaps (followers rely on this to detect pruning).
pub async fn revisions_increase_densely(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let web = key("checks", "default", "web");
    let absent = key("checks", "default", "absent");
    let mut revisions = vec![store.create(&web, &json!({})).await.unwrap()];
    assert!(store.create(&web, &json!({})).await.is_err());
    revisions.push(
        store
            .put(&web, &json!({"a": 1}), Precondition::None)
            .await
            .unwrap(),
    );
    assert!(store
        .put(&web, &json!({}), Precondition::Revision(start))
        .await
        .is_err());
    assert!(store
        .put(&absent, &json!({}), Precondition::MustExist)
        .await
        .is_err());
    revisions.push(
        store
            .create(&key("handlers", "", "slack"), &json!({}))
            .await
            .unwrap(),
    );
    assert!(store.delete(&absent, Precondition::None).await.is_err());
    store.delete(&web, Precondition::None).await.unwrap();
    let expected = start + 4;
    assert_eq!(
        revisions,
        [start + 1, start + 2, start + 3],
        "each write takes the next revision"
    );
    assert_eq!(store.revision().await.unwrap(), expected);
    let feed: Vec<i64> = store
        .changes_since(start, 0)
        .await
        .unwrap()
        .iter()
        .map(|change| change.revision)
        .collect();
    assert_eq!(feed, (start + 1..=expected).collect::<Vec<_>>());
}

/// Values come back with the fields in the order they were written (the API returns Sensu's
/// field order), numbers intact, through get, list and the change feed.
pub async fn values_keep_their_text(store: Arc<dyn Store>) {
    let value = json!({
        "type": "CheckConfig",
        "api_version": "core/v2",
        "metadata": {"name": "web", "namespace": "default", "labels": {"zone": "b", "app": "a"}},
        "spec": {"zeta": 1, "alpha": [3, 1, 2], "big": u64::MAX, "negative": -7, "ratio": 0.1, "text": "é ✓ \"q\""}
    });
    let text = value.to_string();
    let web = key("checks", "default", "web");
    let revision = store.create(&web, &value).await.unwrap();
    assert_eq!(
        store.get(&web).await.unwrap().unwrap().value.to_string(),
        text
    );
    let listed = store
        .list(&ListQuery {
            kind: "checks".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items[0].value.to_string(), text);
    let changes = store.changes_since(revision - 1, 1).await.unwrap();
    assert_eq!(changes[0].value.as_ref().map(Value::to_string), Some(text));
}

/// Pagination visits every item once, in `(namespace, name)` order by bytes — the same on
/// every backend, whatever the database's locale — and whatever the page size.
pub async fn list_pages_in_bytewise_order(store: Arc<dyn Store>) {
    let namespaces = ["default", "Default", "dev", "a-b", "a"];
    let names = [
        "web", "Web", "web-1", "web/1", "web_1", "wéb", "web1", "z", "A", "_x", "~", "web 2",
    ];
    let mut items = Vec::new();
    for namespace in namespaces {
        for name in names {
            items.push((key("checks", namespace, name), json!({"name": name})));
        }
        // Another kind must never show up in a listing of checks.
        items.push((key("handlers", namespace, "web"), json!({})));
    }
    store.put_all(&items).await.unwrap();
    let mut expected: Vec<(String, String)> = namespaces
        .iter()
        .flat_map(|namespace| {
            names
                .iter()
                .map(move |name| (namespace.to_string(), name.to_string()))
        })
        .collect();
    expected.sort();
    for limit in [1, 4, 7, expected.len(), expected.len() + 1, 1000] {
        let listed = list_all(
            store.as_ref(),
            ListQuery {
                kind: "checks".into(),
                limit,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(positions(&listed), expected, "limit {limit}");
        assert!(listed
            .iter()
            .all(|item| item.value == json!({"name": item.key.name})));
    }
}

/// `limit: 0` pages by [`DEFAULT_PAGE_SIZE`].
pub async fn list_default_page_size(store: Arc<dyn Store>) {
    let total = DEFAULT_PAGE_SIZE + 7;
    let items: Vec<(Key, Value)> = (0..total)
        .map(|index| {
            (
                key("events", "default", &format!("entity/{index:05}")),
                json!({"n": index}),
            )
        })
        .collect();
    store.put_all(&items).await.unwrap();
    let query = ListQuery {
        kind: "events".into(),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let first = store.list(&query).await.unwrap();
    assert_eq!(first.items.len(), DEFAULT_PAGE_SIZE);
    let second = store
        .list(&ListQuery {
            continue_token: first.continue_token.clone(),
            ..query
        })
        .await
        .unwrap();
    assert!(first.continue_token.is_some());
    assert_eq!(second.items.len(), 7);
    assert_eq!(second.continue_token, None);
    assert_eq!(
        second.items.last().unwrap().key.name,
        format!("entity/{:05}", total - 1)
    );
}

/// A prefix selects exactly the names that start with it, across pages.
pub async fn list_filters_by_name_prefix(store: Arc<dyn Store>) {
    let names = [
        "web",
        "web/a",
        "web/b",
        "web/c/d",
        "web0",
        "webx",
        "we",
        "x\u{10FFFF}",
        "x\u{10FFFF}y",
        "x\u{10FFFF}\u{10FFFF}z",
        "y",
    ];
    let mut items = Vec::new();
    for namespace in ["default", "other"] {
        for name in names {
            items.push((key("events", namespace, name), json!({})));
        }
    }
    items.push((key("checks", "default", "web/a"), json!({})));
    store.put_all(&items).await.unwrap();

    let cases: &[(Option<&str>, &str)] = &[
        (Some("default"), "web/"),
        (Some("default"), "web"),
        (Some("default"), "x\u{10FFFF}"),
        (Some("default"), "x\u{10FFFF}\u{10FFFF}"),
        (Some("default"), ""),
        (Some("default"), "nothing"),
        (None, "web/"),
        (Some("other"), "w"),
    ];
    for (namespace, prefix) in cases {
        let mut expected: Vec<(String, String)> = ["default", "other"]
            .iter()
            .filter(|candidate| namespace.is_none_or(|namespace| namespace == **candidate))
            .flat_map(|candidate| {
                names
                    .iter()
                    .filter(|name| name.starts_with(prefix))
                    .map(move |name| (candidate.to_string(), name.to_string()))
            })
            .collect();
        expected.sort();
        for limit in [1, 100] {
            let query = ListQuery {
                kind: "events".into(),
                namespace: namespace.map(str::to_owned),
                name_prefix: Some((*prefix).to_owned()),
                limit,
                continue_token: None,
            };
            assert_eq!(
                positions(&list_all(store.as_ref(), query).await),
                expected,
                "{namespace:?} {prefix:?} limit {limit}"
            );
        }
    }
}

pub async fn list_one_namespace_or_all(store: Arc<dyn Store>) {
    store
        .put_all(&[
            (key("checks", "default", "web"), json!({})),
            (key("checks", "dev", "db"), json!({})),
            (key("checks", "dev", "web"), json!({})),
            (key("namespaces", "", "default"), json!({})),
            (key("namespaces", "", "dev"), json!({})),
        ])
        .await
        .unwrap();
    type ListCase<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);
    let cases: &[ListCase] = &[
        (
            "checks",
            None,
            &[("default", "web"), ("dev", "db"), ("dev", "web")],
        ),
        ("checks", Some("dev"), &[("dev", "db"), ("dev", "web")]),
        ("checks", Some("prod"), &[]),
        ("checks", Some(""), &[]),
        ("namespaces", Some(""), &[("", "default"), ("", "dev")]),
        ("namespaces", None, &[("", "default"), ("", "dev")]),
    ];
    for &(kind, namespace, expected) in cases {
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(namespace, name)| (namespace.to_string(), name.to_string()))
            .collect();
        let query = ListQuery {
            kind: kind.into(),
            namespace: namespace.map(str::to_owned),
            limit: 2,
            ..Default::default()
        };
        assert_eq!(
            positions(&list_all(store.as_ref(), query).await),
            expected,
            "{kind} in {namespace:?}"
        );
    }
}

pub async fn list_rejects_invalid_tokens(store: Arc<dyn Store>) {
    store
        .put_all(&[
            (key("checks", "default", "a"), json!({})),
            (key("checks", "default", "b"), json!({})),
        ])
        .await
        .unwrap();
    let query = ListQuery {
        kind: "checks".into(),
        limit: 1,
        ..Default::default()
    };
    // Not base64url; base64url of something else ("{}", "[\"a\"]", "hello").
    for token in ["not a token!", "e30", "WyJhIl0", "aGVsbG8", "===="] {
        let result = store
            .list(&ListQuery {
                continue_token: Some(token.to_owned()),
                ..query.clone()
            })
            .await;
        assert!(
            matches!(result, Err(StoreError::InvalidToken)),
            "{token:?}: {result:?}"
        );
    }
    let first = store.list(&query).await.unwrap();
    let second = store
        .list(&ListQuery {
            continue_token: first.continue_token,
            ..query
        })
        .await
        .unwrap();
    assert_eq!(
        positions(&second.items),
        [("default".to_owned(), "b".to_owned())]
    );
}

/// `delete_prefix` removes one kind's matching names in one namespace, logging one change per
/// deleted resource with consecutive revisions.
pub async fn delete_prefix_removes_only_matches(store: Arc<dyn Store>) {
    let doomed = [
        key("events", "default", "entity1/check1"),
        key("events", "default", "entity1/check2"),
    ];
    let survivors = [
        key("events", "default", "entity10/check1"),
        key("events", "default", "entity1"),
        key("events", "default", "entity2/check1"),
        key("events", "dev", "entity1/check1"),
        key("silenced", "default", "entity1/check1"),
    ];
    let items: Vec<(Key, Value)> = doomed
        .iter()
        .chain(&survivors)
        .map(|key| (key.clone(), json!({})))
        .collect();
    store.put_all(&items).await.unwrap();
    let before = store.revision().await.unwrap();

    assert_eq!(
        store
            .delete_prefix("events", "default", "entity1/")
            .await
            .unwrap(),
        2
    );
    for key in &doomed {
        assert_eq!(store.get(key).await.unwrap(), None, "{key}");
    }
    for key in &survivors {
        assert!(store.get(key).await.unwrap().is_some(), "{key}");
    }
    let changes = store.changes_since(before, 0).await.unwrap();
    let logged: Vec<(i64, ChangeOp, Key, Option<Value>)> = changes
        .into_iter()
        .map(|change| (change.revision, change.op, change.key, change.value))
        .collect();
    assert_eq!(
        logged,
        [
            (before + 1, ChangeOp::Delete, doomed[0].clone(), None),
            (before + 2, ChangeOp::Delete, doomed[1].clone(), None),
        ]
    );
    assert_eq!(store.revision().await.unwrap(), before + 2);

    // Nothing matched: nothing deleted, no revision used.
    assert_eq!(
        store
            .delete_prefix("events", "default", "entity1/")
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.revision().await.unwrap(), before + 2);
    // The empty prefix means every name of the kind in the namespace.
    assert_eq!(
        store.delete_prefix("events", "default", "").await.unwrap(),
        3
    );
    assert!(store
        .get(&key("events", "dev", "entity1/check1"))
        .await
        .unwrap()
        .is_some());
}

pub async fn delete_all_removes_the_existing_keys_at_once(store: Arc<dyn Store>) {
    // More keys than one multi-row statement takes, to cross a chunk boundary.
    let doomed: Vec<Key> = (0..70)
        .map(|i| key("kensa.queue", "", &format!("m-{i:03}")))
        .collect();
    let survivor = key("kensa.queue", "", "m-keep");
    let mut items: Vec<(Key, Value)> = doomed.iter().map(|k| (k.clone(), json!({}))).collect();
    items.push((survivor.clone(), json!({"keep": true})));
    store.put_all(&items).await.unwrap();
    let before = store.revision().await.unwrap();

    // Missing keys are skipped, a key listed twice is deleted once, order does not matter.
    let mut asked: Vec<Key> = doomed.iter().rev().cloned().collect();
    asked.push(doomed[0].clone());
    asked.push(key("kensa.queue", "", "never-written"));
    assert_eq!(store.delete_all(&asked).await.unwrap(), 70);
    for key in &doomed {
        assert_eq!(store.get(key).await.unwrap(), None, "{key}");
    }
    assert!(store.get(&survivor).await.unwrap().is_some());
    // One revision per deletion, densely, each in the change feed.
    assert_eq!(store.revision().await.unwrap(), before + 70);
    let changes = store.changes_since(before, 0).await.unwrap();
    assert_eq!(changes.len(), 70);
    let mut deleted: Vec<Key> = Vec::new();
    for (offset, change) in changes.into_iter().enumerate() {
        assert_eq!(change.revision, before + 1 + offset as i64);
        assert_eq!(change.op, ChangeOp::Delete);
        assert_eq!(change.value, None);
        deleted.push(change.key);
    }
    deleted.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(deleted, doomed);

    // Nothing left to delete: no revision used.
    assert_eq!(store.delete_all(&doomed).await.unwrap(), 0);
    assert_eq!(store.delete_all(&[]).await.unwrap(), 0);
    assert_eq!(store.revision().await.unwrap(), before + 70);
}

pub async fn put_each_skips_only_the_writes_whose_precondition_fails(store: Arc<dyn Store>) {
    let slot = |i: usize| key("kensa.rounds", "default", &format!("slot-{i}"));
    let first = store
        .create(&slot(0), &json!({"round": "r0"}))
        .await
        .unwrap();
    let second = store
        .create(&slot(1), &json!({"round": "r0"}))
        .await
        .unwrap();
    let before = store.revision().await.unwrap();

    let outcomes = store
        .put_each(&[
            // Matches: written.
            (
                slot(0),
                json!({"round": "r1"}),
                Precondition::Revision(first),
            ),
            // Stale revision: skipped.
            (
                slot(1),
                json!({"round": "r1"}),
                Precondition::Revision(second - 1),
            ),
            // Absent but must exist: skipped.
            (slot(2), json!({"round": "r1"}), Precondition::MustExist),
            // Unconditional: written.
            (slot(3), json!({"round": "r1"}), Precondition::None),
            // The first item changed slot 0: the same compare-and-set again conflicts.
            (
                slot(0),
                json!({"round": "r2"}),
                Precondition::Revision(first),
            ),
            // Creates: slot 1 exists, slot 4 does not.
            (slot(1), json!({"round": "r3"}), Precondition::Absent),
            (slot(4), json!({"round": "r3"}), Precondition::Absent),
            // Slot 3 did not exist before the call, but an earlier item wrote it.
            (slot(3), json!({"round": "r4"}), Precondition::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 8);
    assert!(
        matches!(outcomes[7], Err(StoreError::AlreadyExists(_))),
        "{:?}",
        outcomes[7]
    );
    assert!(
        matches!(outcomes[5], Err(StoreError::AlreadyExists(_))),
        "{:?}",
        outcomes[5]
    );
    assert_eq!(outcomes[6], Ok(before + 3));
    assert_eq!(outcomes[0], Ok(before + 1));
    assert!(
        matches!(outcomes[1], Err(StoreError::Conflict(_))),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(outcomes[2], Err(StoreError::NotFound(_))),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(outcomes[3], Ok(before + 2));
    assert!(
        matches!(outcomes[4], Err(StoreError::Conflict(_))),
        "{:?}",
        outcomes[4]
    );

    let value = |stored: Option<Stored>| stored.map(|stored| stored.value["round"].clone());
    assert_eq!(value(store.get(&slot(0)).await.unwrap()), Some(json!("r1")));
    assert_eq!(value(store.get(&slot(1)).await.unwrap()), Some(json!("r0")));
    assert_eq!(value(store.get(&slot(2)).await.unwrap()), None);
    assert_eq!(value(store.get(&slot(3)).await.unwrap()), Some(json!("r1")));
    assert_eq!(value(store.get(&slot(4)).await.unwrap()), Some(json!("r3")));
    // Skipped writes use no revision and leave no change-feed entry.
    assert_eq!(store.revision().await.unwrap(), before + 3);
    let changed: Vec<Key> = store
        .changes_since(before, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|change| change.key)
        .collect();
    assert_eq!(changed, vec![slot(0), slot(3), slot(4)]);
    assert_eq!(store.put_each(&[]).await.unwrap(), Vec::new());
}

pub async fn count_in_namespace_counts_every_kind(store: Arc<dyn Store>) {
    assert_eq!(store.count_in_namespace("default").await.unwrap(), 0);
    store
        .put_all(&[
            (key("checks", "default", "web"), json!({})),
            (key("handlers", "default", "slack"), json!({})),
            (key("events", "default", "a/web"), json!({})),
            (key("checks", "dev", "web"), json!({})),
            (key("namespaces", "", "default"), json!({})),
        ])
        .await
        .unwrap();
    assert_eq!(store.count_in_namespace("default").await.unwrap(), 3);
    assert_eq!(store.count_in_namespace("dev").await.unwrap(), 1);
    assert_eq!(store.count_in_namespace("").await.unwrap(), 1);
    store
        .delete(&key("checks", "default", "web"), Precondition::None)
        .await
        .unwrap();
    assert_eq!(store.count_in_namespace("default").await.unwrap(), 2);
}

/// `put_all` gives its items consecutive revisions in order, and readers never observe part of
/// a batch.
pub async fn put_all_is_atomic_and_consecutive(store: Arc<dyn Store>) {
    let existing = key("checks", "default", "web");
    store.create(&existing, &json!({"v": 0})).await.unwrap();
    let before = store.revision().await.unwrap();
    store.put_all(&[]).await.unwrap();
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "an empty batch writes nothing"
    );

    let batch = vec![
        (key("checks", "default", "db"), json!({"v": 1})),
        (existing.clone(), json!({"v": 2})),
        (key("handlers", "", "slack"), json!({"v": 3})),
    ];
    store.put_all(&batch).await.unwrap();
    let changes = store.changes_since(before, 0).await.unwrap();
    let logged: Vec<(i64, Key, Option<Value>)> = changes
        .into_iter()
        .map(|change| (change.revision, change.key, change.value))
        .collect();
    let expected: Vec<(i64, Key, Option<Value>)> = (before + 1..)
        .zip(&batch)
        .map(|(revision, (key, value))| (revision, key.clone(), Some(value.clone())))
        .collect();
    assert_eq!(logged, expected);
    for (revision, (key, value)) in (before + 1..).zip(&batch) {
        assert_eq!(
            store.get(key).await.unwrap(),
            Some(Stored {
                key: key.clone(),
                value: value.clone(),
                revision
            })
        );
    }

    // Batches of BATCH new resources in one namespace: a reader must only ever count whole batches.
    const BATCH: usize = 25;
    const BATCHES: usize = 12;
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for batch in 0..BATCHES {
                let items: Vec<(Key, Value)> = (0..BATCH)
                    .map(|index| {
                        (
                            key("checks", "atomic", &format!("{batch:03}-{index:03}")),
                            json!({"batch": batch}),
                        )
                    })
                    .collect();
                store.put_all(&items).await.unwrap();
            }
        }
    });
    let query = ListQuery {
        kind: "checks".into(),
        namespace: Some("atomic".into()),
        limit: 1000,
        ..Default::default()
    };
    let mut observations = 0;
    loop {
        let done = writer.is_finished();
        let counted = store.count_in_namespace("atomic").await.unwrap() as usize;
        let listed = store.list(&query).await.unwrap().items.len();
        assert_eq!(counted % BATCH, 0, "count saw part of a batch: {counted}");
        assert_eq!(listed % BATCH, 0, "list saw part of a batch: {listed}");
        observations += 1;
        if done {
            assert_eq!(counted, BATCH * BATCHES);
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(observations > 1);
}

/// Each kind of write appears in the feed, in order, with its value (or none for deletes).
/// A batch that writes some keys several times (an agent's check reporting twice before the
/// writer commits) and is larger than any internal statement size: each key ends with its last
/// value at that write's revision, and the feed still has every write, in order (the value with
/// the last).
pub async fn put_all_keeps_the_last_write_of_a_key(store: Arc<dyn Store>) {
    const KEYS: usize = 70;
    const ROUNDS: usize = 3;
    let before = store.revision().await.unwrap();
    // Round r writes every key; the last round skips the odd ones, so their last write is
    // from the round before.
    let mut batch = Vec::new();
    for round in 0..ROUNDS {
        for index in 0..KEYS {
            if round == ROUNDS - 1 && index % 2 == 1 {
                continue;
            }
            batch.push((
                key("events", "default", &format!("e/{index:03}")),
                json!({"round": round, "index": index}),
            ));
        }
    }
    store.put_all(&batch).await.unwrap();
    let head = store.revision().await.unwrap();
    assert_eq!(head, before + batch.len() as i64);

    let changes = store.changes_since(before, batch.len()).await.unwrap();
    let logged: Vec<(i64, Key, Option<Value>)> = changes
        .into_iter()
        .map(|change| (change.revision, change.key, change.value))
        .collect();
    // Every write in order; only each key's last write still carries its value.
    let expected: Vec<(i64, Key, Option<Value>)> = (before + 1..)
        .zip(batch.iter().enumerate())
        .map(|(revision, (position, (key, value)))| {
            let latest = !batch[position + 1..].iter().any(|(later, _)| later == key);
            (revision, key.clone(), latest.then(|| value.clone()))
        })
        .collect();
    assert_eq!(logged, expected);

    for index in 0..KEYS {
        let (position, (key, value)) = batch
            .iter()
            .enumerate()
            .rfind(|(_, (key, _))| key.name == format!("e/{index:03}"))
            .unwrap();
        let stored = store.get(key).await.unwrap().unwrap();
        assert_eq!(stored.value, *value, "{key}");
        assert_eq!(stored.revision, before + 1 + position as i64, "{key}");
    }
    let listed = list_all(
        store.as_ref(),
        ListQuery {
            kind: "events".into(),
            namespace: Some("default".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed.len(), KEYS);
}

pub async fn change_feed_records_every_write(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let a = key("checks", "default", "a");
    let b = key("checks", "default", "b");
    let events = [
        key("events", "default", "entity/x"),
        key("events", "default", "entity/y"),
    ];
    store.create(&a, &json!({"v": 1})).await.unwrap();
    store
        .put(&a, &json!({"v": 2}), Precondition::MustExist)
        .await
        .unwrap();
    store
        .put(&b, &json!({"v": 3}), Precondition::None)
        .await
        .unwrap();
    store.delete(&a, Precondition::None).await.unwrap();
    store
        .put_all(&[
            (events[0].clone(), json!({"v": 4})),
            (events[1].clone(), json!({"v": 5})),
        ])
        .await
        .unwrap();
    store
        .delete_prefix("events", "default", "entity/")
        .await
        .unwrap();

    // Every revision; a put carries its value only while it is the key's latest write (only
    // b's is): the feed records which keys changed, values are stored once.
    let expected = [
        (ChangeOp::Put, &a, None),
        (ChangeOp::Put, &a, None),
        (ChangeOp::Put, &b, Some(json!({"v": 3}))),
        (ChangeOp::Delete, &a, None),
        (ChangeOp::Put, &events[0], None),
        (ChangeOp::Put, &events[1], None),
        (ChangeOp::Delete, &events[0], None),
        (ChangeOp::Delete, &events[1], None),
    ];
    let changes = store.changes_since(start, 0).await.unwrap();
    let logged: Vec<(i64, ChangeOp, &Key, Option<Value>)> = changes
        .iter()
        .map(|change| {
            (
                change.revision,
                change.op,
                &change.key,
                change.value.clone(),
            )
        })
        .collect();
    let expected: Vec<(i64, ChangeOp, &Key, Option<Value>)> = (start + 1..)
        .zip(expected)
        .map(|(revision, (op, key, value))| (revision, op, key, value))
        .collect();
    assert_eq!(logged, expected);

    // `limit` bounds a read; reading after the newest revision returns nothing.
    let head = store.changes_since(start, 3).await.unwrap();
    assert_eq!(
        head.iter()
            .map(|change| change.revision)
            .collect::<Vec<_>>(),
        [start + 1, start + 2, start + 3]
    );
    let tail = store.changes_since(start + 6, 3).await.unwrap();
    assert_eq!(
        tail.iter()
            .map(|change| change.revision)
            .collect::<Vec<_>>(),
        [start + 7, start + 8]
    );
    assert!(store.changes_since(start + 8, 0).await.unwrap().is_empty());
}

/// The central property for followers: with many concurrent writers, a follower reading
/// `changes_since(last)` sees every revision exactly once, in order, with no gap — even if a
/// lower revision commits after a higher one was allocated (the PostgreSQL trap).
pub async fn change_feed_is_complete_under_concurrent_writers(store: Arc<dyn Store>) {
    const WRITERS: usize = 8;
    const WRITES_PER_WRITER: usize = 50;
    const TOTAL: usize = WRITERS * WRITES_PER_WRITER;
    let start = store.revision().await.unwrap();

    let follower = tokio::spawn({
        let store = store.clone();
        async move {
            let mut last = start;
            let mut seen = Vec::with_capacity(TOTAL);
            while seen.len() < TOTAL {
                let changes = store.changes_since(last, 64).await.unwrap();
                if changes.is_empty() {
                    tokio::time::timeout(WAKE_TIMEOUT, store.wait_for_change(last))
                        .await
                        .expect("a write wakes the follower");
                    continue;
                }
                for change in changes {
                    assert_eq!(
                        change.revision,
                        last + 1,
                        "the follower skipped or repeated a revision"
                    );
                    last = change.revision;
                    seen.push(change.key);
                }
            }
            (last, seen)
        }
    });

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = |index: usize| key("checks", "load", &format!("w{writer}/{index:03}"));
                if writer == 0 {
                    // One writer uses multi-revision batches, interleaved with the single writes.
                    for batch in (0..WRITES_PER_WRITER).collect::<Vec<_>>().chunks(5) {
                        let items: Vec<(Key, Value)> = batch
                            .iter()
                            .map(|index| (name(*index), json!({"i": index})))
                            .collect();
                        store.put_all(&items).await.unwrap();
                    }
                } else {
                    for index in 0..WRITES_PER_WRITER {
                        store
                            .put(&name(index), &json!({"i": index}), Precondition::None)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let (last, seen) = follower.await.unwrap();
    assert_eq!(last, store.revision().await.unwrap());
    // Every write once; each writer's own writes in the order it made them.
    let unique: BTreeSet<&Key> = seen.iter().collect();
    assert_eq!(unique.len(), TOTAL);
    for writer in 0..WRITERS {
        let prefix = format!("w{writer}/");
        let own: Vec<&str> = seen
            .iter()
            .filter(|key| key.name.starts_with(&prefix))
            .map(|key| key.name.as_str())
            .collect();
        let mut sorted = own.clone();
        sorted.sort();
        assert_eq!(own, sorted, "writer {writer}'s writes out of order");
    }
}

/// `changes_of_kinds` returns the entries of the asked kinds that `changes_since` returns,
/// except `put`s a later write replaced (values as their stored text), and `through` lets a
/// follower page past the rest.
pub async fn change_feed_by_kinds(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    let check = key("checks", "default", "a");
    let handler = key("handlers", "default", "h");
    let event = |name: &str| key("events", "default", &format!("entity/{name}"));
    store.create(&check, &json!({"v": 1})).await.unwrap();
    store
        .put_all(&[
            (event("x"), json!({"v": 2})),
            (event("y"), json!({"v": 3})),
            (handler.clone(), json!({"b": 4, "a": "é"})),
        ])
        .await
        .unwrap();
    store.delete(&check, Precondition::None).await.unwrap();
    store
        .delete_prefix("events", "default", "entity/")
        .await
        .unwrap();
    store
        .put(&event("z"), &json!({"v": 5}), Precondition::None)
        .await
        .unwrap();
    let head = store.revision().await.unwrap();
    assert_eq!(head, start + 8);

    // The same entries as the full feed, in order, values as stored text.
    let wanted = ["checks", "handlers"];
    let read = store.changes_of_kinds(start, &wanted, 0).await.unwrap();
    let expected: Vec<_> = store
        .changes_since(start, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|change| wanted.contains(&change.key.kind.as_str()))
        .filter(|change| change.op == ChangeOp::Delete || change.value.is_some())
        .collect();
    // The check's create (start + 1) was replaced by its deletion: skipped.
    assert_eq!(
        expected.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [start + 4, start + 5]
    );
    assert!(!read.pruned);
    assert_eq!(
        read.through, head,
        "a short read covers the feed to its head"
    );
    assert_eq!(
        read.changes[0].value.as_deref(),
        Some(r#"{"b":4,"a":"é"}"#),
        "the stored text, fields in their order"
    );
    assert_eq!(read.changes[1].value, None, "a delete has no value");
    let decoded: Vec<_> = read
        .changes
        .into_iter()
        .map(|change| change.decode().unwrap())
        .collect();
    assert_eq!(decoded, expected);

    // Paging: a full page ends at its last entry; the next read continues after it.
    let mut seen = Vec::new();
    let mut after = start;
    loop {
        let page = store.changes_of_kinds(after, &wanted, 2).await.unwrap();
        assert!(page.changes.len() <= 2 && !page.pruned);
        assert!(page.through >= after);
        seen.extend(page.changes.iter().map(|c| c.revision));
        if page.through == after {
            break;
        }
        after = page.through;
    }
    assert_eq!(seen, [start + 4, start + 5]);
    assert_eq!(after, head);

    // Events only, including the deletions of `delete_prefix`.
    let events = store.changes_of_kinds(start, &["events"], 0).await.unwrap();
    assert_eq!(
        events
            .changes
            .iter()
            .map(|c| (c.revision, c.op, c.key.name.as_str()))
            .collect::<Vec<_>>(),
        [
            // The puts of x and y (start + 2, + 3) were replaced by their deletions.
            (start + 6, ChangeOp::Delete, "entity/x"),
            (start + 7, ChangeOp::Delete, "entity/y"),
            (start + 8, ChangeOp::Put, "entity/z"),
        ]
    );

    // Nothing of those kinds (or no kinds at all): empty, but the follower still moves on.
    for kinds in [&["silenced"][..], &[]] {
        let none = store.changes_of_kinds(start, kinds, 0).await.unwrap();
        assert!(none.changes.is_empty() && !none.pruned);
        assert_eq!(none.through, head);
    }
    // At the head: nothing, and `through` stays where the caller is.
    let at_head = store.changes_of_kinds(head, &wanted, 0).await.unwrap();
    assert!(at_head.changes.is_empty() && !at_head.pruned);
    assert_eq!(at_head.through, head);
}

/// The central follower property for filtered reads: with many concurrent writers, a follower
/// of one kind that continues after `through` sees every write of that kind exactly once, in
/// order, and none of the others.
pub async fn change_feed_by_kinds_is_complete_under_concurrent_writers(store: Arc<dyn Store>) {
    const WRITERS: usize = 6;
    const WRITES_PER_WRITER: usize = 40;
    // Writers with an even number write `checks`, the others `events`.
    const FOLLOWED: usize = (WRITERS / 2) * WRITES_PER_WRITER;
    let start = store.revision().await.unwrap();

    let follower = tokio::spawn({
        let store = store.clone();
        async move {
            let mut after = start;
            let mut seen = Vec::with_capacity(FOLLOWED);
            while seen.len() < FOLLOWED {
                let read = store
                    .changes_of_kinds(after, &["checks"], 16)
                    .await
                    .unwrap();
                assert!(!read.pruned);
                assert!(read.through >= after, "through never goes back");
                for change in &read.changes {
                    assert!(change.revision > after && change.revision <= read.through);
                    assert_eq!(change.key.kind, "checks");
                }
                if read.through == after {
                    tokio::time::timeout(WAKE_TIMEOUT, store.wait_for_change(after))
                        .await
                        .expect("a write wakes the follower");
                    continue;
                }
                after = read.through;
                seen.extend(read.changes.into_iter().map(|change| change.key));
            }
            seen
        }
    });

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let kind = if writer % 2 == 0 { "checks" } else { "events" };
                let name = |index: usize| key(kind, "load", &format!("w{writer}/{index:03}"));
                if writer < 2 {
                    for batch in (0..WRITES_PER_WRITER).collect::<Vec<_>>().chunks(4) {
                        let items: Vec<(Key, Value)> = batch
                            .iter()
                            .map(|index| (name(*index), json!({"i": index})))
                            .collect();
                        store.put_all(&items).await.unwrap();
                    }
                } else {
                    for index in 0..WRITES_PER_WRITER {
                        store
                            .put(&name(index), &json!({"i": index}), Precondition::None)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = follower.await.unwrap();
    let unique: BTreeSet<&Key> = seen.iter().collect();
    assert_eq!(unique.len(), FOLLOWED, "every checks write exactly once");
    for writer in (0..WRITERS).step_by(2) {
        let prefix = format!("w{writer}/");
        let own: Vec<&str> = seen
            .iter()
            .filter(|key| key.name.starts_with(&prefix))
            .map(|key| key.name.as_str())
            .collect();
        assert_eq!(own.len(), WRITES_PER_WRITER);
        let mut sorted = own.clone();
        sorted.sort();
        assert_eq!(own, sorted, "writer {writer}'s writes out of order");
    }
    // Caught up: the next read is empty and stays at the head.
    let head = store.revision().await.unwrap();
    let rest = store.changes_of_kinds(head, &["checks"], 0).await.unwrap();
    assert!(rest.changes.is_empty());
    assert_eq!(rest.through, head);
}

/// A filtered read cannot show pruning as a gap, so it says so: a follower whose next revision
/// was pruned gets `pruned` (and must re-list); one still inside the feed reads on normally.
pub async fn change_feed_by_kinds_reports_pruning(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    for index in 0..6 {
        let kind = if index % 2 == 0 { "checks" } else { "events" };
        store
            .put(
                &key(kind, "default", &format!("c{index}")),
                &json!({"i": index}),
                Precondition::None,
            )
            .await
            .unwrap();
    }
    let head = start + 6;
    store.prune_changes(start + 3).await.unwrap();

    for after in [start, start + 1] {
        let read = store.changes_of_kinds(after, &["checks"], 0).await.unwrap();
        assert!(read.pruned, "after {after}: its next revision was pruned");
        assert!(read.changes.is_empty());
        assert_eq!(read.through, after);
    }
    // Revision start + 3 is the oldest kept: a follower at start + 2 missed nothing.
    let read = store
        .changes_of_kinds(start + 2, &["checks"], 0)
        .await
        .unwrap();
    assert!(!read.pruned);
    assert_eq!(
        read.changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [start + 3, start + 5]
    );
    assert_eq!(read.through, head);

    // With the whole feed pruned, only a follower at the head is still current.
    store.prune_changes(i64::MAX).await.unwrap();
    assert!(
        store
            .changes_of_kinds(start + 2, &["checks"], 0)
            .await
            .unwrap()
            .pruned
    );
    let current = store.changes_of_kinds(head, &["checks"], 0).await.unwrap();
    assert!(!current.pruned && current.changes.is_empty());
    assert_eq!(current.through, head);
}

pub async fn prune_changes_forgets_old_entries_only(store: Arc<dyn Store>) {
    let start = store.revision().await.unwrap();
    for index in 0..5 {
        store
            .put(
                &key("checks", "default", &format!("c{index}")),
                &json!({"i": index}),
                Precondition::None,
            )
            .await
            .unwrap();
    }
    let last = start + 5;
    assert_eq!(store.prune_changes(start + 3).await.unwrap(), 2);
    let remaining: Vec<i64> = store
        .changes_since(start, 0)
        .await
        .unwrap()
        .iter()
        .map(|change| change.revision)
        .collect();
    assert_eq!(
        remaining,
        [start + 3, start + 4, start + 5],
        "a follower at `start` now sees a gap and knows to re-list"
    );
    assert_eq!(store.prune_changes(start + 3).await.unwrap(), 0);
    assert_eq!(
        store.revision().await.unwrap(),
        last,
        "pruning keeps the revision"
    );
    assert_eq!(
        store
            .get(&key("checks", "default", "c0"))
            .await
            .unwrap()
            .map(|stored| stored.revision),
        Some(start + 1)
    );
    // Pruning everything must not let a revision be reused.
    store.prune_changes(i64::MAX).await.unwrap();
    let next = store
        .put(
            &key("checks", "default", "c5"),
            &json!({}),
            Precondition::None,
        )
        .await
        .unwrap();
    assert_eq!(next, last + 1);
}

pub async fn wait_for_change_wakes_on_a_write(store: Arc<dyn Store>) {
    let web = key("checks", "default", "web");
    let first = store.create(&web, &json!({})).await.unwrap();
    // Already past: resolves at once.
    tokio::time::timeout(WAKE_TIMEOUT, store.wait_for_change(first - 1))
        .await
        .expect("a known change resolves at once");
    // Nothing new: keeps waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), store.wait_for_change(first))
            .await
            .is_err()
    );

    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.wait_for_change(first).await })
        })
        .collect();
    // Give the waiters time to start waiting, so the write below must wake them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .put(&web, &json!({"v": 2}), Precondition::None)
        .await
        .unwrap();
    for waiter in waiters {
        tokio::time::timeout(WAKE_TIMEOUT, waiter)
            .await
            .expect("a write wakes every waiter")
            .unwrap();
    }
}

/// Many tasks increment one counter with read-modify-write under `Precondition::Revision`:
/// each revision has exactly one successor, and no increment is lost.
pub async fn conditional_puts_never_lose_an_update(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const INCREMENTS: u64 = 10;
    let counter = key("counters", "default", "n");
    store.create(&counter, &json!({"n": 0})).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut won_from = Vec::new();
                while (won_from.len() as u64) < INCREMENTS {
                    let current = store.get(&counter).await.unwrap().unwrap();
                    let n = current.value["n"].as_u64().unwrap();
                    match store
                        .put(
                            &counter,
                            &json!({"n": n + 1}),
                            Precondition::Revision(current.revision),
                        )
                        .await
                    {
                        Ok(_) => won_from.push(current.revision),
                        Err(StoreError::Conflict(_)) => continue,
                        Err(err) => panic!("{err}"),
                    }
                }
                won_from
            })
        })
        .collect();
    let mut winners = HashSet::new();
    for task in tasks {
        for revision in task.await.unwrap() {
            assert!(
                winners.insert(revision),
                "two writers both won against revision {revision}"
            );
        }
    }
    let final_value = store.get(&counter).await.unwrap().unwrap().value;
    assert_eq!(final_value, json!({"n": TASKS as u64 * INCREMENTS}));
}

pub async fn concurrent_creates_have_one_winner(store: Arc<dyn Store>) {
    let web = key("checks", "default", "web");
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = store.clone();
            let web = web.clone();
            tokio::spawn(async move { store.create(&web, &json!({"task": task})).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists(_)) => {}
            Err(err) => panic!("{err}"),
        }
    }
    assert_eq!(created, 1);
}
