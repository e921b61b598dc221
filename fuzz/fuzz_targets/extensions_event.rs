//! The Extensions API's `/event/next` decoder (`extensions_api::Event`, through the same
//! `decode_event` the lifecycle calls).
//!
//! Input: the answer's body, as Lambda would send it (an INVOKE or SHUTDOWN event, JSON).
//! Checked besides "never panics": what is decoded is bounded (an INVOKE's request id is 1 to
//! 64 of `A-Z a-z 0-9 - _`, whatever the input held); a refusal's text is the fixed sentence,
//! never the input; decoding is deterministic, and an event written back out as Lambda writes
//! it decodes to the same event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scoped_secrets::domain::request_id::is_request_id;
use scoped_secrets::extensions_api::{Event, ShutdownReason};
use scoped_secrets::fuzzing::decode_event;

fuzz_target!(|data: &[u8]| {
    let decoded = decode_event(data);
    match &decoded {
        Ok(Event::Invoke { request_id, deadline_ms }) => {
            assert!(is_request_id(request_id) && request_id.len() <= 64, "{:.80}", request_id);
            let again = format!(r#"{{"eventType":"INVOKE","requestId":"{request_id}","deadlineMs":{deadline_ms}}}"#);
            assert_eq!(decode_event(again.as_bytes()).ok().as_ref(), decoded.as_ref().ok());
        }
        Ok(Event::Shutdown { shutdown_reason, deadline_ms }) => {
            let reason = match shutdown_reason {
                ShutdownReason::Spindown => "spindown",
                ShutdownReason::Timeout => "timeout",
                ShutdownReason::Failure => "failure",
                ShutdownReason::Other => "something-newer",
            };
            let again = format!(r#"{{"eventType":"SHUTDOWN","shutdownReason":"{reason}","deadlineMs":{deadline_ms}}}"#);
            assert_eq!(decode_event(again.as_bytes()).ok().as_ref(), decoded.as_ref().ok());
        }
        Err(error) => {
            assert_eq!(error.to_string(), "the Lambda API's answer to event/next was malformed");
        }
    }
    assert_eq!(decode_event(data).ok(), decoded.ok(), "decoding is deterministic");
});
