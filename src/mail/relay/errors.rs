//! What can go wrong with the relay, named once: [`RelayError`] for the step-by-step check
//! and `latchkey mail test`, and [`classify_delivery_error`] for the outbox worker's pooled
//! sends, both from the one classifier [`classify`] over lettre's typed errors.

use std::time::Duration;

/// Why a connection to the relay, or a message through it, failed: each case is a sentence
/// an operator can act on. Never holds a password or a message body.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connection to {addr} failed: {detail}")]
    Connect { addr: String, detail: String },
    #[error(
        "certificate not trusted: {addr} presented subject \"{subject}\" issued by \"{issuer}\" ({reason}); \
         add the issuing CA to the system trust store or to LATCHKEY_SMTP_CA_FILE"
    )]
    CertificateNotTrusted {
        addr: String,
        subject: String,
        issuer: String,
        reason: String,
    },
    #[error("TLS with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("TLS required but not offered: {addr} does not announce STARTTLS")]
    StartTlsNotOffered { addr: String },
    #[error("AUTH refused by {addr}: {detail}")]
    AuthRefused { addr: String, detail: String },
    #[error("AUTH not possible: {addr} offers neither AUTH PLAIN nor LOGIN")]
    AuthNotOffered { addr: String },
    #[error("the relay refused the message: {detail}")]
    Rejected { detail: String, permanent: bool },
    #[error("the relay did not answer within {0:?}")]
    Timeout(Duration),
}

/// A failure's kind: the short, stable name metrics and `/readyz` show, and whether
/// retrying can help before someone changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    ConnectionFailed,
    CertificateNotTrusted,
    TlsFailed,
    TlsNotOffered,
    AuthRefused,
    AuthNotOffered,
    /// 5xx to the message: permanent.
    Rejected,
    /// 4xx to the message: tried again later.
    Deferred,
    Timeout,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::ConnectionFailed => "connection_failed",
            FailureClass::CertificateNotTrusted => "certificate_not_trusted",
            FailureClass::TlsFailed => "tls_failed",
            FailureClass::TlsNotOffered => "tls_not_offered",
            FailureClass::AuthRefused => "auth_refused",
            FailureClass::AuthNotOffered => "auth_not_offered",
            FailureClass::Rejected => "rejected",
            FailureClass::Deferred => "deferred",
            FailureClass::Timeout => "timeout",
        }
    }

    /// Retrying cannot help until someone changes something: credentials refused, or the
    /// relay answered 5xx to the message. Network, TLS and 4xx failures are retried.
    pub fn is_permanent(self) -> bool {
        matches!(self, FailureClass::AuthRefused | FailureClass::Rejected)
    }
}

/// Where in a conversation with the relay an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    StartTls,
    Auth,
    /// A send through lettre's pooled transport, which connects, upgrades and
    /// authenticates on its own: the error alone says which step failed.
    Pooled,
}

/// The one classifier: what kind of failure `err` is, at `stage`. It reads lettre's typed
/// error (kind, status code, the rustls error inside); only a client-side refusal in a
/// pooled send, which lettre reports as one kind for "no STARTTLS" and "no usable AUTH
/// mechanism", is told apart by its text.
pub fn classify(err: &lettre::transport::smtp::Error, stage: Stage) -> FailureClass {
    let tls_problem = || {
        if certificate_problem(err).is_some() {
            Some(FailureClass::CertificateNotTrusted)
        } else if rustls_error(err).is_some() || err.is_tls() {
            Some(FailureClass::TlsFailed)
        } else {
            None
        }
    };
    match stage {
        Stage::Connect => tls_problem().unwrap_or(FailureClass::ConnectionFailed),
        Stage::StartTls => tls_problem().unwrap_or(FailureClass::TlsFailed),
        // Once connected: a mechanism the relay does not offer is lettre's client-side
        // refusal; any error reply to AUTH is a refusal of the credentials.
        Stage::Auth if err.is_client() => FailureClass::AuthNotOffered,
        Stage::Auth => FailureClass::AuthRefused,
        Stage::Pooled => {
            if let Some(class) = tls_problem() {
                return class;
            }
            if err.is_client() {
                let text = err.to_string();
                if text.contains("STARTTLS") {
                    return FailureClass::TlsNotOffered;
                }
                if text.contains("mechanism") {
                    return FailureClass::AuthNotOffered;
                }
            }
            if err.is_timeout() {
                return FailureClass::Timeout;
            }
            match err.status() {
                // 53x (530, 535): the pooled transport's AUTH was refused.
                Some(code) if err.is_permanent() && code.to_string().starts_with("53") => {
                    FailureClass::AuthRefused
                }
                Some(_) if err.is_permanent() => FailureClass::Rejected,
                Some(_) => FailureClass::Deferred,
                None => FailureClass::ConnectionFailed,
            }
        }
    }
}

impl RelayError {
    /// The kind of this failure.
    pub fn failure(&self) -> FailureClass {
        match self {
            RelayError::Connect { .. } => FailureClass::ConnectionFailed,
            RelayError::CertificateNotTrusted { .. } => FailureClass::CertificateNotTrusted,
            RelayError::Tls { .. } => FailureClass::TlsFailed,
            RelayError::StartTlsNotOffered { .. } => FailureClass::TlsNotOffered,
            RelayError::AuthRefused { .. } => FailureClass::AuthRefused,
            RelayError::AuthNotOffered { .. } => FailureClass::AuthNotOffered,
            RelayError::Rejected {
                permanent: true, ..
            } => FailureClass::Rejected,
            RelayError::Rejected { .. } => FailureClass::Deferred,
            RelayError::Timeout(_) => FailureClass::Timeout,
        }
    }

    /// A short, stable name for metrics and `/readyz`.
    pub fn class(&self) -> &'static str {
        self.failure().as_str()
    }

    /// Whether retrying cannot help until someone changes something.
    pub fn is_permanent(&self) -> bool {
        self.failure().is_permanent()
    }
}

/// Classifies an error from the pooled transport (the outbox worker): its class and whether
/// it is permanent.
pub fn classify_delivery_error(err: &lettre::transport::smtp::Error) -> (&'static str, bool) {
    let class = classify(err, Stage::Pooled);
    (class.as_str(), class.is_permanent())
}

/// The rustls error inside a lettre error, if the TLS layer failed.
fn rustls_error(err: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return Some(found);
            }
        }
        cause = current.source();
    }
    None
}

/// Why the relay's certificate was refused, in words, when that is what failed.
pub(super) fn certificate_problem(err: &lettre::transport::smtp::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(problem) = rustls_error(err)? else {
        return None;
    };
    Some(match problem {
        C::UnknownIssuer => "unknown issuer: that CA is not trusted here".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "not valid for the relay's host name".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "expired".to_owned(),
        C::BadSignature => "bad signature".to_owned(),
        other => format!("{other:?}"),
    })
}

/// The error and its causes as one line, each cause once.
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        let more = current.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = current.source();
    }
    text
}
