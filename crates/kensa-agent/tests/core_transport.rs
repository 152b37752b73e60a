//! The agent's connection to its backend, against a fake backend: handshake, keepalives,
//! entity configuration, at-least-once delivery through the outbox, and reconnection.

mod core_support;

use base64::Engine as _;
use core_support::{agent_args, eventually, stored_events, FakeBackend, TestAgent};
use kensa_proto::BackendMessage;
use kensa_types::resources::check::Check;
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;

fn local_event(output: &str) -> Event {
    let mut check = Check::default();
    check.metadata.name = "local".into();
    check.output = output.into();
    Event {
        check: Some(check),
        ..Event::default()
    }
}

#[tokio::test]
async fn handshake_carries_sensu_headers_and_a_keepalive_follows_the_entity_config() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.subscriptions = vec!["linux,web".into()];
    args.user = Some("agent-7".into());
    args.password = Some("s3cret:pw".into());
    args.namespace = Some("ops".into());
    args.keepalive_interval = Some(10);
    args.keepalive_warning_timeout = Some(90);
    args.keepalive_critical_timeout = Some(180);
    args.keepalive_handlers = vec!["pager".into()];
    let agent = TestAgent::start(args.resolve().unwrap()).await;

    let mut session = backend.accept().await;
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("agent-7:s3cret:pw")
    );
    let cases = [
        ("Sensu-AgentName", "test-agent"),
        ("Sensu-Namespace", "ops"),
        ("Sensu-Subscriptions", "linux,web"),
        ("Sensu-User", "agent-7"),
        ("Kensa-Protocol", "1"),
        ("Authorization", expected_auth.as_str()),
    ];
    for (name, expected) in cases {
        assert_eq!(session.header(name), expected, "header {name}");
    }

    let mut connected = agent.agent.connected();
    assert!(
        !*connected.borrow(),
        "not connected before the entity config"
    );
    session.send(BackendMessage::EntityConfig(None)).await;
    let keepalive = session.next_keepalive().await;
    let check = keepalive.check.as_ref().unwrap();
    assert_eq!(check.metadata.name, "keepalive");
    assert_eq!((check.interval, check.timeout, check.ttl), (10, 90, 180));
    assert_eq!(check.handlers, vec!["pager"]);
    assert_eq!(keepalive.sequence, 1);
    assert!(keepalive.id.is_some() && keepalive.timestamp > 0);
    let entity = keepalive.entity.as_ref().unwrap();
    assert_eq!(entity.metadata.name, "test-agent");
    assert_eq!(entity.metadata.namespace, "ops");
    assert_eq!(entity.entity_class, "agent");
    assert_eq!(
        entity.subscriptions,
        vec!["linux", "web", "entity:test-agent"]
    );
    assert_eq!(entity.last_seen, keepalive.timestamp);
    connected
        .wait_for(|up| *up)
        .await
        .expect("connected once the session is up");
    agent.stop().await;
}

#[tokio::test]
async fn the_stored_entity_config_wins_over_flags() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.labels = vec!["region=eu".into()];
    args.subscriptions = vec!["linux".into()];
    let agent = TestAgent::start(args.resolve().unwrap()).await;

    let mut session = backend.accept().await;
    let mut stored = Entity::default();
    stored.metadata.name = "test-agent".into();
    stored.metadata.labels.insert("region".into(), "us".into());
    stored.subscriptions = vec!["db".into()];
    stored.deregister = true;
    session
        .send(BackendMessage::EntityConfig(Some(Box::new(stored))))
        .await;
    let keepalive = session.next_keepalive().await;
    let entity = keepalive.entity.unwrap();
    assert_eq!(entity.metadata.labels["region"], "us");
    assert_eq!(entity.subscriptions, vec!["db", "entity:test-agent"]);
    assert!(entity.deregister);
    assert_eq!(
        agent.agent.entity().borrow().metadata.labels["region"],
        "us"
    );
    agent.stop().await;
}

#[tokio::test]
async fn unacknowledged_events_are_resent_after_a_reconnect_and_acknowledged_ones_deleted() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;

    let mut session = backend.accept_ready().await;
    agent.agent.outbox().push(local_event("one")).await.unwrap();
    let first = session.next_event().await;
    assert_eq!(first.check.as_ref().unwrap().output, "one");
    assert_eq!(stored_events(cache.path()), 1, "stored until acknowledged");
    session.kill();

    let mut session = backend.accept_ready().await;
    let again = session.next_event().await;
    assert_eq!(again.id, first.id, "the same event, with the same id");
    assert_eq!(again.check.as_ref().unwrap().output, "one");
    session.ack(&again).await;
    eventually("the acknowledged event is deleted", || {
        stored_events(cache.path()) == 0
    })
    .await;
    assert!(agent.agent.outbox().is_empty());
    agent.stop().await;
}

#[tokio::test]
async fn the_outbox_survives_an_agent_restart() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let config = agent_args(&[&backend.url], cache.path()).resolve().unwrap();

    let agent = TestAgent::start(config.clone()).await;
    let mut session = backend.accept_ready().await;
    agent
        .agent
        .outbox()
        .push(local_event("before restart"))
        .await
        .unwrap();
    let sent = session.next_event().await;
    agent.stop().await;
    assert_eq!(stored_events(cache.path()), 1);

    let agent = TestAgent::start(config).await;
    let mut session = backend.accept_ready().await;
    let delivered = session.next_event().await;
    assert_eq!(delivered.id, sent.id);
    assert_eq!(delivered.check.as_ref().unwrap().output, "before restart");
    session.ack(&delivered).await;
    eventually("the acknowledged event is deleted", || {
        stored_events(cache.path()) == 0
    })
    .await;
    agent.stop().await;
}

/// An overloaded backend that left an event unacknowledged asks for it again
/// (`retry_after_ms`): the agent re-sends it within the same session after that delay (plus
/// jitter), instead of after its 30 s ack timeout or a reconnect.
#[tokio::test]
async fn a_backend_that_asks_for_a_retry_gets_the_unacknowledged_events_again_soon() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    agent
        .agent
        .outbox()
        .push(local_event("deferred"))
        .await
        .unwrap();
    let first = session.next_event().await;
    let asked = std::time::Instant::now();
    session
        .send(BackendMessage::Ack(kensa_proto::Ack {
            retry_after_ms: 300,
            ..Default::default()
        }))
        .await;
    let again = tokio::time::timeout(std::time::Duration::from_secs(5), session.next_event())
        .await
        .expect("the event is sent again within seconds, in the same session");
    assert_eq!(again.id, first.id);
    let waited = asked.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "not before the delay the backend asked for: {waited:?}"
    );
    session.ack(&again).await;
    eventually("the acknowledged event is deleted", || {
        stored_events(cache.path()) == 0
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn rejected_events_are_dropped() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;
    let mut session = backend.accept_ready().await;
    agent.agent.outbox().push(local_event("bad")).await.unwrap();
    let event = session.next_event().await;
    let ack = kensa_proto::Ack {
        ids: Vec::new(),
        rejected: vec![kensa_proto::Rejected {
            id: event.id.unwrap(),
            reason: "check is invalid".into(),
        }],
        ..Default::default()
    };
    session.send(BackendMessage::Ack(ack)).await;
    eventually("the rejected event is deleted", || {
        stored_events(cache.path()) == 0
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn reconnection_rotates_through_the_backends() {
    // A port nobody listens on, and two backends that each refuse their first handshake: the
    // agent only gets a session if it keeps moving on to the next URL.
    let mut first = FakeBackend::refusing_first(1).await;
    let mut second = FakeBackend::refusing_first(1).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", listener.local_addr().unwrap())
    };
    let cache = tempfile::tempdir().unwrap();
    let args = agent_args(&[&dead, &first.url, &second.url], cache.path());
    let agent = TestAgent::start(args.resolve().unwrap()).await;

    let session = tokio::select! {
        session = first.accept() => session,
        session = second.accept() => session,
    };
    assert_eq!(session.header("Sensu-AgentName"), "test-agent");
    assert!(first.attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(second.attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    agent.stop().await;
}

#[tokio::test]
async fn a_silent_backend_is_left_after_the_heartbeat_timeout() {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut args = agent_args(&[&backend.url], cache.path());
    args.backend_heartbeat_interval = Some(1);
    args.backend_heartbeat_timeout = Some(2);
    let agent = TestAgent::start(args.resolve().unwrap()).await;

    // The backend answers the handshake and the entity config, then stops reading: no pong,
    // no traffic at all.
    let _silent = backend.accept_ready().await;
    let mut session = backend.accept_ready().await;
    assert_eq!(session.next_keepalive().await.sequence, 1, "a new session");
    agent.stop().await;
}

#[tokio::test]
async fn a_session_ends_within_max_session_length_and_the_agent_moves_to_the_next_backend() {
    let mut first = FakeBackend::start().await;
    let mut second = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut args = agent_args(&[&first.url, &second.url], cache.path());
    args.keepalive_interval = Some(1);
    args.max_session_length = Some("2s".into());
    let agent = TestAgent::start(args.resolve().unwrap()).await;

    let (mut session, on_first) = tokio::select! {
        session = first.accept_ready() => (session, true),
        session = second.accept_ready() => (session, false),
    };
    let started = std::time::Instant::now();
    // Keepalives flow until the agent closes the session, between 1 s and 2 s in.
    while session.next().await.is_some() {}
    let lasted = started.elapsed();
    assert!(
        lasted >= std::time::Duration::from_millis(900)
            && lasted <= std::time::Duration::from_secs(4),
        "the session lasted {lasted:?}, not within max-session-length (2 s, at least half)"
    );
    // The agent reconnects at once, to the next backend in its rotation.
    let mut next = if on_first {
        second.accept_ready().await
    } else {
        first.accept_ready().await
    };
    assert_eq!(next.next_keepalive().await.sequence, 1, "a new session");
    agent.stop().await;
}
