//! Check execution end to end through the agent: a fake backend sends `check_request`s and
//! reads the resulting events. Real processes run (`sh -c`).

mod core_support;

use core_support::{agent_args, check_request, FakeBackend, Session, TestAgent};
use kensa_proto::{AgentMessage, Refused};
use kensa_types::resources::event::Event;
use kensa_types::resources::hook::{HookConfig, HookList};

async fn agent_and_session() -> (TestAgent, Session, FakeBackend, tempfile::TempDir) {
    let mut backend = FakeBackend::start().await;
    let cache = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start(agent_args(&[&backend.url], cache.path()).resolve().unwrap()).await;
    let session = backend.accept_ready().await;
    (agent, session, backend, cache)
}

fn check_of(event: &Event) -> &kensa_types::resources::check::Check {
    event.check.as_ref().expect("a check result")
}

#[tokio::test]
async fn a_check_runs_and_its_result_arrives() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    let mut request = check_request("greet", "echo hello; exit 1", "greet@1");
    request.config.pipelines = vec![kensa_types::resources::common::ResourceReference::core(
        "Pipeline", "alerts",
    )];
    session.send_check(request).await;

    let event = session.next_event().await;
    let check = check_of(&event);
    assert_eq!(check.metadata.name, "greet");
    assert_eq!(check.status, 1);
    assert_eq!(check.output, "hello\n");
    assert_eq!(check.command, "echo hello; exit 1");
    assert_eq!(check.issued, 1_700_000_000);
    assert!(check.executed > 0);
    assert_eq!(check.processed_by, "test-agent");
    assert_eq!(event.entity.as_ref().unwrap().metadata.name, "test-agent");
    assert_eq!(event.pipelines, check.pipelines);
    assert_eq!(event.pipelines.len(), 1);
    assert_eq!(event.sequence, 1);
    assert!(event.id.is_some());
    session.ack(&event).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_round_runs_once_and_every_new_round_runs() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    // `issued` tells the executions apart; the round is what deduplicates.
    let request = |round: &str, issued: i64| {
        let mut request = check_request("dedup", "true", round);
        request.issued = issued;
        request
    };
    session.send_check(request("dedup@1", 100)).await;
    assert_eq!(check_of(&session.next_event().await).issued, 100);

    // The same round again (as a second subscription or a re-delivery would send it), after
    // the first run finished, then a new round with an *older* issued time.
    session.send_check(request("dedup@1", 200)).await;
    session.send_check(request("dedup@2", 50)).await;
    // Events leave oldest first: a run of the duplicate would arrive before the new round's.
    let next = session.next_event().await;
    assert_eq!(
        check_of(&next).issued,
        50,
        "the duplicate round did not run"
    );
    assert_eq!(next.sequence, 2);
    agent.stop().await;
}

#[tokio::test]
async fn tokens_are_substituted_and_an_unmatched_one_fails_the_check() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    session
        .send_check(check_request(
            "named",
            "echo {{ .name }} {{ .labels.disk | default 80 }}",
            "r1",
        ))
        .await;
    let event = session.next_event().await;
    let check = check_of(&event);
    assert_eq!(check.output, "test-agent 80\n");
    assert_eq!(
        check.command, "echo {{ .name }} {{ .labels.disk | default 80 }}",
        "the event carries the unsubstituted command"
    );

    session
        .send_check(check_request("broken", "echo {{ .labels.missing }}", "r1"))
        .await;
    let event = session.next_event().await;
    let check = check_of(&event);
    assert_eq!(check.status, 3);
    assert!(
        check.output.contains("{{ .labels.missing }}"),
        "output names the token: {:?}",
        check.output
    );
    assert_eq!(check.command, "echo {{ .labels.missing }}");
    agent.stop().await;
}

#[tokio::test]
async fn hooks_matching_the_status_run_once_each_in_order() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    let mut request = check_request("failing", "exit 2", "r1");
    request.config.check_hooks = vec![
        HookList {
            hook_type: "critical".into(),
            hooks: vec!["first".into()],
        },
        HookList {
            hook_type: "ok".into(),
            hooks: vec!["never".into()],
        },
        HookList {
            hook_type: "non-zero".into(),
            hooks: vec!["first".into(), "second".into()],
        },
    ];
    let hook = |name: &str, command: &str| {
        let mut hook = HookConfig {
            command: command.into(),
            timeout: 10,
            ..HookConfig::default()
        };
        hook.metadata.name = name.into();
        hook.metadata.namespace = "default".into();
        hook
    };
    request.hooks = vec![
        hook("first", "echo one {{ .name }}"),
        hook("second", "echo two; exit 4"),
        hook("never", "echo never"),
    ];
    session.send_check(request).await;

    let event = session.next_event().await;
    let check = check_of(&event);
    assert_eq!(check.status, 2);
    let ran: Vec<(&str, &str, i32)> = check
        .hooks
        .iter()
        .map(|hook| {
            (
                hook.config.metadata.name.as_str(),
                hook.output.as_str(),
                hook.status,
            )
        })
        .collect();
    assert_eq!(
        ran,
        [("first", "one test-agent\n", 0), ("second", "two\n", 4)]
    );
    assert_eq!(check.hooks[0].config.command, "echo one {{ .name }}");
    agent.stop().await;
}

#[tokio::test]
async fn a_check_past_its_timeout_is_critical() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    let mut request = check_request("slow", "echo started; sleep 30", "r1");
    request.config.timeout = 1;
    session.send_check(request).await;
    let event = session.next_event().await;
    let check = check_of(&event);
    assert_eq!(check.status, 2);
    assert!(
        check.output.starts_with("Execution timed out"),
        "{:?}",
        check.output
    );
    assert!(
        check.duration < 10.0,
        "killed, not waited for: {}",
        check.duration
    );
    agent.stop().await;
}

#[tokio::test]
async fn stdin_checks_read_the_event() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    let mut request = check_request("reader", "cat", "r1");
    request.config.stdin = true;
    request.config.env_vars = vec!["UNUSED=1".into()];
    session.send_check(request).await;
    let event = session.next_event().await;
    let input: serde_json::Value =
        serde_json::from_str(&check_of(&event).output).expect("JSON on stdin");
    assert_eq!(input["entity"]["metadata"]["name"], "test-agent");
    assert_eq!(input["check"]["metadata"]["name"], "reader");

    let mut request = check_request("env", "echo $GREETING", "r1");
    request.config.env_vars = vec!["GREETING=hi there".into()];
    session.send_check(request).await;
    assert_eq!(check_of(&session.next_event().await).output, "hi there\n");
    agent.stop().await;
}

#[tokio::test]
async fn a_round_robin_request_the_agent_cannot_run_is_refused_back_to_the_backend() {
    let (agent, mut session, _backend, _cache) = agent_and_session().await;
    let mut first = check_request("probe", "sleep 2; echo done", "default/probe@1#pool");
    first.config.round_robin = true;
    session.send_check(first).await;
    // A second round of the same check while the first still runs: refused, and said so.
    let mut second = check_request("probe", "sleep 2; echo done", "default/probe@2#pool");
    second.config.round_robin = true;
    session.send_check(second).await;
    // The same for a check that is not round robin: refused silently (the backend sends every
    // agent its own copy; nobody else could run it instead).
    session
        .send_check(check_request("plain", "sleep 2", "default/plain@1"))
        .await;
    session
        .send_check(check_request("plain", "sleep 2", "default/plain@2"))
        .await;
    let mut refusals = Vec::new();
    let mut results = Vec::new();
    while results.len() < 2 {
        match session.next().await.expect("session open") {
            AgentMessage::Refused(refused) => refusals.push(refused),
            AgentMessage::Event(event) => {
                session.ack(&event).await;
                results.push(check_of(&event).metadata.name.clone());
            }
            AgentMessage::Keepalive(_) => {}
        }
    }
    assert_eq!(
        refusals,
        vec![Refused {
            round: "default/probe@2#pool".into(),
            check: "probe".into(),
            reason: "check execution still in progress".into(),
        }]
    );
    results.sort();
    assert_eq!(results, ["plain", "probe"]);
    agent.stop().await;
}
