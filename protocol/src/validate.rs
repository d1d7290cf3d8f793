//! Field checks shared by every body.

use std::fmt;

use crate::Problem;

/// Every problem found in a body; the server answers 422 with all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Collects problems while a body is checked.
#[derive(Debug, Default)]
pub(crate) struct Checker(pub(crate) Vec<Problem>);

impl Checker {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Free text: at most `max` bytes, no control characters other than tab.
    pub(crate) fn text(&mut self, path: &str, value: &str, max: usize, required: bool) {
        if required && value.trim().is_empty() {
            self.add(path, "must not be empty");
        } else if value.len() > max {
            self.add(path, format!("{} bytes; at most {max}", value.len()));
        } else if value.chars().any(|c| c.is_control() && c != '\t') {
            self.add(path, "must not contain control characters");
        }
    }

    /// Free text that may span lines (log messages, errors).
    pub(crate) fn multiline(&mut self, path: &str, value: &str, max: usize) {
        if value.len() > max {
            self.add(path, format!("{} bytes; at most {max}", value.len()));
        } else if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        {
            self.add(path, "must not contain control characters");
        }
    }

    pub(crate) fn run_id(&mut self, path: &str, value: &str) {
        if !is_run_id(value) {
            self.add(path, "not a run id (8 lowercase hex digits)");
        }
    }

    pub(crate) fn done(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// An agent or experiment name: 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > crate::MAX_NAME_BYTES {
        return Err(format!("must be 1 to {} characters", crate::MAX_NAME_BYTES));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or a digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed (use letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

/// An agent id: 16 lowercase hex digits.
pub fn is_agent_id(s: &str) -> bool {
    s.len() == 16 && is_lower_hex(s)
}

/// A run id: 8 lowercase hex digits (the form `fault-core` derives host names from).
pub fn is_run_id(s: &str) -> bool {
    s.len() == 8 && is_lower_hex(s)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web-01", "db.prod_2", "a", "0"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a b",
            "x'; DROP TABLE agents; --",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids() {
        assert!(is_agent_id("0123456789abcdef"));
        assert!(!is_agent_id("0123456789ABCDEF"));
        assert!(is_run_id("deadbeef"));
        assert!(!is_run_id("deadbee"));
        assert!(!is_run_id("../../..."));
    }
}
