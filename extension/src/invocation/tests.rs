//! The phase machine: scopes, generations, waits and SnapStart, against a session factory
//! that reaches no AWS.

use super::*;
use crate::testing;

const WAIT: Duration = Duration::from_secs(5);

fn soon() -> SystemTime {
    SystemTime::now() + Duration::from_secs(60)
}

#[tokio::test(start_paused = true)]
async fn the_init_scope_serves_until_init_ends_then_requests_wait_for_the_next_invoke() {
    let invocations = testing::invocations(Start::Init(soon()), WAIT).await;
    let init = invocations.current_scope().await.expect("the init scope");
    assert_eq!((init.label(), init.generation(), init.is_per_fetch()), ("init", 0, false));
    assert!(invocations.is_current_generation(0));

    assert!(invocations.end_init().await, "INIT was open");
    assert!(init.has_ended() && !invocations.is_current_generation(0));
    assert!(!invocations.end_init().await, "a second end of INIT changes nothing");
    let started = tokio::time::Instant::now();
    assert!(matches!(invocations.current_scope().await, Err(ReadError::NoActiveInvocation)));
    assert_eq!(started.elapsed(), WAIT, "a request between invocations waits, bounded, for one");

    let waiting = {
        let invocations = Arc::clone(&invocations);
        tokio::spawn(async move { invocations.current_scope().await.map(|s| s.label().to_owned()) })
    };
    tokio::task::yield_now().await;
    invocations.begin("r1", soon()).await;
    assert_eq!(waiting.await.expect("joined").expect("served by r1"), "r1");
}

#[tokio::test(start_paused = true)]
async fn each_invocation_is_a_new_generation_and_ends_the_scope_before_it() {
    let invocations = testing::invocations(Start::Init(soon()), WAIT).await;
    let init = invocations.current_scope().await.expect("init");
    let first = invocations.begin("r1", soon()).await;
    assert!(init.has_ended(), "the first INVOKE ends the init scope");
    assert_eq!(first.generation(), 1);
    assert!(invocations.is_current_generation(1) && !invocations.is_current_generation(0));
    let second = invocations.begin("r2", soon()).await;
    assert!(first.has_ended(), "an invocation whose end never came ends with the next");
    assert_eq!(second.generation(), 2);
    invocations.finish(&second, "runtime_done").await;
    assert!(second.has_ended() && !invocations.is_current_generation(2));
    assert!(matches!(invocations.phase(), Phase::Idle));
    // Finishing a scope that is no longer the current one does not touch the phase.
    let third = invocations.begin("r3", soon()).await;
    invocations.finish(&second, "late").await;
    assert!(matches!(invocations.phase(), Phase::Active(ref scope) if Arc::ptr_eq(scope, &third)));
}

#[tokio::test(start_paused = true)]
async fn a_scope_that_ended_hands_out_no_session() {
    let invocations = testing::invocations(Start::Init(soon()), WAIT).await;
    let scope = invocations.begin("r1", soon()).await;
    assert_eq!(scope.end("test").await, None, "no session was started");
    assert!(matches!(scope.session().await, Err(ReadError::InvocationEnded)));
    assert_eq!(invocations.ledger().started.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_sts_cannot_start_is_an_error_and_never_enters_the_ledger() {
    let invocations = testing::invocations(Start::Init(soon()), WAIT).await;
    let scope = invocations.begin("r1", soon()).await;
    let refused = scope.session().await.expect_err("nothing listens at the STS endpoint");
    assert!(matches!(refused, ReadError::Session(_)), "{refused:?}");
    assert_eq!(refused.code(), crate::domain::code::Code::SessionFailed);
    let (live, _) = invocations.ledger().at(SystemTime::now());
    assert!(live.is_empty());
    assert_eq!(invocations.ledger().started.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn snapstart_serves_nothing_before_the_restore() {
    let invocations = testing::invocations(Start::Snapshotting, WAIT).await;
    assert!(matches!(invocations.current_scope().await, Err(ReadError::SnapStartInit)));
    let deadline = || Instant::now() + WAIT;
    assert!(matches!(invocations.wait_past_snapshot(deadline()).await, Err(ReadError::SnapStartInit)));
    assert_eq!(invocations.label(), "init");
    assert!(invocations.end_init().await, "the SnapStart INIT ends");
    assert!(matches!(invocations.phase(), Phase::AwaitingRestore));
    assert!(matches!(invocations.wait_past_snapshot(deadline()).await, Err(ReadError::NoActiveInvocation)));
    let waiting = {
        let invocations = Arc::clone(&invocations);
        tokio::spawn(async move { invocations.wait_past_snapshot(Instant::now() + WAIT).await.is_ok() })
    };
    tokio::task::yield_now().await;
    invocations.restored();
    assert!(waiting.await.expect("joined"), "the restore lets the waiting request on");
    assert!(matches!(invocations.phase(), Phase::Idle));
}

#[tokio::test(start_paused = true)]
async fn shutting_down_ends_the_open_scope_and_refuses_at_once() {
    let invocations = testing::invocations(Start::Init(soon()), WAIT).await;
    let scope = invocations.begin("r1", soon()).await;
    assert_eq!(invocations.shut_down().await, None, "no session was open");
    assert!(scope.has_ended());
    let started = tokio::time::Instant::now();
    assert!(matches!(invocations.current_scope().await, Err(ReadError::ShuttingDown)));
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait once shutting down");
    assert_eq!(invocations.label(), "shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_between_invocations_is_attributed_to_the_invoke_on_its_way() {
    let invocations = testing::invocations(Start::Init(soon()), WAIT).await;
    invocations.end_init().await;
    assert_eq!(invocations.label_settled(Duration::from_millis(100)).await, "idle");
    let settling = {
        let invocations = Arc::clone(&invocations);
        tokio::spawn(async move { invocations.label_settled(Duration::from_millis(100)).await })
    };
    tokio::task::yield_now().await;
    invocations.begin("r9", soon()).await;
    assert_eq!(settling.await.expect("joined"), "r9");
}

#[tokio::test(start_paused = true)]
async fn managed_instances_run_one_per_fetch_scope_for_the_environments_life() {
    let invocations = testing::invocations(Start::Environment(Duration::from_secs(60)), WAIT).await;
    let scope = invocations.current_scope().await.expect("the environment scope");
    assert_eq!((scope.label(), scope.is_per_fetch()), ("environment", true));
    assert!(!invocations.end_init().await, "no INIT scope to end");
    assert!(Arc::ptr_eq(&invocations.current_scope().await.expect("still"), &scope));
}
