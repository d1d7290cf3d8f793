//! The error body every failed call returns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`: the body of every response with a 4xx or 5xx status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code; see [`ErrorCode`].
    pub code: ErrorCode,
    /// One sentence for a person: what is wrong and, where possible, what to do.
    pub message: String,
    /// For 422: every invalid field with its path (`steps[0].faults[1].percent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())?;
        for p in &self.problems {
            if p.path.is_empty() {
                write!(f, "\n  - {}", p.message)?;
            } else {
                write!(f, "\n  - {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where, e.g. `lines[3].message` or `experiment.steps[0].faults[0].pid`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($text:literal, $status:literal), )*) => {
        /// Stable error codes, each with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version does not know (sent by a newer server).
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// The code as sent on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $text, )*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// The HTTP status that goes with this code.
            pub fn status(self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $status, )*
                    ErrorCode::Unknown => 500,
                }
            }

            /// Every known code.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )*];
        }
    };
}

codes! {
    /// The request is malformed: bad query string, bad path segment.
    BadRequest = ("bad_request", 400),
    /// The body is not JSON, or not the JSON this call expects (unknown or missing field,
    /// wrong type).
    MalformedJson = ("malformed_json", 400),
    /// No `Authorization: Bearer` header.
    MissingToken = ("missing_token", 401),
    /// The token is not known (never issued, replaced, or forged).
    InvalidToken = ("invalid_token", 401),
    /// The token's lifetime is over; rotate earlier, or register again with a new key.
    TokenExpired = ("token_expired", 401),
    /// The operator revoked this agent; every token of it is refused.
    AgentRevoked = ("agent_revoked", 401),
    /// The registration key is not known.
    RegistrationKeyInvalid = ("registration_key_invalid", 401),
    /// The registration key expired before it was used.
    RegistrationKeyExpired = ("registration_key_expired", 401),
    /// The registration key was already used; each key registers one agent once.
    RegistrationKeyUsed = ("registration_key_used", 401),
    /// An older token generation was presented after a newer one was used: the identity
    /// has been copied. Every token of this agent is refused until the operator issues a
    /// new registration key.
    IdentityLocked = ("identity_locked", 403),
    /// The token is valid but not for this resource (another agent's id or run).
    Forbidden = ("forbidden", 403),
    /// No such agent, run or path.
    NotFound = ("not_found", 404),
    /// The call contradicts the stored state (a second, different result; a state that
    /// goes backwards; a name already taken).
    Conflict = ("conflict", 409),
    /// This path exists, but not with this method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// The body is larger than the server accepts.
    PayloadTooLarge = ("payload_too_large", 413),
    /// The body is well-formed JSON but a field is invalid; see `problems`.
    Invalid = ("invalid", 422),
    /// The server is shutting down; retry shortly.
    Unavailable = ("unavailable", 503),
    /// A bug or a storage failure on the server; retry with backoff.
    Internal = ("internal", 500),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_is_tolerated() {
        for c in ErrorCode::ALL {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *c);
        }
        let e: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"}}"#).unwrap();
        assert_eq!(e.error.code, ErrorCode::Unknown);
    }
}
