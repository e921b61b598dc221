use super::*;

/// A body whose bytes never come.
struct Never;

impl Body for Never {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_is_bounded_in_size_and_in_time() {
    let small = read_body(Full::new(Bytes::from_static(b"{}"))).await.map(|b| b.to_vec());
    assert_eq!(small, Ok(b"{}".to_vec()));
    let large = read_body(Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]))).await.map(|b| b.to_vec());
    assert_eq!(large, Err(Code::BodyTooLarge));
    let started = tokio::time::Instant::now();
    assert_eq!(read_body(Never).await.map(|b| b.to_vec()), Err(Code::BodyTimeout));
    assert_eq!(started.elapsed(), BODY_TIMEOUT);
}

#[test]
fn versions_map_like_aws_and_malformed_ones_are_refused() {
    assert_eq!(version_of(None, None).ok(), Some((Version::Current, None)));
    assert_eq!(version_of(None, Some("AWSCURRENT".into())).ok(), Some((Version::Current, None)));
    assert_eq!(version_of(None, Some("AWSPREVIOUS".into())).ok(), Some((Version::Stage("AWSPREVIOUS".into()), None)));
    assert_eq!(version_of(Some("a-1".into()), None).ok(), Some((Version::Id("a-1".into()), None)));
    assert_eq!(
        version_of(Some("a-1".into()), Some("AWSPREVIOUS".into())).ok(),
        Some((Version::Id("a-1".into()), Some("AWSPREVIOUS".into()))),
        "both: by id, and the stage checked against the answer"
    );
    assert!(version_of(Some("a/b".into()), None).is_err());
    assert!(version_of(None, Some(String::new())).is_err());
}

#[test]
fn every_read_failure_has_an_sdk_error_type() {
    use crate::domain::error::ReadError;
    let cases = [
        (ReadError::NotAllowed, "AccessDeniedException", 400),
        (ReadError::NotFound, "ResourceNotFoundException", 400),
        (ReadError::AccessDenied { code: "x".into() }, "AccessDeniedException", 400),
        (ReadError::Throttled, "ThrottlingException", 400),
        (ReadError::UpstreamTimeout, "InternalServiceError", 500),
        (ReadError::NoActiveInvocation, "InternalServiceError", 500),
        (ReadError::SnapStartInit, "ServiceUnavailableException", 503),
    ];
    for (error, kind, status) in cases {
        let (actual_status, actual_kind) = sdk_form(error.code());
        assert_eq!((actual_kind, actual_status.as_u16()), (kind, status), "{error:?}");
    }
    for &code in Code::ALL {
        let (status, kind) = sdk_form(code);
        assert!(status.is_client_error() || status.is_server_error(), "{code:?}");
        assert!(kind.ends_with("Exception") || kind == "InternalServiceError", "{code:?}: {kind}");
    }
}
