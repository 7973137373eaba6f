//! The one error type of the remote boundary, with the retry bit the sync engine's backoff needs.

use std::path::PathBuf;

use crate::protocol::{ErrorBody, ErrorCode};

/// Why a call to the server failed. Each message is one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// 401: no token, a wrong one, or a revoked one.
    #[error(
        "server at {server} refused the token (401: {message}): check --token-file, or mint a new \
         token with `deltadrive admin device add`"
    )]
    Unauthorized {
        /// The server's base URL.
        server: String,
        /// The server's explanation.
        message: String,
    },
    /// 403: the volume belongs to another user.
    #[error(
        "server at {server} refused access to volume {volume:?} (403: {message}): check --volume"
    )]
    Forbidden {
        /// The server's base URL.
        server: String,
        /// The volume asked for.
        volume: String,
        /// The server's explanation.
        message: String,
    },
    /// 404: no such volume (or endpoint), or chunks this volume does not hold (`body.chunks`).
    #[error("{}", not_found_message(.server, .volume, .body))]
    NotFound {
        /// The server's base URL.
        server: String,
        /// The volume asked for.
        volume: String,
        /// The error body (`chunks` names chunks the volume lacks, for chunk downloads).
        body: Box<ErrorBody>,
    },
    /// 409: a commit refused as it stands (stale bases, name taken, missing chunks, ...).
    #[error("server refused the commit (409 {}): {}", code_name(.0.code), .0.message)]
    Conflict(Box<ErrorBody>),
    /// 413: a request over a protocol limit (also raised before sending, when known).
    #[error("request is over the server's limit (413): {}", .0.message)]
    TooLarge(Box<ErrorBody>),
    /// 400: the server found the request malformed (bad op, bad name, bad chunk, ...).
    #[error("server refused the request (400 {}): {}", code_name(.0.code), .0.message)]
    BadRequest(Box<ErrorBody>),
    /// 5xx: the server failed or is unavailable; or 408: it stopped waiting for the request's
    /// body (a stalled link). Worth retrying later.
    #[error("server at {server} failed ({status}): {message}")]
    Server {
        /// The server's base URL.
        server: String,
        /// The HTTP status (408, or 500 to 599).
        status: u16,
        /// The server's explanation, or the start of its answer.
        message: String,
    },
    /// The server could not be reached or the connection broke: refused, reset, timed out.
    #[error("cannot reach the server at {server}: {}", network_reason(.source))]
    Network {
        /// The server's base URL.
        server: String,
        /// What the HTTP client saw.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS handshake failed: a certificate this client does not trust, or a server that
    /// does not speak TLS.
    #[error("cannot talk securely to the server at {server}: {reason}")]
    Tls {
        /// The server's base URL.
        server: String,
        /// What went wrong and what to do, in one line.
        reason: String,
    },
    /// A plain `http://` server off this machine, without the flag that accepts the risk.
    #[error(
        "server URL {server} is plain http to another machine: the device token and your files \
         would cross the network in the clear; use https:// (README: Across the internet), or \
         pass --insecure-http to accept that"
    )]
    PlainHttp {
        /// The URL as given.
        server: String,
    },
    /// A `--ca-file` that cannot be used.
    #[error(
        "CA file: {0}; pass --ca-file a PEM file with the CA certificate that signed the server's"
    )]
    CaFile(crate::tls::PemError),
    /// The server's answer is not what the protocol says (malformed, unverifiable chunk, ...).
    #[error("{0}")]
    Protocol(String),
    /// The server's answer passed this client's limit for it (raw or decompressed): refused
    /// when the limit was reached, without holding the answer.
    #[error("server at {server} sent an answer to {path} over {limit} bytes; refused")]
    AnswerTooLarge {
        /// The server's base URL.
        server: String,
        /// The request's path.
        path: String,
        /// The limit it passed.
        limit: usize,
    },
    /// The token file could not be read.
    #[error(
        "cannot read token file {}: {source}; pass the file holding this device's token \
         with --token-file",
        path.display()
    )]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The server URL, volume name or token given to [`super::Remote::new`] is unusable.
    #[error("{0}")]
    Config(String),
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(#[source] reqwest::Error),
}

impl RemoteError {
    /// Whether the same request may succeed later unchanged: network failures and 5xx answers.
    ///
    /// 4xx answers are not (a 409 needs a pull, rebase or upload first), nor are malformed
    /// answers or bad configuration: retrying those in a loop would not change the outcome.
    pub fn is_retryable(&self) -> bool {
        match self {
            RemoteError::Network { .. } | RemoteError::Server { .. } => true,
            RemoteError::Unauthorized { .. }
            | RemoteError::Forbidden { .. }
            | RemoteError::NotFound { .. }
            | RemoteError::Conflict(_)
            | RemoteError::TooLarge(_)
            | RemoteError::BadRequest(_)
            | RemoteError::Protocol(_)
            | RemoteError::AnswerTooLarge { .. }
            | RemoteError::TokenFile { .. }
            | RemoteError::Tls { .. }
            | RemoteError::PlainHttp { .. }
            | RemoteError::CaFile(_)
            | RemoteError::Config(_)
            | RemoteError::Setup(_) => false,
        }
    }

    /// The server's error body, for the variants that carry one.
    pub fn error_body(&self) -> Option<&ErrorBody> {
        match self {
            RemoteError::NotFound { body, .. } => Some(body),
            RemoteError::Conflict(body)
            | RemoteError::TooLarge(body)
            | RemoteError::BadRequest(body) => Some(body),
            RemoteError::Unauthorized { .. }
            | RemoteError::Forbidden { .. }
            | RemoteError::Server { .. }
            | RemoteError::Network { .. }
            | RemoteError::Protocol(_)
            | RemoteError::AnswerTooLarge { .. }
            | RemoteError::TokenFile { .. }
            | RemoteError::Tls { .. }
            | RemoteError::PlainHttp { .. }
            | RemoteError::CaFile(_)
            | RemoteError::Config(_)
            | RemoteError::Setup(_) => None,
        }
    }

    /// The error for a request that got no answer: [`RemoteError::Tls`] when the TLS
    /// handshake failed (retrying will not help), else [`RemoteError::Network`].
    pub(super) fn network(server: &str, source: reqwest::Error) -> Self {
        match tls_failure(&source) {
            Some(e) => RemoteError::Tls {
                server: server.to_owned(),
                reason: tls_reason(e),
            },
            None => RemoteError::Network {
                server: server.to_owned(),
                source,
            },
        }
    }

    /// The error for a non-2xx answer with this (already decompressed) body.
    pub(super) fn from_answer(server: &str, volume: &str, status: u16, body: &[u8]) -> Self {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let message = match &parsed {
            Some(b) => b.message.clone(),
            None => snippet(body),
        };
        // An error body that is not ours (a proxy's page, say) still gets a typed error.
        let body_or = |code: ErrorCode| {
            Box::new(
                parsed
                    .clone()
                    .unwrap_or_else(|| ErrorBody::new(code, message.clone())),
            )
        };
        match status {
            401 => RemoteError::Unauthorized {
                server: server.to_owned(),
                message,
            },
            403 => RemoteError::Forbidden {
                server: server.to_owned(),
                volume: volume.to_owned(),
                message,
            },
            404 => RemoteError::NotFound {
                server: server.to_owned(),
                volume: volume.to_owned(),
                body: body_or(ErrorCode::NotFound),
            },
            409 => match parsed {
                Some(b) => RemoteError::Conflict(Box::new(b)),
                None => RemoteError::Protocol(format!(
                    "server at {server} answered 409 without an error body: {message}"
                )),
            },
            413 => RemoteError::TooLarge(body_or(ErrorCode::TooLarge)),
            400 => RemoteError::BadRequest(body_or(ErrorCode::BadRequest)),
            408 | 500..=599 => RemoteError::Server {
                server: server.to_owned(),
                status,
                message,
            },
            // 405, 415 and anything else this protocol never sends: client and server
            // disagree about the protocol, which a retry will not fix.
            0..=399 | 402 | 405..=407 | 410..=412 | 414..=499 | 600..=u16::MAX => {
                RemoteError::Protocol(format!(
                    "server at {server} answered an unexpected {status}: {message}; is it a \
                     deltadrive server speaking protocol v1?"
                ))
            }
        }
    }
}

/// The start of a non-JSON answer, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "(empty answer)".to_owned()
    } else {
        line
    }
}

/// An error code as it is written on the wire (`stale`, `name_taken`, ...).
fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}

fn not_found_message(server: &str, volume: &str, body: &ErrorBody) -> String {
    if body.chunks.is_empty() {
        format!(
            "server at {server} answered 404 for volume {volume:?}: {}; check --volume (volumes \
             are made with `deltadrive admin volume create`)",
            body.message
        )
    } else {
        format!(
            "volume {volume:?} on {server} lacks {} requested chunk(s) (404): {}",
            body.chunks.len(),
            body.message
        )
    }
}

/// The rustls error under a failed request, if TLS is what failed. An `io::Error` hides the
/// error it wraps from `source()` (and may wrap another `io::Error`), so each is opened by hand.
fn tls_failure(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(wrapped) => Some(wrapped),
            None => err.source(),
        };
    }
    None
}

/// One line for a TLS failure, saying what the user can do about it.
fn tls_reason(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "the server's certificate is not trusted (unknown issuer): pass \
                                 --ca-file with the CA certificate that signed it"
                .to_owned(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate is not made for this host name: give --server the name \
                 (or address) the certificate names"
                    .to_owned()
            }
            C::Expired | C::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".to_owned()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet: check this machine's clock".to_owned()
            }
            C::Revoked => "the server's certificate is revoked".to_owned(),
            other => format!(
                "the server's certificate is refused ({other}): check the server's certificate, \
                 or pass --ca-file with the CA that signed it"
            ),
        },
        rustls::Error::InvalidMessage(_) => format!(
            "the TLS handshake failed ({e}): does the server serve HTTPS (`serve --tls-cert`)? \
             Otherwise use http://"
        ),
        rustls::Error::General(reason) if reason.contains("No CA certificates") => format!(
            "the TLS handshake failed: {reason}: install the system's CA certificates \
             (ca-certificates), or pass --ca-file"
        ),
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// The most useful part of a network error: its innermost cause ("Connection refused").
fn network_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (timed out)".to_owned();
    }
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let what = inner.to_string();
    if e.is_connect() {
        format!("connection failed: {what}")
    } else {
        what
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "http://127.0.0.1:1";

    fn answer(status: u16, body: &str) -> RemoteError {
        RemoteError::from_answer(SERVER, "vol", status, body.as_bytes())
    }

    #[test]
    fn statuses_map_to_their_variants_and_retry_bits() {
        let json = r#"{"code":"stale","message":"1 node(s) changed","stale":[
            {"node":"0000000000000000000000000000002a","base":3,"current":5}]}"#;
        let e = answer(409, json);
        let RemoteError::Conflict(body) = &e else {
            panic!("409 is {e:?}")
        };
        assert_eq!(body.code, ErrorCode::Stale);
        assert_eq!(body.stale.len(), 1);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("409 stale"), "{e}");

        let e = answer(
            401,
            r#"{"code":"unauthorized","message":"invalid or revoked token"}"#,
        );
        assert!(matches!(e, RemoteError::Unauthorized { .. }));
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("--token-file"), "{e}");

        assert!(matches!(answer(403, "{}"), RemoteError::Forbidden { .. }));
        assert!(matches!(answer(404, "nope"), RemoteError::NotFound { .. }));
        assert!(matches!(answer(413, ""), RemoteError::TooLarge(_)));
        assert!(matches!(answer(400, "x"), RemoteError::BadRequest(_)));
        for status in [408, 500, 502, 503] {
            let e = answer(status, "<html>busy</html>");
            assert!(matches!(e, RemoteError::Server { .. }), "{status}: {e:?}");
            assert!(e.is_retryable(), "{status}");
        }
        for status in [302, 405, 415, 418] {
            let e = answer(status, "");
            assert!(matches!(e, RemoteError::Protocol(_)), "{status}: {e:?}");
            assert!(!e.is_retryable());
        }
        // A 409 that is not our error body cannot be acted on as a conflict.
        assert!(matches!(answer(409, "conflict"), RemoteError::Protocol(_)));
    }

    #[test]
    fn error_bodies_survive_and_non_json_bodies_are_summarised() {
        let e = answer(
            400,
            r#"{"code":"bad_name","message":"name \"..\" is reserved","op":2}"#,
        );
        let body = e.error_body().unwrap();
        assert_eq!((body.code, body.op), (ErrorCode::BadName, Some(2)));
        let e = answer(502, "<html>\n  <body>Bad gateway</body>\n</html>");
        assert_eq!(
            e.to_string(),
            format!("server at {SERVER} failed (502): <html> <body>Bad gateway</body> </html>")
        );
        let e = answer(404, r#"{"code":"not_found","message":"no volume \"vol\""}"#);
        assert!(e.to_string().contains("check --volume"), "{e}");
        assert_eq!(e.error_body().unwrap().code, ErrorCode::NotFound);
    }
}
