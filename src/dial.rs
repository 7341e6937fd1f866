//! How the CLI's clients (`arbor tunnel`, `arbor inspect`, `arbor top`) reach a server and say why they could
//! not: one address syntax everywhere (`host:port`, or an `http://` / `https://` URL), and connection failures
//! in words that name the cause and what to try, never a Rust `Debug` rendering.

use std::error::Error;
use std::io;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long a CLI client waits for its server's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials `url` (within 5 s), trusting the CA certificate `ca_pem` (PEM bytes) when given. The error is in
/// words ([`connect_failure`]).
pub async fn connect(url: &str, ca_pem: Option<Vec<u8>>) -> Result<Channel, String> {
    if ca_pem.as_deref().is_some_and(|pem| !has_certificate(pem)) {
        return Err(format!(
            "the CA file holds no certificate ({NO_CERTIFICATE_HINT})"
        ));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| connect_failure(url, &e))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(pem) = ca_pem {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| connect_failure(url, &e))?;
    }
    endpoint.connect().await.map_err(|e| connect_failure(url, &e))
}

/// What a CA file without a certificate lacks, for messages that name the file.
pub const NO_CERTIFICATE_HINT: &str = "expected PEM \"-----BEGIN CERTIFICATE-----\"";

/// Whether PEM text holds a certificate at all (a CA file must; tonic would only fail at the handshake).
pub fn has_certificate(pem: &[u8]) -> bool {
    pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----")
}

/// The secret a key or token file holds: its first line that is neither blank nor a `#` comment, trimmed.
pub fn first_secret_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
}

/// The URL to dial for `addr`: kept when it has a scheme; `host:port` becomes `https://host:port` when a CA
/// file is given (TLS), else `http://host:port`.
pub fn server_url(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// Why dialling `url` failed, in one line for people: the root cause recognised where it can be (refused,
/// unreachable, timed out, TLS, a bad address), else every cause's `Display` joined with `: `.
pub fn connect_failure(url: &str, err: &(dyn Error + 'static)) -> String {
    let server_hint = "is the server running there?";
    let mut cause: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => format!("connection refused at {url} — {server_hint}"),
                io::ErrorKind::TimedOut => format!("no answer from {url} (timed out) — {server_hint}"),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                    format!("{url} closed the connection — does it speak gRPC (and TLS, if https)?")
                }
                _ => format!("cannot reach {url}: {io}"),
            };
        }
        let text = e.to_string();
        if text.contains("HttpsUriWithoutTlsSupport") || text.contains("https") && text.contains("TLS") {
            return format!("{url} is https but no TLS settings were given — pass the CA file (--ca-file)");
        }
        if text.contains("scheme is missing") || text.contains("invalid URL") || text.contains("invalid uri")
        {
            return format!("`{url}` is not an address — expected host:port or http(s)://host:port");
        }
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return format!("cannot resolve the host of {url}");
        }
        if text.contains("timed out") {
            return format!("no answer from {url} (timed out) — {server_hint}");
        }
        cause = e.source();
    }
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    format!("cannot connect to {url}: {text}")
}

/// A gRPC status code in lower-case words (`permission denied`, `not found`), as people read it.
pub fn code_words(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented by the server",
        Code::Internal => "internal server error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "not authenticated (missing or wrong key/token)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_gives_its_first_line_that_is_not_a_comment() {
        assert_eq!(
            first_secret_line("# rotated monthly\n\n  k-2026  \nk-old\n"),
            Some("k-2026")
        );
        assert_eq!(first_secret_line("# nothing\n\n"), None);
    }

    #[test]
    fn addresses_take_a_scheme_only_when_missing() {
        assert_eq!(server_url("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(server_url("localhost:1", true), "https://localhost:1");
        assert_eq!(server_url("https://h:1", false), "https://h:1");
    }

    #[test]
    fn a_refused_connection_is_said_in_words() {
        let err = io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
        let line = connect_failure("http://127.0.0.1:1", &err);
        assert_eq!(
            line,
            "connection refused at http://127.0.0.1:1 — is the server running there?"
        );
        assert!(!line.contains("Some(") && !line.contains("Os {"));
    }
}
