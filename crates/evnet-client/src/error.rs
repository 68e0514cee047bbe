//! The one error type of the client.

use evnet_model::ErrorBody;

/// Why a call failed.
///
/// [`ClientError::Api`] is the server speaking: it carries the HTTP status
/// and the stable machine `code` of the error body, and its `Display` is
/// `<message> (<code>)`, ready to print after `error: `. The other variants
/// mean the answer never arrived or could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a 4xx or 5xx status.
    #[error("{message} ({code})")]
    Api {
        status: u16,
        /// The body's stable code (`subnet_exhausted`), or `http_<status>`
        /// when the body was not an evnet error body (a proxy's page, say).
        code: String,
        message: String,
    },
    /// The request could not be sent or the answer could not be read:
    /// connection refused, reset, timed out.
    #[error("{method} {url} failed: {detail}")]
    Transport {
        method: String,
        url: String,
        /// The whole cause chain, innermost last.
        detail: String,
        timed_out: bool,
    },
    /// A 2xx answer whose body is not what the route promises.
    #[error("unexpected answer to {method} {url}: {detail}")]
    Decode {
        method: String,
        url: String,
        detail: String,
    },
    /// The base URL or a path given to the client is unusable.
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status, for errors the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The stable machine code, for errors the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for a 404: the resource does not exist or is not the caller's.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when the server was not reached or its answer was cut off; such
    /// a call may be retried.
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }

    pub(crate) fn transport(
        method: &reqwest::Method,
        url: &reqwest::Url,
        err: &reqwest::Error,
    ) -> Self {
        let mut detail = String::new();
        let mut cur: Option<&dyn std::error::Error> = Some(err);
        while let Some(e) = cur {
            let text = e.to_string();
            // reqwest repeats the URL in its outermost message; the inner
            // causes say what went wrong.
            if !detail.contains(&text) {
                if !detail.is_empty() {
                    detail.push_str(": ");
                }
                detail.push_str(&text);
            }
            cur = e.source();
        }
        ClientError::Transport {
            method: method.to_string(),
            url: url.to_string(),
            detail,
            timed_out: err.is_timeout(),
        }
    }

    /// Builds the error for a non-2xx answer from its status and body.
    pub(crate) fn from_response(status: u16, reason: Option<&str>, body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
            return ClientError::Api {
                status,
                code: parsed.error.code,
                message: parsed.error.message,
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            format!("the server answered HTTP {status} {}", reason.unwrap_or(""))
                .trim_end()
                .to_string()
        } else {
            let mut short: String = text.chars().take(500).collect();
            if short.len() < text.len() {
                short.push('…');
            }
            format!("the server answered HTTP {status}: {short}")
        };
        ClientError::Api {
            status,
            code: format!("http_{status}"),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_error_bodies() {
        let body = br#"{"error":{"code":"subnet_exhausted","message":"subnet subnet-1 has no free address"}}"#;
        let err = ClientError::from_response(409, Some("Conflict"), body);
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.code(), Some("subnet_exhausted"));
        assert_eq!(
            err.to_string(),
            "subnet subnet-1 has no free address (subnet_exhausted)"
        );
    }

    #[test]
    fn falls_back_on_foreign_bodies() {
        let err = ClientError::from_response(502, Some("Bad Gateway"), b"");
        assert_eq!(err.code(), Some("http_502"));
        assert_eq!(
            err.to_string(),
            "the server answered HTTP 502 Bad Gateway (http_502)"
        );

        let err = ClientError::from_response(
            415,
            None,
            b"Expected request with `Content-Type: application/json`\n",
        );
        assert_eq!(
            err.to_string(),
            "the server answered HTTP 415: Expected request with `Content-Type: application/json` (http_415)"
        );

        let long = "x".repeat(2000);
        let err = ClientError::from_response(500, None, long.as_bytes());
        let ClientError::Api { message, .. } = err else {
            panic!("not an api error")
        };
        assert!(message.ends_with('…'));
        assert!(message.chars().count() < 600);
    }
}
