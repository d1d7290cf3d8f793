//! Commands printed for people to paste into a shell: every word is quoted so that what
//! they run is exactly the argv we mean, whatever a name on the host contains
//! (`q;id`, spaces, quotes, newlines).
//!
//! Nothing here runs a command; the agent itself never uses a shell.

use std::borrow::Cow;

/// Quote one word for a POSIX shell. Words made only of safe characters are left as they
/// are (so `tc qdisc del dev eth0 root` stays readable); anything else is wrapped in single
/// quotes, with each `'` written as `'\''`. The empty string becomes `''`.
pub fn quote(word: &str) -> Cow<'_, str> {
    let safe = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'=' | b'+' | b',' | b'@' | b'%'
                )
        });
    if safe {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// One command line from argv words, each [`quote`]d.
pub fn join<I, S>(argv: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    argv.into_iter()
        .map(|w| quote(w.as_ref()).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`join`] for a literal list: `shell::cmd!["tc", "qdisc", "del", "dev", name]`.
#[macro_export]
macro_rules! shell_cmd {
    ($($w:expr),+ $(,)?) => {
        $crate::host::shell::join([$(::std::convert::AsRef::<str>::as_ref(&$w)),+])
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(
            join(["tc", "qdisc", "del", "dev", "eth0", "root", "handle", "c7a0:"]),
            "tc qdisc del dev eth0 root handle c7a0:"
        );
        assert_eq!(
            quote("/srv/data/.chaos-agent-fill-ab12-1-1"),
            "/srv/data/.chaos-agent-fill-ab12-1-1"
        );
    }

    #[test]
    fn hostile_words_are_quoted() {
        assert_eq!(join(["tc", "dev", "q;id"]), "tc dev 'q;id'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("x\ny"), "'x\ny'");
        assert_eq!(quote("*"), "'*'");
        assert_eq!(quote("~root"), "'~root'");
    }

    #[test]
    fn macro_takes_mixed_strings() {
        let dev = String::from("q;id");
        assert_eq!(shell_cmd!["ip", "link", "show", dev], "ip link show 'q;id'");
    }
}
