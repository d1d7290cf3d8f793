//! `systemctl`, run as argv (never through a shell), bounded in time, with its failure
//! classified: the one way the service faults and the NTP pause of `time.offset` talk to
//! systemd.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::shell;
use crate::{Error, ErrorKind, Result};

/// Run `systemctl --no-ask-password ARGS`; an error with its stderr when it fails.
pub fn run(args: &[&str], timeout: Duration) -> Result<()> {
    output(args, timeout).map(drop)
}

/// Run `systemctl --no-ask-password ARGS` (C locale, no pager) and return its stdout. Both
/// pipes are read on threads, so a chatty systemctl cannot block on a full pipe. Past
/// `timeout` (measured on `CLOCK_MONOTONIC`, so a wall-clock step does not move it) it is
/// killed and the error says systemd may still be running the job. A failure is
/// [`ErrorKind::PermissionDenied`] when polkit or the bus refused, [`ErrorKind::NotFound`]
/// for a unit that is not there, [`ErrorKind::Unsupported`] when systemctl is not installed,
/// else [`ErrorKind::Io`].
pub fn output(args: &[&str], timeout: Duration) -> Result<String> {
    let shown = shell::join(std::iter::once("systemctl").chain(args.iter().copied()));
    let mut child = Command::new("systemctl")
        .arg("--no-ask-password")
        .args(args)
        .env("LC_ALL", "C")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::Unsupported,
                    "systemctl is not installed (systemd is needed here)",
                )
            } else {
                Error::io(format!("running {shown}"), e)
            }
        })?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{shown} did not finish within {}; systemd may still be running the \
                         job (see `systemctl list-jobs`)",
                        crate::Duration(timeout)
                    ),
                ));
            }
            Err(e) => return Err(Error::io(format!("waiting for {shown}"), e)),
        }
    };
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    let err = err.trim();
    let kind = if err.contains("Access denied") || err.contains("authentication required") {
        ErrorKind::PermissionDenied
    } else if err.contains("not found") || err.contains("not loaded") {
        ErrorKind::NotFound
    } else {
        ErrorKind::Io
    };
    Err(Error::new(
        kind,
        format!(
            "{shown} failed ({status}): {}",
            if err.is_empty() { "no message" } else { err }
        ),
    ))
}
