//! The gRPC admin API: the only module that knows protobuf.
//!
//! Serves `dunningd.v1.Admin`, server reflection (v1 and v1alpha) and
//! `grpc.health.v1` on the Unix socket (access is the socket file's
//! permissions: owner and group) and, when configured, on TCP, where every
//! call, health and reflection included, must carry
//! `authorization: Bearer <token>` unless mutual TLS authenticates the
//! client instead.
//!
//! The Unix socket accepts any `:authority`: stock gRPC clients send the
//! socket path there, which is no valid HTTP authority (the vendored h2 in
//! `vendor/h2` ignores it instead of resetting the stream).
//!
//! Invariants: protobuf types never leave this module (conversion is in
//! `convert`); every request field is validated here before the engine sees
//! it; a bad request changes nothing; plain TCP listens on a non-loopback
//! address only when the configuration says `allow_plaintext`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{AdminConfig, AdminTls};
use crate::proto::admin_server::AdminServer;
use crate::state::Shared;

mod convert;
mod service;

pub use service::AdminService;

/// The fully qualified name health checks ask about.
pub const SERVICE_NAME: &str = "dunningd.v1.Admin";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket '{path}': {message}")]
    Socket { path: String, message: String },
    #[error("admin TCP listener '{addr}': {message}")]
    Tcp { addr: String, message: String },
    #[error("admin token file '{path}': {message}")]
    Token { path: String, message: String },
    #[error(
        "admin.tcp: a TCP listener needs admin.token_file (a bearer token clients must send) or mutual TLS (admin.tls.client_ca_file)"
    )]
    NoToken,
    #[error("admin.tls: '{path}': {message}")]
    TlsFile { path: String, message: String },
    #[error("admin.tls: {0}")]
    Tls(String),
    #[error(
        "admin.tcp '{addr}': refusing plain TCP on a non-loopback address (the bearer token and all data would cross the network unencrypted): configure admin.tls, listen on 127.0.0.1, or set admin.allow_plaintext: true"
    )]
    Plaintext { addr: String },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("admin API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What `grpc.health.v1` answers, for the daemon to change while it runs
/// (e.g. NOT_SERVING while the database is unreachable). Cheap to clone.
#[derive(Clone)]
pub struct Health(HealthReporter);

impl Health {
    /// Sets both the whole server (`""`) and `dunningd.v1.Admin`.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.0.set_service_status("", status).await;
        self.0.set_service_status(SERVICE_NAME, status).await;
    }
}

/// The future that serves the API until the stop signal, then drains.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), AdminError>> + Send + 'static>>;

/// Bound listeners: serve them by awaiting (or spawning) `serve`.
pub struct Listening {
    /// Health status, SERVING from the start.
    pub health: Health,
    pub serve: Serving,
}

/// Binds the listeners (so the caller knows the API is reachable once this
/// returns) and returns a future that serves until `stop` turns true.
pub async fn bind(
    shared: Arc<Shared>,
    config: &AdminConfig,
    stop: watch::Receiver<bool>,
) -> Result<Serving, AdminError> {
    Ok(listen(shared, config, stop).await?.serve)
}

/// Like [`bind`], and also hands out the health handle. Health turns
/// NOT_SERVING by itself when `stop` turns true.
pub async fn listen(
    shared: Arc<Shared>,
    config: &AdminConfig,
    stop: watch::Receiver<bool>,
) -> Result<Listening, AdminError> {
    let socket = config.socket.clone();
    let unix = bind_socket(&socket)?;

    let tcp = match &config.tcp {
        None => None,
        Some(addr) => {
            let token = tcp_token(config)?;
            let tls = config.tls.as_ref().map(server_tls).transpose()?;
            let listener = TcpListener::bind(addr).await.map_err(|e| AdminError::Tcp {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
            check_plaintext(&listener, addr, config)?;
            // Checked here, not per connection: a bad certificate or key
            // stops the start instead of failing every handshake.
            let mut builder = Server::builder();
            if let Some(tls) = tls {
                builder = builder
                    .tls_config(tls)
                    .map_err(|e| AdminError::Tls(root_cause(&e)))?;
            }
            Some((builder, listener, token))
        }
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health(reporter);
    health.set_serving(true).await;
    let (reflection, reflection_alpha) = reflection()?;
    let service = AdminService::new(shared);

    // Both listeners stop on the same signal; health says NOT_SERVING first,
    // so a client watching it moves away before connections close.
    let stopped = {
        let health = health.clone();
        move |mut stop: watch::Receiver<bool>| {
            let health = health.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
                health.set_serving(false).await;
            }
        }
    };

    let unix_server = Server::builder()
        .add_service(health_service.clone())
        .add_service(reflection.clone())
        .add_service(reflection_alpha.clone())
        .add_service(limited(AdminServer::new(service.clone())))
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stopped(stop.clone()));
    let tcp_server = tcp.map(|(mut builder, listener, token)| {
        let check = match &token {
            Some(token) => BearerCheck::new(token),
            None => BearerCheck::mutual_tls_only(),
        };
        builder
            .add_service(tonic::service::interceptor::InterceptedService::new(
                health_service,
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                reflection,
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                reflection_alpha,
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                limited(AdminServer::new(service)),
                check,
            ))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped(stop))
    });
    let serve = async move {
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
    };
    Ok(Listening {
        health,
        serve: Box::pin(serve),
    })
}

/// The admin service with the one message-size limit the client shares
/// (`config::ADMIN_MESSAGE_LIMIT`): what the daemon accepts, `dunningctl`
/// can be shown.
fn limited(server: AdminServer<AdminService>) -> AdminServer<AdminService> {
    server
        .max_decoding_message_size(crate::config::ADMIN_MESSAGE_LIMIT)
        .max_encoding_message_size(crate::config::ADMIN_MESSAGE_LIMIT)
}

/// Server reflection describing the Admin and health services, in both
/// protocol versions: older grpcurl and grpcui builds only speak v1alpha.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    AdminError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| AdminError::Reflection(e.to_string()))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| AdminError::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}

/// Creates the socket's folder, takes over a stale socket file, binds, and
/// limits access to owner and group.
fn bind_socket(socket: &Path) -> Result<UnixListener, AdminError> {
    let socket_error = |message: String| AdminError::Socket {
        path: socket.display().to_string(),
        message,
    };
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        // 0750: operators in the daemon's group reach the socket through it.
        crate::files::create_dir_all(parent, crate::files::GROUP_DIR)
            .map_err(|e| socket_error(format!("cannot create its folder: {e}")))?;
    }
    // A socket file left by a previous run would make bind fail; but one that
    // answers belongs to a running daemon, and anything else is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(socket_error(
                "exists and is not a socket; refusing to replace it".into(),
            ));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(socket_error(
                "another process is listening on it (is dunningd already running?)".into(),
            ));
        }
        std::fs::remove_file(socket)
            .map_err(|e| socket_error(format!("cannot remove the stale socket: {e}")))?;
    }
    let unix = UnixListener::bind(socket).map_err(|e| socket_error(e.to_string()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| socket_error(format!("cannot set permissions: {e}")))?;
    Ok(unix)
}

/// The TLS configuration of the TCP listener, from its PEM files.
fn server_tls(tls: &AdminTls) -> Result<ServerTlsConfig, AdminError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| AdminError::TlsFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let identity = Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        // A client certificate is then required: tonic's default, stated.
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    Ok(config)
}

/// Refuses plain TCP on a non-loopback address unless the configuration
/// allows it, and warns when it does. The bound address decides, so a host
/// name such as `localhost` counts as what it resolved to.
fn check_plaintext(
    listener: &TcpListener,
    addr: &str,
    config: &AdminConfig,
) -> Result<(), AdminError> {
    let local = listener.local_addr().map_err(|e| AdminError::Tcp {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    if config.tls.is_some() || local.ip().is_loopback() {
        return Ok(());
    }
    if !config.allow_plaintext {
        return Err(AdminError::Plaintext {
            addr: addr.to_string(),
        });
    }
    tracing::warn!(
        addr = %local,
        "admin API on plain TCP on a non-loopback address (admin.allow_plaintext): the bearer token and all data cross the network unencrypted"
    );
    Ok(())
}

/// The innermost error: rustls' "no private key found" says more than
/// tonic's wrapper.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

/// The shortest token accepted: guessing 16 random characters is hopeless.
const MIN_TOKEN_LEN: usize = 16;

/// The bearer token TCP clients must send; none only where mutual TLS
/// authenticates them instead.
fn tcp_token(config: &AdminConfig) -> Result<Option<String>, AdminError> {
    let mutual_tls = config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    match config.token_file.as_deref() {
        Some(path) => read_token(path).map(Some),
        None if mutual_tls => Ok(None),
        // Config::load refuses this already; a hand-built AdminConfig may not.
        None => Err(AdminError::NoToken),
    }
}

fn read_token(path: &Path) -> Result<String, AdminError> {
    let token_error = |message: String| AdminError::Token {
        path: path.display().to_string(),
        message,
    };
    let token = std::fs::read_to_string(path)
        .map_err(|e| token_error(e.to_string()))?
        .trim()
        .to_string();
    if token.len() < MIN_TOKEN_LEN {
        return Err(token_error(format!(
            "the token must be at least {MIN_TOKEN_LEN} characters"
        )));
    }
    Ok(token)
}

/// Requires `authorization: Bearer <token>` on every call.
#[derive(Clone)]
struct BearerCheck {
    /// SHA-256 of the whole expected header value: comparing digests of equal
    /// length reveals neither the token's bytes nor its length through timing.
    /// `None` only behind mutual TLS, where the handshake already refused
    /// every client without a certificate from the configured CA.
    expected: Option<[u8; 32]>,
}

impl BearerCheck {
    fn new(token: &str) -> BearerCheck {
        BearerCheck {
            expected: Some(Sha256::digest(format!("Bearer {token}")).into()),
        }
    }

    /// For a listener with mutual TLS and no token file.
    fn mutual_tls_only() -> BearerCheck {
        BearerCheck { expected: None }
    }

    fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let given: [u8; 32] = Sha256::digest(header.unwrap_or(b"")).into();
        constant_time_eq(&given, expected) && header.is_some()
    }
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if self.allows(header) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong bearer token",
            ))
        }
    }
}

/// Compares without an early exit, so timing does not reveal where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let check = BearerCheck::new("0123456789abcdef");
        let cases: &[(Option<&[u8]>, bool)] = &[
            (Some(b"Bearer 0123456789abcdef"), true),
            (Some(b"Bearer 0123456789abcdeF"), false),
            (Some(b"bearer 0123456789abcdef"), false),
            (Some(b"0123456789abcdef"), false),
            (Some(b"Bearer 0123456789abcdef "), false),
            (Some(b""), false),
            (None, false),
        ];
        for (header, allowed) in cases {
            assert_eq!(check.allows(*header), *allowed, "{header:?}");
        }
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn tokens_must_exist_and_be_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").expect("write");
        let good = dir.path().join("good");
        std::fs::write(&good, "  0123456789abcdef\n").expect("write");
        assert_eq!(read_token(&good).expect("good"), "0123456789abcdef");
        let e = read_token(&short).expect_err("short").to_string();
        assert!(e.contains("at least 16 characters"), "{e}");
        let e = read_token(&dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.starts_with("admin token file '"), "{e}");

        // No token file: refused, unless mutual TLS authenticates clients.
        let mut config = AdminConfig {
            socket: dir.path().join("admin.sock"),
            tcp: Some("127.0.0.1:0".into()),
            token_file: None,
            tls: None,
            allow_plaintext: false,
        };
        let e = tcp_token(&config).expect_err("none").to_string();
        assert!(e.contains("admin.token_file"), "{e}");
        let tls = AdminTls {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_ca_file: None,
        };
        config.tls = Some(tls.clone());
        assert!(
            tcp_token(&config).is_err(),
            "TLS alone does not authenticate clients"
        );
        config.tls = Some(AdminTls {
            client_ca_file: Some("ca".into()),
            ..tls
        });
        assert_eq!(tcp_token(&config).expect("mutual TLS"), None);
        assert!(BearerCheck::mutual_tls_only().allows(None));
    }

    #[tokio::test]
    async fn socket_takeover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/admin.sock");

        // A missing folder is created; the mode is 0660.
        let listener = bind_socket(&socket).expect("bind");
        let mode = std::fs::metadata(&socket)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);

        // A live socket is not stolen.
        let e = bind_socket(&socket).expect_err("live").to_string();
        assert!(e.contains("another process is listening"), "{e}");

        // A stale one is replaced.
        drop(listener);
        bind_socket(&socket).expect("stale socket replaced");

        // A regular file is never deleted.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").expect("write");
        let e = bind_socket(&file).expect_err("file").to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");
    }

    /// v1alpha reflection (the protocol older grpcurl speaks) and the health
    /// handle, over a real socket.
    #[tokio::test]
    async fn reflection_v1alpha_and_health_answer() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let listener = bind_socket(&socket).expect("bind");
        let (v1, v1alpha) = reflection().expect("reflection");
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health(reporter);
        health.set_serving(true).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .add_service(v1)
                .add_service(v1alpha)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        let path = socket.clone();
        let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect");

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection call")
            .into_inner();
        let answer = answers.message().await.expect("answer").expect("one");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected answer {answer:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for expected in [SERVICE_NAME, "grpc.health.v1.Health"] {
            assert!(names.contains(&expected), "{names:?}");
        }

        let mut client = HealthClient::new(channel);
        for (serving, expected) in [
            (true, ServingStatus::Serving),
            (false, ServingStatus::NotServing),
        ] {
            health.set_serving(serving).await;
            for service in ["", SERVICE_NAME] {
                let status = client
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .expect("health check")
                    .into_inner()
                    .status;
                assert_eq!(status, expected as i32, "{service:?}");
            }
        }
        let _ = stop.send(());
        server.await.expect("join").expect("serve");
    }
}
