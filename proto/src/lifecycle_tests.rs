//! The lifecycle decision as a table: (row, input) -> a one-line summary of the decision.

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::*;
use crate::message::LogLine;

const ID: Uuid = Uuid::from_u128(1);
const MINE: Uuid = Uuid::from_u128(10);
const OTHER: Uuid = Uuid::from_u128(11);

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid time")
}

fn row(attempt: u32, holder: Option<(&str, Uuid)>, phase: Phase) -> Row {
    let holder = holder.map(|(r, c)| Holder { runner_id: r.into(), claim: c });
    Row { id: ID, app: "web".into(), attempt, holder, phase }
}

fn queued(attempt: u32) -> Row {
    row(attempt, None, Phase::Queued { not_before: None, last_failure: None })
}

fn running(attempt: u32, cancel: bool) -> Row {
    let cancel = cancel.then(|| CancelRequest { by: "ann".into(), reason: "wrong branch".into() });
    row(attempt, Some(("a", MINE)), Phase::Running { step: Some(Step::Build), cancel, last_failure: None })
}

fn failure(cause: Cause) -> Failure {
    Failure { step: Step::Push, cause, message: "boom".into(), rolled_back: false }
}

fn finished(state: State) -> Row {
    let phase = match state {
        State::Completed => Phase::Completed { image: "i".into(), url: None, cancel: None },
        State::Failed => Phase::Failed { failure: failure(Cause::User), cancel: None },
        State::Cancelled => {
            Phase::Cancelled { cancel: CancelRequest { by: "b".into(), reason: "r".into() }, step: None }
        }
        State::Queued | State::Running => unreachable!("not a finished state"),
    };
    row(1, Some(("a", MINE)), phase)
}

fn env(runner: &str, claim: Uuid, attempt: u32, body: Body) -> Envelope {
    Envelope { deployment_id: ID, attempt, runner_id: runner.into(), claim, body }
}

fn mine(attempt: u32, body: Body) -> Envelope {
    env("a", MINE, attempt, body)
}

fn cancel_request() -> Input<'static> {
    Input::Cancel(CancelRequest { by: "bob".into(), reason: "not now".into() })
}

/// `state/attempt[/holder]` of a row.
fn show(r: &Row) -> String {
    let holder = r.holder.as_ref().map(|h| format!("/{}", h.runner_id)).unwrap_or_default();
    format!("{}/{}{holder}", r.state().as_str(), r.attempt)
}

fn show_control(c: &Option<Control>) -> &'static str {
    match c {
        None => "",
        Some(Control::Grant { .. }) => " +grant",
        Some(Control::Cancel { claim: Some(_), .. }) => " +stop-claim",
        Some(Control::Cancel { claim: None, .. }) => " +stop-all",
        Some(Control::AppLogs(_) | Control::AppLogsStop { .. }) => " +app-logs (never decided by the lifecycle)",
    }
}

fn summary(d: &Decision) -> String {
    match d {
        Decision::Change { next, control, .. } => format!("change {}{}", show(next), show_control(control)),
        Decision::Touch { reply } => format!("touch{}", show_control(reply)),
        Decision::Ignore { reply } => format!("ignore{}", show_control(reply)),
        Decision::Reject { why, control } => format!("reject {why}{}", show_control(control)),
    }
}

/// An input of the table: a runner message (owned) or any other input.
enum T {
    R(Envelope),
    I(Input<'static>),
}
use T::{I, R};

#[test]
fn decision_table() {
    let p = Policy { max_attempts: 3 };
    let log = Body::Logs { lines: vec![LogLine { seq: 1, step: None, line: "l".into(), ts: now(), more: false }] };
    let failed = |cause| Body::Failed { step: Step::Push, cause, message: "boom".into(), rolled_back: false };
    let completed = Body::Completed { image: "i".into(), url: Some("http://x".into()) };
    let abandoned = Body::Abandoned { reason: "shutting down".into() };
    let skipped = Body::Skipped { reason: "no changed file matches the watch paths (api/**)".into() };
    let step = Body::Step { step: Step::Test, status: StepStatus::Running, error: None };
    let superseded = Input::Superseded { by: OTHER, sha: "abc".into() };
    let rows: Vec<(&str, Row, T, &str)> = vec![
        // claims
        ("first claim is granted", queued(1), R(mine(1, Body::Claimed)), "change running/1/a +grant"),
        ("repeated claim is granted again", running(1, false), R(mine(1, Body::Claimed)), "ignore +grant"),
        (
            "a second copy of the job on another runner is refused",
            running(1, false),
            R(env("b", OTHER, 1, Body::Claimed)),
            "reject the attempt is held by another claim (runner a) +stop-claim",
        ),
        (
            "a second copy on the same runner is refused too",
            running(1, false),
            R(env("a", OTHER, 1, Body::Claimed)),
            "reject the attempt is held by another claim (runner a) +stop-claim",
        ),
        (
            "a stale attempt's claim is refused",
            queued(2),
            R(mine(1, Body::Claimed)),
            "reject attempt 1 is stale; the current attempt is 2 +stop-claim",
        ),
        (
            "a late copy of a finished job is refused",
            finished(State::Completed),
            R(env("b", OTHER, 1, Body::Claimed)),
            "reject the deployment is completed +stop-claim",
        ),
        (
            "a cancelled deployment's job is refused",
            finished(State::Cancelled),
            R(env("b", OTHER, 1, Body::Claimed)),
            "reject the deployment is cancelled +stop-claim",
        ),
        // the holder's progress
        ("heartbeat refreshes the lease", running(1, false), R(mine(1, Body::Heartbeat)), "touch"),
        (
            "a heartbeat after a cancel repeats the stop",
            running(1, true),
            R(mine(1, Body::Heartbeat)),
            "touch +stop-claim",
        ),
        (
            "asking again before the deploy after a cancel is refused",
            running(1, true),
            R(mine(1, Body::Claimed)),
            "reject the deployment is being cancelled (by ann) +stop-claim",
        ),
        (
            "a heartbeat from another claim is refused",
            running(1, false),
            R(env("a", OTHER, 1, Body::Heartbeat)),
            "reject the attempt is held by another claim (runner a) +stop-claim",
        ),
        ("a step is recorded", running(1, false), R(mine(1, step.clone())), "change running/1/a"),
        (
            "a step after the end is refused",
            finished(State::Failed),
            R(mine(1, step)),
            "reject the deployment is failed +stop-claim",
        ),
        ("log lines are not decided here", running(1, false), R(mine(1, log)), "ignore"),
        ("completion", running(1, false), R(mine(1, completed.clone())), "change completed/1/a"),
        ("a duplicate completion changes nothing", finished(State::Completed), R(mine(1, completed.clone())), "ignore"),
        (
            "completion after a cancel request is reported truthfully",
            running(1, true),
            R(mine(1, completed)),
            "change completed/1/a",
        ),
        ("a user failure is final", running(1, false), R(mine(1, failed(Cause::User))), "change failed/1/a"),
        (
            "an infrastructure failure is retried as the next attempt",
            running(1, false),
            R(mine(1, failed(Cause::Infrastructure))),
            "change queued/2",
        ),
        (
            "the last attempt's infrastructure failure is final",
            running(3, false),
            R(mine(3, failed(Cause::Infrastructure))),
            "change failed/3/a",
        ),
        (
            "a failure after a cancel request is not retried",
            running(1, true),
            R(mine(1, failed(Cause::Infrastructure))),
            "change failed/1/a",
        ),
        ("a hand-back is the next attempt", running(1, false), R(mine(1, abandoned.clone())), "change queued/2"),
        (
            "a hand-back counts toward the attempt cap",
            running(3, false),
            R(mine(3, abandoned.clone())),
            "change failed/3/a",
        ),
        (
            "stopping after a cancel request ends cancelled",
            running(1, true),
            R(mine(1, abandoned)),
            "change cancelled/1/a",
        ),
        (
            "a push that changed no watched file ends cancelled",
            running(1, false),
            R(mine(1, skipped.clone())),
            "change cancelled/1/a",
        ),
        (
            "a skip after a cancel request ends cancelled too",
            running(1, true),
            R(mine(1, skipped.clone())),
            "change cancelled/1/a",
        ),
        ("a late copy of the skip changes nothing", finished(State::Cancelled), R(mine(1, skipped.clone())), "ignore"),
        (
            "a skip from another claim is refused",
            running(1, false),
            R(env("b", OTHER, 1, skipped.clone())),
            "reject the attempt is held by another claim (runner a) +stop-claim",
        ),
        (
            "a stale attempt's skip is refused",
            running(2, false),
            R(mine(1, skipped)),
            "reject attempt 1 is stale; the current attempt is 2 +stop-claim",
        ),
        // lease
        ("an expired lease is retried", running(1, false), I(Input::LeaseExpired), "change queued/2 +stop-claim"),
        ("an expired last lease fails", running(3, false), I(Input::LeaseExpired), "change failed/3/a +stop-claim"),
        (
            "an expired lease after a cancel request ends cancelled",
            running(1, true),
            I(Input::LeaseExpired),
            "change cancelled/1/a +stop-claim",
        ),
        ("only running rows expire", queued(1), I(Input::LeaseExpired), "reject the deployment is queued, not running"),
        // cancel
        ("cancel of a queued deployment is immediate", queued(1), I(cancel_request()), "change cancelled/1"),
        (
            "cancel of a running deployment asks the holder",
            running(1, false),
            I(cancel_request()),
            "change running/1/a +stop-claim",
        ),
        ("a second cancel changes nothing", running(1, true), I(cancel_request()), "ignore"),
        (
            "cancel of a finished deployment",
            finished(State::Completed),
            I(cancel_request()),
            "reject the deployment is completed",
        ),
        (
            "cancel of a failed deployment",
            finished(State::Failed),
            I(cancel_request()),
            "reject the deployment is failed",
        ),
        // supersede
        ("a queued deployment is superseded", queued(2), I(superseded.clone()), "change cancelled/2"),
        (
            "a running deployment is never superseded",
            running(1, false),
            I(superseded.clone()),
            "reject the deployment is running, not queued",
        ),
        (
            "a finished one neither",
            finished(State::Completed),
            I(superseded),
            "reject the deployment is completed, not queued",
        ),
    ];
    for (name, row, input, expected) in rows {
        let decision = match &input {
            R(env) => decide(&row, &Input::Runner(env), p, now()),
            I(input) => decide(&row, input, p, now()),
        };
        assert_eq!(summary(&decision), expected, "{name}");
    }
}

#[test]
fn retries_wait_by_attempt_and_keep_the_failure_for_display() {
    let p = Policy { max_attempts: 3 };
    let body = Body::Failed {
        step: Step::Push,
        cause: Cause::Infrastructure,
        message: "registry down".into(),
        rolled_back: false,
    };
    let Decision::Change { next, note, .. } = decide(&running(2, false), &Input::Runner(&mine(2, body)), p, now())
    else {
        panic!("expected a change");
    };
    let Phase::Queued { not_before, last_failure } = next.phase else { panic!("expected queued") };
    assert_eq!(not_before, Some(now() + chrono::Duration::seconds(10)));
    assert_eq!(last_failure.map(|f| f.message), Some("registry down".into()));
    assert_eq!(note.state, State::Queued);
    assert_eq!(note.attempt, 3);
}

#[test]
fn completion_forgets_an_earlier_attempts_failure() {
    let mut r = running(2, false);
    r.phase = Phase::Running { step: None, cancel: None, last_failure: Some(failure(Cause::Infrastructure)) };
    let body = Body::Completed { image: "i".into(), url: None };
    let Decision::Change { next, .. } = decide(&r, &Input::Runner(&mine(2, body)), Policy { max_attempts: 3 }, now())
    else {
        panic!("expected a change");
    };
    assert_eq!(next.phase, Phase::Completed { image: "i".into(), url: None, cancel: None });
}

#[test]
fn a_cancelled_deployment_names_who_and_why() {
    let Decision::Change { next, note, .. } = decide(&queued(1), &cancel_request(), Policy { max_attempts: 3 }, now())
    else {
        panic!("expected a change");
    };
    let Phase::Cancelled { cancel, .. } = next.phase else { panic!("expected cancelled") };
    assert_eq!(cancel, CancelRequest { by: "bob".into(), reason: "not now".into() });
    assert_eq!(note.message.as_deref(), Some("cancelled by bob: not now"));
}

#[test]
fn grants_and_stops_name_the_claim() {
    let d = decide(&queued(1), &Input::Runner(&mine(1, Body::Claimed)), Policy { max_attempts: 3 }, now());
    let Decision::Change { control: Some(Control::Grant { claim, runner_id, attempt, .. }), .. } = d else {
        panic!("expected a grant: {d:?}");
    };
    assert_eq!((claim, runner_id.as_str(), attempt), (MINE, "a", 1));
    let d = decide(&running(1, false), &Input::LeaseExpired, Policy { max_attempts: 3 }, now());
    let Decision::Change { control: Some(Control::Cancel { claim, attempt, .. }), .. } = d else {
        panic!("expected a stop: {d:?}");
    };
    assert_eq!((claim, attempt), (Some(MINE), 1));
}

#[test]
fn a_cancel_that_came_too_late_stays_on_record() {
    let p = Policy { max_attempts: 3 };
    let body = Body::Completed { image: "i".into(), url: None };
    let Decision::Change { next, .. } = decide(&running(1, true), &Input::Runner(&mine(1, body)), p, now()) else {
        panic!("expected a change");
    };
    let Phase::Completed { cancel: Some(cancel), .. } = next.phase else {
        panic!("expected completed with the request")
    };
    assert_eq!(cancel.by, "ann");
    let body =
        Body::Failed { step: Step::Deploy, cause: Cause::Infrastructure, message: "x".into(), rolled_back: false };
    let Decision::Change { next, .. } = decide(&running(1, true), &Input::Runner(&mine(1, body)), p, now()) else {
        panic!("expected a change");
    };
    assert!(matches!(next.phase, Phase::Failed { cancel: Some(_), .. }), "{next:?}");
}

#[test]
fn a_skipped_push_is_cancelled_by_slipway_with_the_reason() {
    let p = Policy { max_attempts: 3 };
    let body = Body::Skipped { reason: "no changed file matches the watch paths (api/**); 2 files changed".into() };
    let Decision::Change { next, note, .. } =
        decide(&running(1, false), &Input::Runner(&mine(1, body.clone())), p, now())
    else {
        panic!("expected a change");
    };
    let Phase::Cancelled { cancel, .. } = &next.phase else { panic!("expected cancelled: {next:?}") };
    assert_eq!(cancel.by, "slipway");
    assert_eq!(cancel.reason, "skipped: no changed file matches the watch paths (api/**); 2 files changed");
    assert!(note.message.as_deref().is_some_and(|m| m.contains("skipped: no changed file")), "{note:?}");
    // A person's cancel asked for before the skip is what is recorded.
    let Decision::Change { next, .. } = decide(&running(1, true), &Input::Runner(&mine(1, body)), p, now()) else {
        panic!("expected a change");
    };
    assert!(matches!(next.phase, Phase::Cancelled { ref cancel, .. } if cancel.by == "ann"), "{next:?}");
}
