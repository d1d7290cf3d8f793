//! A private PostgreSQL cluster for the tests: started once per test process on a free port of
//! 127.0.0.1, with password (SCRAM) authentication over TCP, in a fresh temporary directory;
//! [`database`] hands out a fresh, empty database on it per call.
//!
//! - Binaries: `initdb` and `postgres` from `PATH`, else `/usr/lib/postgresql/N/bin` (Debian,
//!   highest N), else `/usr/pgsql-N/bin` (PGDG RPMs). None found: [`database`] says why and
//!   the test prints `SKIPPED`.
//! - PostgreSQL refuses to run as root: as root, `initdb` and `postgres` run as the
//!   `postgres` user (Debian's package creates it), else `nobody`; the harness drops the
//!   privileges itself in the child (setgroups, setgid, setuid), no `su`, no shell.
//! - Nothing is left behind: the server gets `PR_SET_PDEATHSIG` (fast shutdown when the thread
//!   that started it, which lives as long as the process, goes away), and an `atexit` handler
//!   stops it (SIGINT, then waits) and removes the directory when the test binary exits.

#![allow(dead_code)]

use std::ffi::{CString, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The role `initdb` creates (a superuser); its password is random per cluster.
const USER: &str = "chaos";

struct Cluster {
    port: u16,
    password: String,
    /// The CA (PEM) that signs the server's TLS certificate (for 127.0.0.1 and localhost).
    ca: PathBuf,
    /// To create databases (a connection to `postgres`).
    admin: Mutex<postgres::Client>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A URL `postgres://chaos:PASSWORD@127.0.0.1:PORT/DBNAME` of a fresh, empty database, or why
/// PostgreSQL cannot run here. Panics when PostgreSQL is there but does not start (a broken
/// harness or server must fail the test, not skip it).
pub fn database() -> Result<String, String> {
    let cluster = CLUSTER.get_or_init(start).as_ref().map_err(Clone::clone)?;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // A safe identifier: lowercase letters, digits and underscores only, never quoted.
    let name = format!(
        "chaos_test_{}_{}",
        NEXT.fetch_add(1, Ordering::Relaxed),
        chaos_control::secrets::random_hex(4)
    );
    let mut admin = cluster.admin.lock().unwrap_or_else(|e| e.into_inner());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    Ok(format!(
        "postgres://{USER}:{}@127.0.0.1:{}/{name}",
        cluster.password, cluster.port
    ))
}

/// The CA certificate (PEM file) that signs the cluster's TLS certificate (the server takes
/// TLS and plain connections alike).
pub fn tls_ca() -> Result<PathBuf, String> {
    let cluster = CLUSTER.get_or_init(start).as_ref().map_err(Clone::clone)?;
    Ok(cluster.ca.clone())
}

/// [`database`] for a test: `None` after printing `SKIPPED <test>: <why>`.
pub fn require(test: &str) -> Option<String> {
    match database() {
        Ok(url) => Some(url),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// The directory holding both `initdb` and `postgres`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(d) = std::env::split_paths(&path).find(|d| has_both(d)) {
        return Some(d);
    }
    // /usr/lib/postgresql/15/bin, /usr/pgsql-16/bin: the highest version first.
    let versioned = |parent: &str, prefix: &str| -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(parent)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let v: u32 = name.strip_prefix(prefix)?.parse().ok()?;
                let bin = e.path().join("bin");
                has_both(&bin).then_some((v, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, d)| d)
    };
    versioned("/usr/lib/postgresql", "").or_else(|| versioned("/usr", "pgsql-"))
}

/// The uid and gid of `name`, from the user database.
fn user(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam_r with a buffer we own; `result` points into `pw`/`buf` when non-null.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some((pw.pw_uid, pw.pw_gid))
    }
}

/// Who runs `initdb` and `postgres`: `None` for the current user (not root).
type RunAs = Option<(libc::uid_t, libc::gid_t)>;

/// A command that runs as `run_as` (privileges dropped in the child before exec), and gets
/// `death_signal` when the thread that spawned it ends.
fn command(bin: &Path, dir: &Path, run_as: RunAs, death_signal: Option<i32>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = run_as {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid: a change of credentials clears the parent-death signal.
            if let Some(sig) = death_signal {
                if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// "The server exited", set before it is reaped (so its pid is never reused while this says
/// false), with a condition variable to wait for it.
type Exited = Arc<(Mutex<bool>, Condvar)>;

/// The server process, for the `atexit` handler.
struct Running {
    dir: PathBuf,
    /// Its pid, once started.
    server: Option<(i32, Exited)>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

extern "C" fn stop_at_exit() {
    let taken = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(running) = taken else { return };
    if let Some((pid, exited)) = running.server {
        stop_server(pid, &exited);
    }
    let _ = std::fs::remove_dir_all(&running.dir);
}

/// Fast shutdown (SIGINT: clients disconnected, clean stop), then SIGKILL if it hangs.
fn stop_server(pid: i32, exited: &(Mutex<bool>, Condvar)) {
    let (lock, cv) = exited;
    let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
    for (sig, patience) in [
        (libc::SIGINT, Duration::from_secs(20)),
        (libc::SIGKILL, Duration::from_secs(5)),
    ] {
        if *done {
            return;
        }
        // SAFETY: kill(2) on our own child, not yet reaped (`done` is false under the lock).
        unsafe { libc::kill(pid, sig) };
        done = cv
            .wait_timeout_while(done, patience, |d| !*d)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn start() -> Result<Cluster, String> {
    let bin = find_bin_dir().ok_or(
        "PostgreSQL's initdb and postgres not found (PATH, /usr/lib/postgresql/*/bin, \
         /usr/pgsql-*/bin); Debian: apt-get install postgresql",
    )?;
    // SAFETY: geteuid cannot fail.
    let run_as: RunAs = if unsafe { libc::geteuid() } == 0 {
        Some(user("postgres").or_else(|| user("nobody")).ok_or(
            "running as root and neither a postgres nor a nobody user to run PostgreSQL as",
        )?)
    } else {
        None
    };

    let dir = std::env::temp_dir().join(format!(
        "chaos-control-pg-{}",
        chaos_control::secrets::random_hex(6)
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    *RUNNING.lock().unwrap() = Some(Running {
        dir: dir.clone(),
        server: None,
    });
    // SAFETY: registering a handler without arguments.
    assert_eq!(unsafe { libc::atexit(stop_at_exit) }, 0, "atexit");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }

    let password = chaos_control::secrets::random_hex(16);
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n")).unwrap();
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
    }
    let data = dir.join("data");
    let mut pwfile_arg = OsString::from("--pwfile=");
    pwfile_arg.push(&pwfile);
    let out = command(&bin.join("initdb"), &dir, run_as, None)
        .arg("-D")
        .arg(&data)
        .args(["-U", USER, "--auth=scram-sha-256", "-E", "UTF8"])
        .args(["--locale=C", "--no-sync"])
        .arg(pwfile_arg)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.join("initdb").display()));
    let _ = std::fs::remove_file(&pwfile);
    assert!(
        out.status.success(),
        "initdb ({}) failed: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // TLS: a CA and a certificate for 127.0.0.1 made by chaos-control's own `init`, the
    // certificate and key in the data directory (PostgreSQL's default file names).
    let tls = dir.join("tls");
    let made = chaos_control::pki::init(&chaos_control::pki::InitOptions {
        state_dir: tls.clone(),
        names: vec!["127.0.0.1".into()],
        port: 5432,
        force: false,
        database: None,
    })
    .unwrap_or_else(|e| panic!("certificates for the PostgreSQL cluster: {e}"));
    for (from, to) in [
        (made.paths.server_pem(), data.join("server.crt")),
        (made.paths.server_key(), data.join("server.key")),
    ] {
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
        }
    }
    let ca = made.paths.ca_pem();

    // The port is free when picked, but another process may take it before the server binds
    // it: then (and only then) start again on another port.
    let log = dir.join("postgres.log");
    for _attempt in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let exited: Exited = Arc::new((Mutex::new(false), Condvar::new()));
        let pid = spawn_server(&bin, &dir, &data, port, &log, run_as, exited.clone());
        RUNNING.lock().unwrap().as_mut().unwrap().server = Some((pid, exited.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(USER)
                .password(&password)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(5))
                .connect(postgres::NoTls);
            match attempt {
                Ok(client) => {
                    return Ok(Cluster {
                        port,
                        password,
                        ca,
                        admin: Mutex::new(client),
                    })
                }
                Err(_) if Instant::now() < deadline && !*exited.0.lock().unwrap() => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if *exited.0.lock().unwrap() && text.contains("could not bind") {
                        break; // the port was taken meanwhile: another one
                    }
                    panic!("PostgreSQL ({}) did not start: {e}\n{text}", bin.display());
                }
            }
        }
    }
    panic!("PostgreSQL could not bind a free port of 127.0.0.1 in 5 attempts");
}

/// Start `postgres` from a thread that lives as long as the server (its death signal is tied
/// to that thread), and reap it there; the pid.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    log: &Path,
    run_as: RunAs,
    exited: Exited,
) -> i32 {
    let mut cmd = command(&bin.join("postgres"), dir, run_as, Some(libc::SIGINT));
    cmd.arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
        .args(["-c", "shared_buffers=32MB", "-c", "ssl=on"])
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::options().append(true).open(log).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let what = bin.join("postgres");
    std::thread::spawn(move || {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let pid = child.id() as i32;
        let _ = tx.send(Ok(pid));
        // Wait without reaping, say "exited" under the lock, then reap: the atexit handler
        // never signals a pid that could have been reused.
        // SAFETY: waitid on our own child, into a zeroed siginfo.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            while libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            ) != 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
        }
        let (lock, cv) = &*exited;
        let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.wait();
        *done = true;
        cv.notify_all();
    });
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: {e}", what.display()))
}
