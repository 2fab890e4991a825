//! MCP over streamable HTTP, for `heph serve --mcp`: a router the control API mounts
//! behind its bearer token check.

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::Heph;

/// Where the MCP endpoint is mounted.
pub const MCP_PATH: &str = "/mcp";

/// The MCP endpoint at [`MCP_PATH`]: every session is a clone of `server` (so writes
/// of all sessions share one queue). `public`: accept any `Host` header (the address
/// is not loopback; the token still guards every request), else loopback hosts only.
/// [`Heph::stop_token`] ends every session.
pub fn router<S: Clone + Send + Sync + 'static>(server: Heph, public: bool) -> axum::Router<S> {
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(server.stop_token().child_token());
    if public {
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    axum::Router::new().nest_service(MCP_PATH, service)
}
