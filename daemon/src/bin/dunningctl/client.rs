//! Reaching the daemon: the connection (a Unix socket, or TCP with a bearer
//! token and TLS), and its errors as the one line a user needs, with a hint
//! where the fix is on this side and, for `cases show`, an exit code of its own.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use dunningd::proto::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Cli, Connection};

/// Adds the bearer token to every call when one is configured.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub type Client = AdminClient<InterceptedService<Channel, Auth>>;

pub async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let conn = &cli.connection;
    let (channel, auth) = match &conn.addr {
        Some(addr) => {
            let token = match &conn.token_file {
                None => None,
                Some(path) => Some(read_token(path)?),
            };
            let mut endpoint = Endpoint::from_shared(addr.clone()).map_err(|_| {
                anyhow!("invalid --addr '{addr}' (expected e.g. http://127.0.0.1:7070 or https://admin.example.com:7070)")
            })?;
            match endpoint.uri().scheme_str() {
                Some("https") => endpoint = endpoint.tls_config(client_tls(conn)?)?,
                Some("http") => {
                    if conn.ca_file.is_some() || conn.cert_file.is_some() || conn.key_file.is_some()
                    {
                        bail!(
                            "--ca-file, --cert-file and --key-file are for TLS: use an https:// --addr, not '{addr}'"
                        );
                    }
                    // A plain client speaking to a TLS listener reads the
                    // TLS alert as a broken HTTP/2 frame.
                    let _ =
                        TLS_HINT.set("if the daemon's admin.tls is set, use an https:// --addr");
                }
                _ => bail!(
                    "invalid --addr '{addr}' (expected http:// or https://, e.g. https://admin.example.com:7070)"
                ),
            }
            let channel = endpoint.connect().await.map_err(|e| {
                anyhow!(
                    "cannot connect to {addr}: {}; is dunningd listening there (admin.tcp)?",
                    root_cause(&e)
                )
            })?;
            (channel, Auth(token))
        }
        None => {
            let socket = conn.socket();
            let path = socket.clone();
            // The URI is a placeholder: the connector below ignores it.
            let channel = Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot connect to '{}': {}; is dunningd running? is --socket (or DUNNINGD_SOCKET) right?",
                        socket.display(),
                        root_cause(&e)
                    )
                })?;
            (channel, Auth(None))
        }
    };
    // The daemon's own limit: whatever it accepts, it can show.
    Ok(AdminClient::with_interceptor(channel, auth)
        .max_decoding_message_size(dunningd::config::ADMIN_MESSAGE_LIMIT)
        .max_encoding_message_size(dunningd::config::ADMIN_MESSAGE_LIMIT))
}

/// Why a TLS connection may close under the first call. The daemon checks a
/// client certificate after the handshake, so a refusal reaches the call as
/// "connection closed"; `connect` sets this for `rpc` to add.
static TLS_HINT: std::sync::OnceLock<&str> = std::sync::OnceLock::new();

/// TLS for an https:// address: the daemon's CA (or the system's roots), and
/// this client's certificate where the daemon requires mutual TLS.
fn client_tls(conn: &Connection) -> anyhow::Result<ClientTlsConfig> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {what} '{}'", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &conn.ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read("--ca-file", path)?)),
        None => tls.with_native_roots(),
    };
    match (&conn.cert_file, &conn.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("--cert-file", cert)?,
                read("--key-file", key)?,
            ));
            let _ = TLS_HINT.set(
                "if the daemon requires mutual TLS, is --cert-file signed by its admin.tls.client_ca_file?",
            );
        }
        (None, None) => {
            let _ =
                TLS_HINT.set("if the daemon requires mutual TLS, give --cert-file and --key-file");
        }
        (Some(_), None) => bail!("--cert-file needs --key-file (the certificate's private key)"),
        (None, Some(_)) => bail!("--key-file needs --cert-file (the certificate it belongs to)"),
    }
    if let Some(name) = &conn.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

fn read_token(path: &Path) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file '{}'", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file '{}' is empty", path.display());
    }
    format!("Bearer {token}").parse().map_err(|_| {
        anyhow!(
            "token file '{}' holds characters not allowed in a header",
            path.display()
        )
    })
}

/// The innermost error: for a refused connection, "No such file or directory
/// (os error 2)" says more than tonic's "transport error".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

/// A gRPC error as the one line a user needs: the daemon's own message, with
/// a hint where the fix is on this side.
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    // A connection that failed under the call (a TLS alert, a reset) says
    // why only in the status' source.
    let cause = std::error::Error::source(&status).map(root_cause);
    let mut message = match &cause {
        Some(cause) if cause != message => format!("{message}: {cause}"),
        _ => message.to_string(),
    };
    if cause.is_some()
        && let Some(hint) = TLS_HINT.get()
    {
        message = format!("{message} ({hint})");
    }
    match status.code() {
        tonic::Code::Unauthenticated => {
            anyhow!("{message} (is --token-file or DUNNINGD_TOKEN_FILE right?)")
        }
        tonic::Code::Unavailable if message.contains("transport") => {
            anyhow!("the daemon is not reachable: {message}")
        }
        _ => anyhow!("{message}"),
    }
}

/// An error that exits with a code of its own (see the module header);
/// every other error exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    message: String,
}

/// `cases show`'s lookup errors, told apart by their exit code: 3 when no
/// case has the id or prefix, 4 when a prefix names several (the daemon
/// answers FAILED_PRECONDITION, listing a few).
pub fn case_lookup(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::NotFound => 3,
        tonic::Code::FailedPrecondition => 4,
        _ => return rpc(status),
    };
    Exit {
        code,
        message: rpc(status).to_string(),
    }
    .into()
}

/// The daemon talked to, as the user named it.
pub fn daemon_name(cli: &Cli) -> String {
    match &cli.connection.addr {
        Some(addr) => addr.clone(),
        None => cli.connection.socket().display().to_string(),
    }
}
