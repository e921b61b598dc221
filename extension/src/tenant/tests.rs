use super::*;
use crate::domain::arn::RoleArn;
use std::time::Duration;

fn tenancy(list: &str) -> Tenancy {
    let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
    Tenancy::new(Allowlist::parse(list, &role, "us-east-1").expect("valid"), CancellationToken::new())
}

fn after(millis: u64) -> Instant {
    Instant::now() + Duration::from_millis(millis)
}

#[tokio::test(start_paused = true)]
async fn the_first_tenant_resolves_the_allowlist_and_a_second_breaks_it() {
    let tenancy = tenancy("db=tenants/{tenant}/db,shared/config");
    assert!(tenancy.is_scoped());
    assert!(tenancy.current().is_none());
    let waited = tenancy.allowlist(after(50)).await;
    assert!(matches!(waited, Err(ReadError::TenantUnknown)));

    assert_eq!(tenancy.serve("r1"), None);
    assert_eq!(tenancy.observe("blue", "r1"), Observed::First(TenantId::parse("blue").expect("valid")));
    assert_eq!(tenancy.observe("blue", "r1"), Observed::Same);
    tenancy.wait_confirmed("r1", after(0)).await.expect("r1 named blue");
    let allowlist = tenancy.allowlist(after(50)).await.expect("known");
    assert_eq!(allowlist.find("db"), Some(0));
    assert_eq!(allowlist.find("tenants/blue/db"), Some(0));
    assert_eq!(allowlist.find("tenants/red/db"), None);
    assert_eq!(allowlist.find("tenants/{tenant}/db"), None);
    assert_eq!(allowlist.find("shared/config"), Some(1));

    tenancy.serve("r2");
    let unconfirmed = tenancy.wait_confirmed("r2", after(50)).await;
    assert!(matches!(unconfirmed, Err(ReadError::TenantUnknown)), "r2's platform.start has not come");
    let tenancy = Arc::new(tenancy);
    let waiter = {
        let tenancy = Arc::clone(&tenancy);
        tokio::spawn(async move { tenancy.wait_confirmed("r2", after(5_000)).await })
    };
    tokio::task::yield_now().await;
    assert_eq!(tenancy.observe("red", "r2"), Observed::Changed);
    let waited = waiter.await.expect("joined");
    assert!(matches!(waited, Err(ReadError::TenantChanged)), "the red invocation is never confirmed");
    assert!(tenancy.broken.is_cancelled(), "the lifecycle is told");
    assert!(tenancy.current().is_none());
    assert_eq!(tenancy.tenant().map(TenantId::as_str), Some("blue"), "the environment's tenant stays on record");
    assert!(matches!(tenancy.allowlist(after(0)).await, Err(ReadError::TenantChanged)));
}

#[tokio::test(start_paused = true)]
async fn only_the_invocation_being_served_can_name_the_tenant() {
    let tenancy = tenancy("tenants/{tenant}/db");
    // During INIT: a record naming the init label, or any id, decides nothing.
    assert_eq!(tenancy.observe("red", "init"), Observed::Pending);
    assert_eq!(tenancy.observe("red", "someone-else"), Observed::Pending);
    assert!(tenancy.current().is_none());
    assert!(matches!(tenancy.wait_confirmed("init", after(5_000)).await, Err(ReadError::TenantUnknown)));
    // A record that came before its INVOKE is decided when the INVOKE names it.
    assert_eq!(tenancy.observe("blue", "r1"), Observed::Pending);
    assert_eq!(tenancy.serve("r1"), Some(Observed::First(TenantId::parse("blue").expect("valid"))));
    tenancy.wait_confirmed("r1", after(0)).await.expect("confirmed");
    // Confirmation is for the serving invocation only: the init label never.
    let started = Instant::now();
    assert!(matches!(tenancy.wait_confirmed("init", after(5_000)).await, Err(ReadError::TenantUnknown)));
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once, not after a wait");
    // A record for an id nobody serves changes nothing, whatever it names.
    assert_eq!(tenancy.observe("red", "r0"), Observed::Pending);
    assert_eq!(tenancy.observe("red", "not a request id"), Observed::Ignored);
    assert_eq!(tenancy.observe("red", &"x".repeat(1 << 20)), Observed::Ignored);
    assert!(!tenancy.broken.is_cancelled());
    tenancy.wait_confirmed("r1", after(0)).await.expect("still confirmed");
}

#[tokio::test(start_paused = true)]
async fn ids_are_bounded_before_they_are_kept() {
    let tenancy = tenancy("tenants/{tenant}/db");
    let huge = "b".repeat(1 << 20);
    for index in 0..100 {
        tenancy.observe(&huge, &format!("forged-{index}"));
    }
    {
        let books = tenancy.books();
        assert_eq!(books.early.len(), EARLY, "the newest few only");
        assert!(books.early.iter().all(|(_, candidate, _)| *candidate == Candidate::TooLong(1 << 20)));
    }
    tenancy.serve("forged-99");
    assert!(matches!(tenancy.allowlist(after(0)).await, Err(ReadError::TenantRefused)));
    assert!(matches!(tenancy.books().first, Some(Candidate::TooLong(_))), "no more than its length kept");
}

#[tokio::test(start_paused = true)]
async fn a_hostile_first_tenant_resolves_nothing() {
    let tenancy = tenancy("tenants/{tenant}/db");
    tenancy.serve("r1");
    assert!(matches!(tenancy.observe("../x", "r1"), Observed::Refused(_)));
    assert!(matches!(tenancy.allowlist(after(5_000)).await, Err(ReadError::TenantRefused)));
    assert!(matches!(tenancy.wait_confirmed("r1", after(5_000)).await, Err(ReadError::TenantRefused)));
    assert_eq!(tenancy.observe("../x", "r1"), Observed::Same);
    assert_eq!(tenancy.observe("blue", "r1"), Observed::Changed);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_id_equal_to_an_alias_is_refused() {
    let tenancy = tenancy("db=app/db,{tenant}");
    tenancy.serve("r1");
    assert!(matches!(tenancy.observe("db", "r1"), Observed::Refused(_)), "`db` would answer to two secrets");
    assert!(matches!(tenancy.allowlist(after(0)).await, Err(ReadError::TenantRefused)));
    let other = self::tenancy("db=app/db,{tenant}");
    other.serve("r1");
    assert!(matches!(other.observe("blue", "r1"), Observed::First(_)));
    let allowlist = other.allowlist(after(0)).await.expect("known");
    assert_eq!((allowlist.find("db"), allowlist.find("blue")), (Some(0), Some(1)));
}

#[test]
fn a_tenant_header_is_cut_after_it_is_decoded() {
    let max = 65;
    // 65 bytes that are not UTF-8 decode to 65 replacement characters, 195 bytes.
    let invalid = [0xffu8; 200];
    let text = header_text(&invalid, max);
    assert!(text.len() <= max, "{} bytes kept", text.len());
    assert_eq!(text, "\u{fffd}".repeat(21));
    assert_eq!(header_text(b"blue", max), "blue");
    assert_eq!(header_text("é".repeat(40).as_bytes(), max), "é".repeat(32), "cut at a character boundary");
    assert_eq!(header_text(&[b'a'; 100], max), "a".repeat(65));
    assert_eq!(header_text(b"", max), "");
}

#[tokio::test(start_paused = true)]
async fn without_placeholders_the_allowlist_needs_no_tenant() {
    let tenancy = tenancy("app/db");
    assert!(!tenancy.is_scoped());
    assert_eq!(tenancy.allowlist(after(0)).await.expect("as configured").find("app/db"), Some(0));
}
