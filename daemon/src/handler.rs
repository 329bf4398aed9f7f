//! How the daemon serves a protocol method: each method type of
//! `latchkey_client::protocol` implements [`Handler`] in the module that
//! owns its verb, and `dispatch` routes to it by name. Adding a method is:
//! its type in `client/`, its `impl Handler` here in the daemon, one CLI file.

use crate::error::ApiError;
use crate::state::{Daemon, Peer};
use latchkey_client::framing::SecretBuf;
use latchkey_client::protocol::Method;
use std::borrow::Borrow;
use std::future::Future;
use std::sync::Arc;

/// A protocol method the daemon serves.
pub trait Handler: Method {
    /// What `handle` returns: the method's result, or something that
    /// serializes as it without a copy (a cached token).
    type Reply: Borrow<Self::Result>;

    /// Runs the method for `peer`. Parameters are already parsed; the
    /// error is what the caller is told.
    fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: Self::Params,
    ) -> impl Future<Output = Result<Self::Reply, ApiError>> + Send;

    /// Writes `reply` as the JSON of the method's result into `out` (the
    /// reply line). By default it serializes [`Method::Result`]; a reply
    /// that keeps its serialized form (a cached token) copies it instead.
    fn write_result(reply: &Self::Reply, out: &mut SecretBuf) -> serde_json::Result<()> {
        serde_json::to_writer(out, reply.borrow())
    }
}
