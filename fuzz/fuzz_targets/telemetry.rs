//! The telemetry listener's handling of one delivery (`telemetry::handle`) and the state it
//! feeds: the finished invocations, the end of INIT, a restore, and the tenancy of a
//! tenant-scoped allowlist (`db=tenants/{tenant}/db`).
//!
//! Input: a flag byte, then (unless bit 0) a request-target line, then the body: a batch of
//! telemetry events as Lambda sends it. Flags: bit 0 delivers to the subscription's secret path
//! (else to the input's target); bit 1 uses a method other than POST; bit 2 names invocation
//! `8f0e7c1a-1b2c-4d5e-9f00-112233445566` as the one being served before the delivery.
//!
//! Checked besides "never panics": nothing is believed without the secret path and POST (no
//! request marked done, no INIT end, no restore, no tenant kept, and a 4xx answer); whatever a
//! batch says, memory stays bounded (at most 64 finished ids of at most 64 bytes, at most 10
//! ids and tenant texts in the tenancy, none over 64 bytes); a restore is believed only after
//! the end of INIT; a tenant is decided only for the invocation being served, and only a valid
//! tenant id.

#![no_main]

use bytes::Bytes;
use http::Method;
use libfuzzer_sys::fuzz_target;
use scoped_secrets::domain::tenant::TenantId;
use scoped_secrets::fuzzing::Telemetry;

const SERVING: &str = "8f0e7c1a-1b2c-4d5e-9f00-112233445566";

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static TELEMETRY: Telemetry = Telemetry::new();
    }
    let Some((&flags, rest)) = data.split_first() else { return };
    let secret_path = flags & 1 != 0;
    let post = flags & 2 == 0;
    let serving = (flags & 4 != 0).then_some(SERVING);
    let method = if post {
        Method::POST
    } else {
        [Method::GET, Method::PUT, Method::DELETE][usize::from(flags >> 3) % 3].clone()
    };
    TELEMETRY.with(|telemetry| {
        let (target, body) = if secret_path {
            (telemetry.path().to_owned(), rest)
        } else {
            let (line, body) = match rest.iter().position(|b| *b == b'\n') {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &[][..]),
            };
            (String::from_utf8_lossy(line).into_owned(), body)
        };
        let believed_path = target == telemetry.path();
        let delivered = telemetry.deliver(serving, method, &target, Bytes::copy_from_slice(body));
        if delivered.status == 0 {
            return; // not a request target http accepts
        }
        if !believed_path || !post {
            assert!((400..500).contains(&delivered.status), "{}", delivered.status);
            assert_eq!(delivered.completions, 0, "a request marked done without the secret path");
            assert!(!delivered.init_done && !delivered.restore_started);
            assert_eq!(delivered.tenant, None, "a tenant recorded without the secret path");
            assert_eq!(delivered.tenancy_kept, usize::from(serving.is_some()), "kept without the secret path");
        }
        assert!(delivered.completions <= 64 && delivered.longest_completion <= 64, "{delivered:?}");
        assert!(delivered.tenancy_kept <= 10 && delivered.longest_tenancy_text <= 64, "{delivered:?}");
        assert!(!delivered.restore_started || delivered.init_done, "a restore before the end of INIT");
        if let Some(tenant) = &delivered.tenant {
            assert!(serving.is_some(), "a tenant decided for no invocation being served");
            assert!(TenantId::parse(tenant).is_ok(), "an invalid tenant id was decided");
        }
    });
});
