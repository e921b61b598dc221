//! The local API's fast lane (`crate::http::fast`) for the `lane_head` fuzz target.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Request};

/// What the local API's fast lane made of the bytes at the start of a connection's buffer.
#[derive(Debug)]
pub enum LaneHead {
    /// Not a whole head yet: the buffer is left as it was.
    Partial,
    /// hyper's (see `crate::http::fast`): the buffer is left as it was.
    Hypers,
    /// A head the lane answers: its bytes, taken from the start of the buffer, and its request.
    Ours(Bytes, Box<Request<http_body_util::Empty<Bytes>>>),
}

/// The fast lane reading one connection: what it keeps from one head to the next (the last
/// target) is kept here between calls.
#[derive(Debug)]
pub struct Lane(crate::http::fast::Kept);

impl Default for Lane {
    fn default() -> Self {
        Self(crate::http::fast::Kept::new())
    }
}

impl Lane {
    /// The lane's parse of `buffer`'s first head.
    pub fn head(&mut self, buffer: &mut BytesMut) -> LaneHead {
        let names = [HeaderName::from_static(crate::local_api::get::TOKEN_HEADER)];
        match crate::http::fast::parse(buffer, HeaderMap::new(), &mut self.0, &names) {
            crate::http::fast::Parsed::Partial => LaneHead::Partial,
            crate::http::fast::Parsed::NotOurs => LaneHead::Hypers,
            crate::http::fast::Parsed::Request(head, request) => LaneHead::Ours(head, Box::new(request)),
        }
    }
}
