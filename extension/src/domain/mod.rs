//! The crate's leaf vocabulary: the words every other module speaks, and nothing that acts.
//!
//! Nothing here imports from the rest of the crate, so anything may import from here and the
//! crate's imports run one way (protocols → read path → store, sessions, lifecycle → domain):
//! - [`code`]: every stable error code a local caller can receive, with its sentence;
//! - [`error`]: why a read failed ([`error::ReadError`]) and why a session could not be had
//!   ([`error::SessionError`]), each with the one [`code::Code`] both protocols map from;
//! - [`arn`]: the scoped role's ARN; [`tenant`]: tenant ids and the `{tenant}` syntax;
//! - [`api`]: which face of the local API a request came through; [`version`]: which version
//!   of a secret it asks for; [`parameter`]: parameter names, their ARNs and versions;
//! - [`item`]: the two kinds of item (secrets, parameters) and what a read of each asks for;
//! - [`session_name`]: `RoleSessionName`s as STS accepts them; [`request_id`]: invocation
//!   request ids, checked before they become a key, a label or part of a session name;
//! - [`time`]: the one civil-date algorithm, its formats and parsers; [`text`]: decoding and
//!   bounding caller text before it is matched or logged.

pub mod api;
pub mod arn;
pub mod code;
pub mod error;
pub mod item;
pub mod parameter;
pub mod request_id;
pub mod session_name;
pub mod tenant;
pub mod text;
pub mod time;
pub mod version;
