//! The one error type of `fault-core` and of every fault crate built on it.

use std::fmt;

/// What went wrong, coarsely, so callers can decide what to do without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The spec (or experiment file) is invalid; nothing was changed on the host.
    InvalidSpec,
    /// The host cannot do this (missing kernel feature, missing filesystem, ...).
    Unsupported,
    /// The caller lacks a privilege the fault needs (usually root / a capability).
    PermissionDenied,
    /// A target named by the spec does not exist (pid, process name, path, ...).
    NotFound,
    /// A system call or file operation failed.
    Io,
    /// The change cannot be undone (it was applied, but revert has nothing to restore).
    NotRevertible,
    /// Something else holds what we need: another agent holds the lock, or a target is
    /// already under a fault (or waiting for a person to undo one by hand).
    Busy,
    /// The journal could not be read or written.
    Journal,
    /// The host is not in the state the receipt describes (someone else changed it).
    Drifted,
    /// The run was aborted before this operation could finish.
    Aborted,
}

impl ErrorKind {
    /// A short lower-case name, used in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidSpec => "invalid-spec",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Io => "io",
            ErrorKind::NotRevertible => "not-revertible",
            ErrorKind::Busy => "busy",
            ErrorKind::Journal => "journal",
            ErrorKind::Drifted => "drifted",
            ErrorKind::Aborted => "aborted",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a [`ErrorKind`], a human message that names what was being done, and the
/// host's own answer (errno) when there was one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<std::io::Error>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error from a failed system call or file operation. The kind is derived from the
    /// errno: `EPERM`/`EACCES` become [`ErrorKind::PermissionDenied`], `ENOENT`/`ESRCH`
    /// [`ErrorKind::NotFound`], anything else [`ErrorKind::Io`].
    pub fn io(message: impl Into<String>, source: std::io::Error) -> Error {
        let kind = match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::PermissionDenied,
            Some(libc::ENOENT) | Some(libc::ESRCH) => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            message: message.into(),
            source: Some(source),
        }
    }

    /// The last OS error (errno) with a message naming the operation.
    pub fn last_os(message: impl Into<String>) -> Error {
        Error::io(message, std::io::Error::last_os_error())
    }

    /// Shorthand for an [`ErrorKind::InvalidSpec`] error.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidSpec, message)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the OS error.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The raw errno, when the error came from the OS.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(|e| e.raw_os_error())
    }

    /// Prefix the message with more context ("reverting disk.fill abc: ...").
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, source),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_kind() {
        let e = Error::io("open x", std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let e = Error::io("kill 5", std::io::Error::from_raw_os_error(libc::ESRCH));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = Error::io("write", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn display_keeps_the_os_answer_and_context() {
        let e =
            Error::io("open /x", std::io::Error::from_raw_os_error(libc::ENOENT)).context("plan");
        let s = e.to_string();
        assert!(s.starts_with("plan: open /x: "), "{s}");
        assert!(s.contains("No such file"), "{s}");
    }
}
