//! systemd notifications (`sd_notify`) without libsystemd.
//!
//! With `Type=notify`, systemd passes `NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket) and the service sends it datagrams of `KEY=value` lines: `READY=1` once it serves,
//! `STATUS=…` for `systemctl status`, `WATCHDOG=1` at least every `WatchdogSec`, `RELOADING=1`
//! and `STOPPING=1` around a reload and a stop. Without `NOTIFY_SOCKET` (run by hand, under
//! another init) every call is a no-op.
//!
//! The watchdog: systemd passes `WATCHDOG_USEC` (and `WATCHDOG_PID`, the process meant);
//! [`watchdog_interval`] says how often to send `WATCHDOG=1` (half the timeout, as
//! `sd_watchdog_enabled(3)` advises), or `None` when no watchdog applies to this process. systemd
//! arms the watchdog while the service runs or reloads, not while it starts (before
//! `READY=1`) or stops (after SIGTERM): a long recovery before `READY=1` is bounded by
//! `TimeoutStartSec`, a long revert after SIGTERM by `TimeoutStopSec`
//! ([`Notifier::extend_timeout`] can ask for more).
//!
//! The environment is left as it is, so children inherit `NOTIFY_SOCKET`; with
//! `NotifyAccess=main` systemd ignores whatever they might send.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How long a notification may wait for room in the socket's queue (a datagram send blocks
/// while the reader's queue is full, `net.unix.max_dgram_qlen`): past it, the notification
/// is dropped with an error. The threads that notify also keep the lease, handle SIGTERM and
/// start the poll loop; none of that may wait for a reader that is slow or never reads.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// What kind of notification error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyErrorKind {
    /// `NOTIFY_SOCKET` is set but is not a socket this code can use (not absolute, too long,
    /// or another transport such as `vsock:`).
    BadSocket,
    /// `WATCHDOG_USEC` or `WATCHDOG_PID` is set but is not a positive number.
    BadWatchdog,
    /// Sending failed (systemd gone, socket removed, …).
    Io,
}

/// A notification error.
#[derive(Debug)]
pub struct NotifyError {
    kind: NotifyErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl NotifyError {
    fn new(kind: NotifyErrorKind, message: String, source: Option<io::Error>) -> NotifyError {
        NotifyError {
            kind,
            message,
            source,
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> NotifyErrorKind {
        self.kind
    }
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Sends notifications to systemd. Cheap to share between threads (`&Notifier` is enough;
/// it is `Send + Sync`).
pub struct Notifier {
    target: Option<Target>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for messages.
    name: String,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(t) => write!(f, "Notifier({})", t.name),
            None => f.write_str("Notifier(disabled)"),
        }
    }
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; disabled (every call a no-op) when it is unset or empty.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        Notifier::new(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    /// From a `NOTIFY_SOCKET` value: an absolute path, or `@name` for an abstract socket.
    /// `None` or empty: disabled.
    pub fn new(notify_socket: Option<&OsStr>) -> Result<Notifier, NotifyError> {
        let Some(value) = notify_socket.filter(|v| !v.is_empty()) else {
            return Ok(Notifier::disabled());
        };
        let name = value.to_string_lossy().into_owned();
        let bytes = value.as_bytes();
        let bad = |why: &str, e: Option<io::Error>| {
            NotifyError::new(
                NotifyErrorKind::BadSocket,
                format!("NOTIFY_SOCKET={name:?}: {why}"),
                e,
            )
        };
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])
                .map_err(|e| bad("not a usable abstract socket name", Some(e)))?,
            Some(b'/') => SocketAddr::from_pathname(value)
                .map_err(|e| bad("not a usable socket path", Some(e)))?,
            _ => {
                return Err(bad(
                    "unsupported address (expected an absolute path or @abstract-name)",
                    None,
                ))
            }
        };
        let socket = UnixDatagram::unbound()
            .and_then(|s| {
                s.set_write_timeout(Some(SEND_TIMEOUT))?;
                Ok(s)
            })
            .map_err(|e| {
                NotifyError::new(
                    NotifyErrorKind::Io,
                    "cannot create a datagram socket for systemd notifications".into(),
                    Some(e),
                )
            })?;
        Ok(Notifier {
            target: Some(Target { socket, addr, name }),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Whether notifications go anywhere (`NOTIFY_SOCKET` was set).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one datagram of `KEY=value` lines as it is. A no-op when disabled.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        let sent = t
            .socket
            .send_to_addr(message.as_bytes(), &t.addr)
            .map_err(|e| {
                NotifyError::new(
                    NotifyErrorKind::Io,
                    format!("cannot notify systemd through {}", t.name),
                    Some(e),
                )
            })?;
        if sent != message.len() {
            return Err(NotifyError::new(
                NotifyErrorKind::Io,
                format!(
                    "notification to {} cut short ({sent} of {} bytes)",
                    t.name,
                    message.len()
                ),
                None,
            ));
        }
        Ok(())
    }

    /// `READY=1`: start-up is complete (with `Type=notify`, `systemctl start` returns now).
    /// Also send it after a reload is done.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// `READY=1` and a status line in one datagram.
    pub fn ready_with_status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `STATUS=…`: one line shown by `systemctl status` (newlines become spaces).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: still alive. Send it every [`watchdog_interval`].
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// `STOPPING=1`: shutting down (after SIGTERM, before reverting and flushing).
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (which systemd 253 and later require for
    /// `Type=notify-reload`, and older ones ignore): reloading the configuration. Send
    /// [`Notifier::ready`] when done.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `EXTEND_TIMEOUT_USEC=…` (systemd 236 and later; older ones ignore it): the current
    /// start, stop or reload needs up to `more` from now, e.g. while a long revert runs after
    /// SIGTERM. Send it again before `more` runs out.
    pub fn extend_timeout(&self, more: Duration) -> Result<(), NotifyError> {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", more.as_micros()))
    }
}

/// `STATUS=` takes one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u128::from(ts.tv_sec as u64) * 1_000_000 + u128::from(ts.tv_nsec as u64) / 1_000
}

/// How often to send `WATCHDOG=1`, from `WATCHDOG_USEC` and `WATCHDOG_PID`: half the
/// timeout. `None` when no watchdog is set, or it is meant for another process
/// (`WATCHDOG_PID` is not ours, e.g. inherited from a parent).
pub fn watchdog_interval() -> Result<Option<Duration>, NotifyError> {
    watchdog_interval_from(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from given values (for tests and callers that read the environment
/// themselves).
pub fn watchdog_interval_from(
    watchdog_usec: Option<&OsStr>,
    watchdog_pid: Option<&OsStr>,
    our_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = watchdog_usec.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let number = |name: &str, v: &OsStr| -> Result<u64, NotifyError> {
        let text = v.to_str().unwrap_or("");
        match text.parse::<u64>() {
            Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(NotifyError::new(
                NotifyErrorKind::BadWatchdog,
                format!("{name}={v:?} is not a positive whole number"),
                None,
            )),
        }
    };
    if let Some(pid) = watchdog_pid.filter(|v| !v.is_empty()) {
        if number("WATCHDOG_PID", pid)? != u64::from(our_pid) {
            return Ok(None);
        }
    }
    let usec = number("WATCHDOG_USEC", usec)?;
    Ok(Some(Duration::from_micros(usec / 2)))
}

/// systemd notifications; failures are logged, never fatal.
pub(crate) struct Sd {
    n: Notifier,
    pub(crate) watchdog: Option<Duration>,
}

impl Sd {
    pub(crate) fn from_env() -> Sd {
        let n = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, kind = ?e.kind(), "NOTIFY_SOCKET is unusable: no systemd notifications");
            Notifier::disabled()
        });
        let watchdog = watchdog_interval()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, kind = ?e.kind(), "WATCHDOG_USEC is unusable: no watchdog pings");
                None
            })
            .filter(|_| n.is_enabled());
        Sd { n, watchdog }
    }
    pub(crate) fn log(r: Result<(), NotifyError>) {
        if let Err(e) = r {
            tracing::debug!(error = %e, "systemd notification failed");
        }
    }
    pub(crate) fn ready(&self, status: Option<&str>) {
        Sd::log(match status {
            Some(s) => self.n.ready_with_status(s),
            None => self.n.ready(),
        });
    }
    pub(crate) fn status(&self, s: &str) {
        Sd::log(self.n.status(s));
    }
    pub(crate) fn stopping(&self) {
        Sd::log(self.n.stopping());
    }
    pub(crate) fn reloading(&self) {
        Sd::log(self.n.reloading());
    }
    pub(crate) fn watchdog(&self) {
        Sd::log(self.n.watchdog());
    }
    pub(crate) fn extend_timeout(&self, d: Duration) {
        Sd::log(self.n.extend_timeout(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// A socket path of its own, removed on drop.
    struct SocketPath(PathBuf);

    impl Drop for SocketPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn every_message(n: &Notifier, sock: &UnixDatagram) {
        n.ready().unwrap();
        assert_eq!(recv(sock), "READY=1");
        n.status("step 1/2:\nfill").unwrap();
        assert_eq!(recv(sock), "STATUS=step 1/2: fill");
        n.ready_with_status("polling").unwrap();
        assert_eq!(recv(sock), "READY=1\nSTATUS=polling");
        n.watchdog().unwrap();
        assert_eq!(recv(sock), "WATCHDOG=1");
        n.stopping().unwrap();
        assert_eq!(recv(sock), "STOPPING=1");
        n.extend_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(recv(sock), "EXTEND_TIMEOUT_USEC=30000000");
        let before = monotonic_usec();
        n.reloading().unwrap();
        let got = recv(sock);
        let (first, usec) = got.split_once('\n').unwrap();
        assert_eq!(first, "RELOADING=1");
        let usec: u128 = usec
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec(), "{got}");
    }

    #[test]
    fn notifies_a_path_socket() {
        let path = SocketPath(std::env::temp_dir().join(format!(
            "chaos-agent-notify-test-{}.sock",
            std::process::id()
        )));
        let _ = std::fs::remove_file(&path.0);
        let sock = UnixDatagram::bind(&path.0).unwrap();
        let n = Notifier::new(Some(path.0.as_os_str())).unwrap();
        assert!(n.is_enabled());
        every_message(&n, &sock);
        // Shared between threads, as the watchdog thread does.
        std::thread::scope(|s| {
            s.spawn(|| n.watchdog().unwrap());
        });
        assert_eq!(recv(&sock), "WATCHDOG=1");
        // systemd gone: an error, not a panic.
        drop(sock);
        let e = n.ready().unwrap_err();
        assert_eq!(e.kind(), NotifyErrorKind::Io);
        assert!(e.to_string().contains("cannot notify systemd"), "{e}");
    }

    #[test]
    fn a_reader_that_does_not_read_never_blocks_the_sender() {
        let path = SocketPath(std::env::temp_dir().join(format!(
            "chaos-agent-notify-full-{}.sock",
            std::process::id()
        )));
        let _ = std::fs::remove_file(&path.0);
        let sock = UnixDatagram::bind(&path.0).unwrap();
        let n = Notifier::new(Some(path.0.as_os_str())).unwrap();
        // Fill the reader's queue (max_dgram_qlen, 10 by default; 512 under systemd).
        let start = std::time::Instant::now();
        let mut refused = 0;
        for i in 0..1000 {
            if n.status(&format!("line {i}")).is_err() {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
        assert_eq!(refused, 3, "the queue never filled");
        assert!(
            start.elapsed() < SEND_TIMEOUT * 3 + Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // The first ones are there, in order.
        assert_eq!(recv(&sock), "STATUS=line 0");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("chaos-agent-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let env = format!("@{name}");
        let n = Notifier::new(Some(OsStr::new(&env))).unwrap();
        assert!(n.is_enabled());
        every_message(&n, &sock);
    }

    #[test]
    fn without_notify_socket_every_call_is_a_no_op() {
        for n in [
            Notifier::new(None).unwrap(),
            Notifier::new(Some(OsStr::new(""))).unwrap(),
            Notifier::disabled(),
        ] {
            assert!(!n.is_enabled());
            n.ready().unwrap();
            n.status("x").unwrap();
            n.watchdog().unwrap();
            n.reloading().unwrap();
            n.stopping().unwrap();
        }
    }

    #[test]
    fn unusable_sockets_are_refused() {
        for bad in ["relative.sock", "vsock:2:1234"] {
            let e = Notifier::new(Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(e.kind(), NotifyErrorKind::BadSocket, "{bad}");
        }
        let long = format!("/{}", "x".repeat(200));
        let e = Notifier::new(Some(OsStr::new(&long))).unwrap_err();
        assert_eq!(e.kind(), NotifyErrorKind::BadSocket);
    }

    #[test]
    fn the_watchdog_interval_is_half_the_timeout_for_our_pid_only() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert_eq!(watchdog_interval_from(None, None, 42).unwrap(), None);
        assert_eq!(
            watchdog_interval_from(s("30000000"), None, 42).unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(s("30000000"), s("42"), 42).unwrap(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(s("30000000"), s("43"), 42).unwrap(),
            None
        );
        for bad in ["0", "-5", "abc", "+5", "1.5"] {
            let e = watchdog_interval_from(s(bad), None, 42).unwrap_err();
            assert_eq!(e.kind(), NotifyErrorKind::BadWatchdog, "{bad}");
        }
        let e = watchdog_interval_from(s("30000000"), s("x"), 42).unwrap_err();
        assert_eq!(e.kind(), NotifyErrorKind::BadWatchdog);
    }
}
