//! The gRPC admin API: the only module that knows protobuf.
//!
//! Serves `dunningd.v1.Admin`, server reflection and `grpc.health.v1` on the
//! Unix socket (access is the socket file's permissions: owner and group) and,
//! when configured, on TCP, where every call must carry
//! `authorization: Bearer <token>`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::config::AdminConfig;
use crate::daemon::Shared;
use crate::proto::admin_server::AdminServer;

mod convert;
mod service;

pub use service::AdminService;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket '{path}': {message}")]
    Socket { path: String, message: String },
    #[error("admin TCP listener '{addr}': {message}")]
    Tcp { addr: String, message: String },
    #[error("admin token file '{path}': {message}")]
    Token { path: String, message: String },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("admin API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the listeners (so the caller knows the API is reachable once this
/// returns) and returns a future that serves until `stop` turns true.
pub async fn bind(
    shared: Arc<Shared>,
    config: &AdminConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<(), AdminError>> + Send + 'static, AdminError> {
    let socket = config.socket.clone();
    let socket_error = |message: String| AdminError::Socket {
        path: socket.display().to_string(),
        message,
    };
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| socket_error(format!("cannot create its folder: {e}")))?;
    }
    // A socket file left by a previous run would make bind fail.
    if socket.exists() {
        std::fs::remove_file(&socket)
            .map_err(|e| socket_error(format!("cannot remove the stale socket: {e}")))?;
    }
    let unix = UnixListener::bind(&socket).map_err(|e| socket_error(e.to_string()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| socket_error(format!("cannot set permissions: {e}")))?;

    let tcp = match &config.tcp {
        None => None,
        Some(addr) => {
            let token_path = config.token_file.clone().unwrap_or_default();
            let token = std::fs::read_to_string(&token_path)
                .map_err(|e| AdminError::Token {
                    path: token_path.display().to_string(),
                    message: e.to_string(),
                })?
                .trim()
                .to_string();
            if token.len() < 16 {
                return Err(AdminError::Token {
                    path: token_path.display().to_string(),
                    message: "the token must be at least 16 characters".into(),
                });
            }
            let listener = TcpListener::bind(addr).await.map_err(|e| AdminError::Tcp {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
            Some((listener, token))
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| AdminError::Reflection(e.to_string()))?;
    let service = AdminService::new(shared);

    let unix_server = {
        let mut stop = stop.clone();
        Server::builder()
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(AdminServer::new(service.clone()))
            .serve_with_incoming_shutdown(UnixListenerStream::new(unix), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
    };
    let tcp_server = tcp.map(|(listener, token)| {
        let expected = format!("Bearer {token}");
        let check =
            move |request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
                let given = request
                    .metadata()
                    .get("authorization")
                    .map(|v| v.as_bytes())
                    .unwrap_or(b"");
                if constant_time_eq(given, expected.as_bytes()) {
                    Ok(request)
                } else {
                    Err(tonic::Status::unauthenticated(
                        "missing or wrong bearer token",
                    ))
                }
            };
        Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(
                health_service,
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                reflection,
                check.clone(),
            ))
            .add_service(AdminServer::with_interceptor(service, check))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
    });
    Ok(async move {
        match tcp_server {
            None => unix_server.await?,
            Some(tcp_server) => {
                let (unix, tcp) = tokio::join!(unix_server, tcp_server);
                unix?;
                tcp?;
            }
        }
        let _ = std::fs::remove_file(&socket);
        Ok(())
    })
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
