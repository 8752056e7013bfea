//! What a departed client does to its request: the per-route [`DisconnectPolicy`].

/// What happens to a request when its client disconnects while the handler runs.
///
/// Set per route with [`DisconnectPolicyLayer`](crate::DisconnectPolicyLayer) (or for the
/// whole server with [`HttpServer::disconnect_policy`](crate::HttpServer::disconnect_policy)).
///
/// *Anchors:* ASP.NET Core always behaves like [`Cooperative`](Self::Cooperative)
/// (`HttpContext.RequestAborted` fires, the action runs on); Go's `net/http` too (the
/// request context is cancelled). axum on hyper behaves like [`Drop`](Self::Drop) on
/// HTTP/2 and, on HTTP/1, drops the handler once hyper notices the closed socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DisconnectPolicy {
    /// The request token fires with [`Disconnected`](gracefully::ReasonKind::Disconnected);
    /// the handler keeps running to its end, so its cleanup runs, and it stays tracked for
    /// shutdown. The default.
    #[default]
    Cooperative,
    /// The handler's future is dropped at once (axum's usual behaviour). Cleanup that needs
    /// to `.await` does not run.
    Drop,
    /// Nothing happens: the token does not fire, and the handler runs to completion. For
    /// work that must finish even if nobody reads the answer (a payment, a write the client
    /// will retry idempotently).
    Detached,
}

impl DisconnectPolicy {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            DisconnectPolicy::Cooperative => 0,
            DisconnectPolicy::Drop => 1,
            DisconnectPolicy::Detached => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => DisconnectPolicy::Drop,
            2 => DisconnectPolicy::Detached,
            _ => DisconnectPolicy::Cooperative,
        }
    }
}
