//! The daemon's configuration: `/etc/chaos-agent/agent.toml` and its drop-ins.
//!
//! # Files
//!
//! The main file (default [`DEFAULT_PATH`], `chaos-agent daemon --config FILE` to choose
//! another) is read first, then every `*.toml` file of the `config.d/` directory beside it, in
//! lexical order of their names (files whose name starts with `.` are skipped). Files are merged
//! key by key: a key set in a later file replaces the same key of an earlier one; keys it does
//! not set keep their earlier values. The main file may be missing when a drop-in exists
//! (`chaos-control init` suggests `/etc/chaos-agent/config.d/20-control.toml`); no file at all
//! is an error that says what to create.
//!
//! The section `chaos-control init` prints, with the key from `chaos-control agents add NAME`
//! filled in, is a complete configuration; every other key has a default. Every key and its
//! default is documented in `packaging/agent.toml.sample` (a unit test parses it, so it cannot
//! drift from this file).
//!
//! # Strictness
//!
//! Unknown sections and keys, values of the wrong type (a NaN or infinity included), relative
//! paths and values out of range are errors naming the file and the line. Every problem of
//! every file is reported at once. Files that decide whom the agent obeys (the configuration
//! files, `config.d/`, the CA certificate, the registration key file) must be owned by root (or
//! the agent's own user) and not writable by group or others.
//!
//! # Secrets
//!
//! The registration key is a [`RegistrationKey`]: its `Debug` and `Display` never show it,
//! and no error message contains it (not even the TOML parser's).
//! `registration_key_file` is read by every [`Config::load`] (the daemon calls it again on
//! SIGHUP); a key file readable by group or others is a warning.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

/// The main configuration file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/chaos-agent/agent.toml";
/// The drop-in directory, beside the main file.
pub const DROP_IN_DIR: &str = "config.d";
/// `[agent] state_dir` when neither the command line nor a file sets it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/chaos-agent";
/// `[agent] outbox_max_bytes` default: 64 MiB.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 64 << 20;
/// The smallest outbox accepted: one request body (`chaos_protocol::MAX_BODY_BYTES`).
pub const MIN_OUTBOX_MAX_BYTES: u64 = 1 << 20;
/// `[agent] log_level` default.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Long-poll waits the agent accepts, in seconds (the protocol's limit is 60).
pub const POLL_WAIT_SECS: std::ops::RangeInclusive<u64> = 1..=60;
/// Where the DNS resolvers spared by `spare_dns_resolvers` are read.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Every section and its keys, in the order they are documented. The one list that decides
/// what is known: unknown keys are errors, and the sample file must show each of these.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "control_plane",
        &[
            "url",
            "ca_file",
            "ca_sha256",
            "registration_key",
            "registration_key_file",
            "proxy_from_env",
        ],
    ),
    (
        "agent",
        &[
            "state_dir",
            "poll_wait_secs",
            "outbox_max_bytes",
            "log_format",
            "log_level",
        ],
    ),
    (
        "self_protection",
        &[
            "spare_control_plane",
            "spare_dns_resolvers",
            "extra_spared_destinations",
        ],
    ),
];

// ---------------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------------

/// The daemon's configuration, merged from every file and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[control_plane]`: where to connect and how to trust it.
    pub control_plane: ControlPlane,
    /// `[agent]`: the daemon's own settings.
    pub agent: AgentSettings,
    /// `[self_protection]`: what network faults must never cut off.
    pub self_protection: SelfProtection,
    /// The files read, in the order they were applied.
    pub sources: Vec<PathBuf>,
}

/// `[control_plane]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// `url`, normalised: `https://HOST[:PORT]`, no trailing slash, no path.
    pub url: String,
    /// The host of `url` (an IPv6 address without its brackets).
    pub host: String,
    /// The port of `url` (443 when not written).
    pub port: u16,
    /// `ca_file`: the control plane's CA certificate (PEM).
    pub ca_file: PathBuf,
    /// The contents of `ca_file`, read by [`Config::load`].
    pub ca_pem: Vec<u8>,
    /// `ca_sha256`: the CA's expected SHA-256 fingerprint, normalised to uppercase pairs
    /// joined by `:` (as `chaos-control init` prints it). Checked when the client is built.
    pub ca_sha256: Option<String>,
    /// The registration key, from `registration_key` or read from `registration_key_file`.
    /// `None` when neither is set: the daemon then needs the identity in its state directory.
    pub registration_key: Option<RegistrationKey>,
    /// `registration_key_file`, when the key came from a file (for messages).
    pub registration_key_file: Option<PathBuf>,
    /// `proxy_from_env`: use `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` (default false).
    pub proxy_from_env: bool,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ca_file", &self.ca_file)
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("ca_sha256", &self.ca_sha256)
            .field("registration_key", &self.registration_key)
            .field("registration_key_file", &self.registration_key_file)
            .field("proxy_from_env", &self.proxy_from_env)
            .finish()
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// `state_dir`, when a file sets it. Use [`AgentSettings::state_dir`], which applies the
    /// command line and the default.
    pub state_dir: Option<PathBuf>,
    /// `poll_wait_secs`, when a file sets it (1..=60). Use [`AgentSettings::poll_wait`].
    pub poll_wait_secs: Option<u64>,
    /// `outbox_max_bytes`: how much unsent status/log/result data is kept on disk (default
    /// [`DEFAULT_OUTBOX_MAX_BYTES`], at least [`MIN_OUTBOX_MAX_BYTES`]).
    pub outbox_max_bytes: u64,
    /// `log_format`: how the daemon writes its own log lines on stderr (default text).
    pub log_format: LogFormat,
    /// `log_level`: a tracing filter (`info`, `debug`, `chaos_engine=debug,info`…), default
    /// [`DEFAULT_LOG_LEVEL`]. `CHAOS_AGENT_LOG` in the environment wins over it.
    pub log_level: String,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            state_dir: None,
            poll_wait_secs: None,
            outbox_max_bytes: DEFAULT_OUTBOX_MAX_BYTES,
            log_format: LogFormat::Text,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
        }
    }
}

impl AgentSettings {
    /// The state directory: the command line (`--state-dir` or `CHAOS_AGENT_STATE_DIR`) when
    /// given, else `state_dir` from the files, else [`DEFAULT_STATE_DIR`].
    pub fn state_dir(&self, from_command_line: Option<&Path>) -> PathBuf {
        from_command_line
            .map(Path::to_path_buf)
            .or_else(|| self.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }

    /// The long-poll wait: `poll_wait_secs` when set, else the server's
    /// `settings.poll_wait_secs`, kept within 1..=60 s.
    pub fn poll_wait(&self, server_poll_wait_secs: u64) -> Duration {
        let secs = self.poll_wait_secs.unwrap_or(server_poll_wait_secs);
        Duration::from_secs(secs.clamp(*POLL_WAIT_SECS.start(), *POLL_WAIT_SECS.end()))
    }
}

/// `[agent] log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (journald adds the time).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[self_protection]`: what network faults run by the daemon must leave alone, so the agent
/// can always hear an abort and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfProtection {
    /// `spare_control_plane` (default true): exclude the control plane's addresses (the
    /// resolved host of `url`) and port from network faults.
    pub spare_control_plane: bool,
    /// `spare_dns_resolvers` (default true): exclude the `nameserver`s of `/etc/resolv.conf`
    /// (see [`nameservers`]), which the agent needs to resolve the control plane.
    pub spare_dns_resolvers: bool,
    /// `extra_spared_destinations` (default empty): more addresses or networks to exclude.
    pub extra_spared_destinations: Vec<SparedDestination>,
}

impl Default for SelfProtection {
    fn default() -> Self {
        SelfProtection {
            spare_control_plane: true,
            spare_dns_resolvers: true,
            extra_spared_destinations: Vec::new(),
        }
    }
}

/// An address (`192.0.2.7`, `2001:db8::1`) or network (`10.0.0.0/8`, `2001:db8::/32`) that
/// network faults must not touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparedDestination {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// The prefix length: 32 or 128 for a single address.
    pub prefix_len: u8,
}

impl fmt::Display for SparedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for SparedDestination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("{s:?} is not an IP address or network (write e.g. \"192.0.2.7\" or \"10.0.0.0/8\"; host names are not resolved here)")
        })?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let masked = mask(addr, prefix_len);
        if masked != addr {
            return Err(format!(
                "{s:?} has host bits set after the /{prefix_len}: write \"{masked}/{prefix_len}\""
            ));
        }
        Ok(SparedDestination { addr, prefix_len })
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// The `nameserver` addresses of a `resolv.conf` text, in order, without duplicates (an IPv6
/// zone such as `%eth0` is dropped). Lines that are not valid nameserver lines are skipped, as
/// the resolver itself does.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let addr = word.split('%').next().unwrap_or(word);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The registration key
// ---------------------------------------------------------------------------------------------

/// A registration key (`ccr_` + 64 lowercase hex digits). Printing it, with `{}` or `{:?}`,
/// shows `ccr_…(redacted)`; [`RegistrationKey::expose`] is the only way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationKey(String);

/// What a registration key looks like, for messages.
const KEY_FORMAT: &str = "\"ccr_\" followed by 64 lowercase hex digits, as printed by \
                          `chaos-control agents add NAME`";

impl RegistrationKey {
    /// Check the format. The error never contains the text.
    pub fn parse(text: &str) -> Result<RegistrationKey, String> {
        let ok = text.strip_prefix("ccr_").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(RegistrationKey(text.to_string()))
        } else {
            Err(format!("not a registration key: expected {KEY_FORMAT}"))
        }
    }

    /// The key itself, to send in the registration request. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RegistrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ccr_…(redacted)")
    }
}

impl fmt::Display for RegistrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ccr_…(redacted)")
    }
}

/// Replace anything that looks like a registration key (`ccr_` and the word after it) with
/// `ccr_…(redacted)`: the last guard on every error message.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("ccr_") {
        let tail = &rest[i + 4..];
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        out.push_str(&rest[..i + 4]);
        if end > 0 {
            out.push_str("…(redacted)");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What kind of configuration error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// No configuration file exists at all.
    NoConfig,
    /// A file or directory could not be read (besides "does not exist" where that is fine).
    Io,
    /// A file is not valid: syntax, unknown key, wrong type or value, missing key, unsafe
    /// permissions, or an unusable CA or key file.
    Invalid,
}

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, when the problem is in one.
    pub file: Option<PathBuf>,
    /// The line (1-based) in `file`, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do; never contains a secret.
    pub message: String,
}

impl Problem {
    fn new(file: Option<&Path>, line: Option<usize>, message: impl AsRef<str>) -> Problem {
        Problem {
            file: file.map(Path::to_path_buf),
            line,
            message: redact(message.as_ref()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: {}", file.display(), self.message),
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            (None, _) => f.write_str(&self.message),
        }
    }
}

/// The configuration could not be loaded: every problem found, each with its file and line.
#[derive(Debug, Clone)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    problems: Vec<Problem>,
}

impl ConfigError {
    fn one(kind: ConfigErrorKind, problem: Problem) -> ConfigError {
        ConfigError {
            kind,
            problems: vec![problem],
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// Every problem found (at least one).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// One problem per line, `FILE:LINE: message`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Read `main` and `<dir of main>/config.d/*.toml`, merge them and check everything:
    /// reads the CA certificate and the registration key file. Returns the configuration and
    /// warnings for people (a key file others can read, ignored files). Call it again to
    /// reload.
    pub fn load(main: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let files = discover(main, &mut warnings)?;
        let mut raw = Raw::default();
        let mut problems = Vec::new();
        let mut kind = ConfigErrorKind::Invalid;
        for path in &files {
            match read_trusted(path) {
                Ok(text) => raw.read_document(path, &text, &mut problems),
                Err((k, message)) => {
                    if k == ConfigErrorKind::Io {
                        kind = k;
                    }
                    problems.push(Problem::new(None, None, message));
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { kind, problems });
        }
        let config = raw.finish(main, files, &mut warnings)?;
        Ok((config, warnings))
    }
}

/// The files to read, in order: the main file if it exists, then the drop-ins.
fn discover(main: &Path, warnings: &mut Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    let io_err =
        |message: String| ConfigError::one(ConfigErrorKind::Io, Problem::new(None, None, message));
    let mut files = Vec::new();
    match fs::metadata(main) {
        Ok(m) if m.is_file() => files.push(main.to_path_buf()),
        Ok(_) => {
            return Err(io_err(format!(
                "{} is not a regular file (--config names the main configuration file)",
                main.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("cannot read {}: {e}", main.display()))),
    }
    let dir = drop_in_dir(main);
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {
            if let Err(message) = check_trusted(&dir, &m, "the drop-in directory") {
                return Err(ConfigError::one(
                    ConfigErrorKind::Invalid,
                    Problem::new(None, None, message),
                ));
            }
            let entries = fs::read_dir(&dir)
                .map_err(|e| io_err(format!("cannot read {}: {e}", dir.display())))?;
            let mut drop_ins = Vec::new();
            for entry in entries {
                let entry =
                    entry.map_err(|e| io_err(format!("cannot read {}: {e}", dir.display())))?;
                let name = entry.file_name();
                let name_bytes = name.as_encoded_bytes();
                if name_bytes.starts_with(b".") {
                    continue;
                }
                let path = entry.path();
                if !name_bytes.ends_with(b".toml") {
                    warnings.push(format!(
                        "ignored {} (only *.toml files of {} are read)",
                        path.display(),
                        dir.display()
                    ));
                    continue;
                }
                match fs::metadata(&path) {
                    Ok(m) if m.is_file() => drop_ins.push((name, path)),
                    Ok(_) => {
                        return Err(io_err(format!("{} is not a regular file", path.display())))
                    }
                    Err(e) => return Err(io_err(format!("cannot read {}: {e}", path.display()))),
                }
            }
            drop_ins.sort();
            files.extend(drop_ins.into_iter().map(|(_, p)| p));
        }
        Ok(_) => return Err(io_err(format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("cannot read {}: {e}", dir.display()))),
    }
    if files.is_empty() {
        let parent = main.parent().unwrap_or(Path::new("."));
        return Err(ConfigError::one(
            ConfigErrorKind::NoConfig,
            Problem::new(
                None,
                None,
                format!(
                    "no configuration: {main} does not exist and {dir} holds no *.toml file. \
                     Create {suggest} with the [control_plane] section that `chaos-control init` \
                     prints (url, ca_file, ca_sha256) and the key from `chaos-control agents add \
                     NAME` as registration_key; {sample} documents every key",
                    main = main.display(),
                    dir = dir.display(),
                    suggest = dir.join("20-control.toml").display(),
                    sample = parent.join("agent.toml.sample").display(),
                ),
            ),
        ));
    }
    Ok(files)
}

/// `<dir of main>/config.d`.
fn drop_in_dir(main: &Path) -> PathBuf {
    match main.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(DROP_IN_DIR),
        _ => PathBuf::from(DROP_IN_DIR),
    }
}

/// Files that decide whom the agent obeys must be owned by root (or the agent's user) and not
/// writable by group or others.
fn check_trusted(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{} ({what}) is owned by uid {}, not by root: whoever owns it can give this agent \
             orders; chown root {}",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} ({what}) is writable by group or others (mode {mode:04o}): whoever can write \
             it can give this agent orders; chmod go-w {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Read a configuration file after checking who may change it.
fn read_trusted(path: &Path) -> Result<String, (ConfigErrorKind, String)> {
    let meta = fs::metadata(path).map_err(|e| {
        (
            ConfigErrorKind::Io,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    check_trusted(path, &meta, "a configuration file")
        .map_err(|m| (ConfigErrorKind::Invalid, m))?;
    let bytes = fs::read(path).map_err(|e| {
        (
            ConfigErrorKind::Io,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    String::from_utf8(bytes).map_err(|_| {
        (
            ConfigErrorKind::Invalid,
            format!("{}: not UTF-8 text", path.display()),
        )
    })
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loc {
    file: PathBuf,
    line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value and where it was set.
#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    loc: Loc,
}

/// Checked values as the files set them, later files replacing earlier ones.
#[derive(Debug, Default)]
struct Raw {
    url: Option<At<Url>>,
    ca_file: Option<At<PathBuf>>,
    ca_sha256: Option<At<String>>,
    registration_key: Option<At<RegistrationKey>>,
    registration_key_file: Option<At<PathBuf>>,
    proxy_from_env: Option<At<bool>>,
    state_dir: Option<At<PathBuf>>,
    poll_wait_secs: Option<At<u64>>,
    outbox_max_bytes: Option<At<u64>>,
    log_format: Option<At<LogFormat>>,
    log_level: Option<At<String>>,
    spare_control_plane: Option<At<bool>>,
    spare_dns_resolvers: Option<At<bool>>,
    extra_spared_destinations: Option<At<Vec<SparedDestination>>>,
}

/// The section a key belongs to, for "did you mean" hints.
fn section_of(key: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .find(|(_, keys)| keys.contains(&key))
        .map(|(s, _)| *s)
}

fn section_list() -> String {
    SECTIONS
        .iter()
        .map(|(s, _)| format!("[{s}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Raw {
    /// Check one file's keys and values and apply them over what earlier files set.
    /// Problems are appended in the order of their lines.
    fn read_document(&mut self, path: &Path, text: &str, problems: &mut Vec<Problem>) {
        let mut found = Vec::new();
        self.read_document_unsorted(path, text, &mut found);
        found.sort_by_key(|p| p.line);
        problems.append(&mut found);
    }

    fn read_document_unsorted(&mut self, path: &Path, text: &str, problems: &mut Vec<Problem>) {
        let file = Some(path);
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                // Only the message and the line: the error's own rendering quotes the source
                // line, which may hold the registration key.
                let line = e.span().map(|s| line_of(text, s.start));
                problems.push(Problem::new(
                    file,
                    line,
                    format!("invalid TOML: {}", e.message().trim_end()),
                ));
                return;
            }
        };
        for (key, value) in doc.get_ref().iter() {
            let name: &str = key.get_ref();
            let line = Some(line_of(text, key.span().start));
            let Some((section, keys)) = SECTIONS.iter().find(|(s, _)| *s == name) else {
                let message = match (section_of(name), value.get_ref()) {
                    (Some(s), _) => format!(
                        "unknown key {name:?} at the top level: it belongs in [{s}] (write it \
                         under a [{s}] line)"
                    ),
                    (None, DeValue::Table(_)) => {
                        format!("unknown section [{name}] (known: {})", section_list())
                    }
                    (None, _) => format!(
                        "unknown key {name:?} at the top level (keys go in a section: {})",
                        section_list()
                    ),
                };
                problems.push(Problem::new(file, line, message));
                continue;
            };
            let DeValue::Table(table) = value.get_ref() else {
                problems.push(Problem::new(
                    file,
                    line,
                    format!(
                        "{section} must be a section (a [{section}] line followed by its keys), \
                         not {}",
                        describe(value.get_ref())
                    ),
                ));
                continue;
            };
            for (k, v) in table.iter() {
                let kname: &str = k.get_ref();
                let Some(&known) = keys.iter().find(|x| **x == kname) else {
                    let mut message = format!(
                        "unknown key {kname:?} in [{section}] (known: {})",
                        keys.join(", ")
                    );
                    if let Some(other) = section_of(kname) {
                        message.push_str(&format!("; {kname} belongs in [{other}]"));
                    }
                    problems.push(Problem::new(
                        file,
                        Some(line_of(text, k.span().start)),
                        message,
                    ));
                    continue;
                };
                let vline = line_of(text, v.span().start);
                let loc = Loc {
                    file: path.to_path_buf(),
                    line: vline,
                };
                if let Err(m) = self.set(section, known, v.get_ref(), loc) {
                    problems.push(Problem::new(
                        file,
                        Some(vline),
                        format!("{section}.{known}: {m}"),
                    ));
                }
            }
        }
    }

    /// Check and store one value.
    fn set(&mut self, section: &str, key: &str, v: &DeValue<'_>, loc: Loc) -> Result<(), String> {
        fn at<T>(value: T, loc: Loc) -> Option<At<T>> {
            Some(At { value, loc })
        }
        match (section, key) {
            ("control_plane", "url") => self.url = at(Url::parse(want_str(v)?)?, loc),
            ("control_plane", "ca_file") => self.ca_file = at(want_abs_path(v)?, loc),
            ("control_plane", "ca_sha256") => {
                self.ca_sha256 = at(parse_fingerprint(want_str(v)?)?, loc)
            }
            ("control_plane", "registration_key") => {
                // Never `want_str(v)?` into a message: the value is a secret.
                let DeValue::String(s) = v else {
                    return Err(format!("must be a string, not {}", describe_type(v)));
                };
                self.registration_key = at(RegistrationKey::parse(s)?, loc)
            }
            ("control_plane", "registration_key_file") => {
                self.registration_key_file = at(want_abs_path(v)?, loc)
            }
            ("control_plane", "proxy_from_env") => self.proxy_from_env = at(want_bool(v)?, loc),
            ("agent", "state_dir") => self.state_dir = at(want_abs_path(v)?, loc),
            ("agent", "poll_wait_secs") => {
                let n = want_u64(v, "a whole number of seconds")?;
                if !POLL_WAIT_SECS.contains(&n) {
                    return Err(format!(
                        "{n} is out of range: the long poll waits 1 to 60 seconds (the \
                         protocol's limit); leave it unset to use the control plane's setting"
                    ));
                }
                self.poll_wait_secs = at(n, loc)
            }
            ("agent", "outbox_max_bytes") => {
                let n = match v {
                    DeValue::String(s) => fault_core::Bytes::from_str(s)?.get(),
                    _ => want_u64(v, "a size (\"64MiB\") or a number of bytes")?,
                };
                if n < MIN_OUTBOX_MAX_BYTES {
                    return Err(format!(
                        "{} is too small: the outbox must hold at least one request body \
                         (1MiB)",
                        fault_core::Bytes(n)
                    ));
                }
                self.outbox_max_bytes = at(n, loc)
            }
            ("agent", "log_format") => {
                let f = match want_str(v)? {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(format!("{other:?}: use \"text\" or \"json\"")),
                };
                self.log_format = at(f, loc)
            }
            ("agent", "log_level") => {
                let s = want_str(v)?;
                if s.trim().is_empty() {
                    return Err("empty: use e.g. \"info\" or \"debug\"".into());
                }
                tracing_subscriber::EnvFilter::try_new(s).map_err(|e| {
                    format!("{s:?} is not a log filter ({e}); use e.g. \"info\", \"debug\" or \"chaos_engine=debug,info\"")
                })?;
                self.log_level = at(s.to_string(), loc)
            }
            ("self_protection", "spare_control_plane") => {
                self.spare_control_plane = at(want_bool(v)?, loc)
            }
            ("self_protection", "spare_dns_resolvers") => {
                self.spare_dns_resolvers = at(want_bool(v)?, loc)
            }
            ("self_protection", "extra_spared_destinations") => {
                let DeValue::Array(items) = v else {
                    return Err(format!(
                        "must be a list of addresses or networks (e.g. [\"10.0.0.0/8\"]), not {}",
                        describe(v)
                    ));
                };
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let s = want_str(item.get_ref()).map_err(|m| format!("[{i}]: {m}"))?;
                    let d: SparedDestination = s.parse().map_err(|m| format!("[{i}]: {m}"))?;
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
                self.extra_spared_destinations = at(out, loc)
            }
            _ => return Err("internal error: a known key without a setter".into()),
        }
        Ok(())
    }

    /// Cross-key checks, required keys, and the files the values name.
    fn finish(
        self,
        main: &Path,
        sources: Vec<PathBuf>,
        warnings: &mut Vec<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let where_to = format!(
            "set it in the [control_plane] section of {} or of a {}/*.toml drop-in (`chaos-control \
             init` prints the section)",
            main.display(),
            drop_in_dir(main).display()
        );
        if self.url.is_none() {
            problems.push(Problem::new(
                None,
                None,
                format!("control_plane.url is missing: {where_to}"),
            ));
        }
        if self.ca_file.is_none() {
            problems.push(Problem::new(
                None,
                None,
                format!("control_plane.ca_file is missing: {where_to}"),
            ));
        }
        let mut ca_pem = Vec::new();
        if let Some(ca) = &self.ca_file {
            match read_ca(&ca.value) {
                Ok(pem) => ca_pem = pem,
                Err(m) => problems.push(Problem::new(
                    Some(&ca.loc.file),
                    Some(ca.loc.line),
                    format!("control_plane.ca_file: {m}"),
                )),
            }
        }
        let mut registration_key = None;
        match (&self.registration_key, &self.registration_key_file) {
            (Some(k), Some(f)) => problems.push(Problem::new(
                None,
                None,
                format!(
                    "control_plane.registration_key ({}) and control_plane.registration_key_file \
                     ({}) are both set: keep one",
                    k.loc, f.loc
                ),
            )),
            (Some(k), None) => {
                if let Ok(m) = fs::metadata(&k.loc.file) {
                    if m.mode() & 0o044 != 0 {
                        warnings.push(format!(
                            "{} holds the registration key and is readable by group or others \
                             (mode {:04o}): chmod 0600 it, or use registration_key_file",
                            k.loc.file.display(),
                            m.mode() & 0o7777
                        ));
                    }
                }
                registration_key = Some(k.value.clone());
            }
            (None, Some(f)) => match read_key_file(&f.value, warnings) {
                Ok(k) => registration_key = Some(k),
                Err(m) => problems.push(Problem::new(
                    Some(&f.loc.file),
                    Some(f.loc.line),
                    format!("control_plane.registration_key_file: {m}"),
                )),
            },
            (None, None) => {}
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                kind: ConfigErrorKind::Invalid,
                problems,
            });
        }
        let (Some(url), Some(ca_file)) = (self.url, self.ca_file) else {
            unreachable!("missing url and ca_file are problems above");
        };
        let defaults = AgentSettings::default();
        let protection = SelfProtection::default();
        Ok(Config {
            control_plane: ControlPlane {
                url: url.value.normalized,
                host: url.value.host,
                port: url.value.port,
                ca_file: ca_file.value,
                ca_pem,
                ca_sha256: self.ca_sha256.map(|a| a.value),
                registration_key,
                registration_key_file: self.registration_key_file.map(|a| a.value),
                proxy_from_env: self.proxy_from_env.is_some_and(|a| a.value),
            },
            agent: AgentSettings {
                state_dir: self.state_dir.map(|a| a.value),
                poll_wait_secs: self.poll_wait_secs.map(|a| a.value),
                outbox_max_bytes: self
                    .outbox_max_bytes
                    .map_or(defaults.outbox_max_bytes, |a| a.value),
                log_format: self.log_format.map_or(defaults.log_format, |a| a.value),
                log_level: self.log_level.map_or(defaults.log_level, |a| a.value),
            },
            self_protection: SelfProtection {
                spare_control_plane: self
                    .spare_control_plane
                    .map_or(protection.spare_control_plane, |a| a.value),
                spare_dns_resolvers: self
                    .spare_dns_resolvers
                    .map_or(protection.spare_dns_resolvers, |a| a.value),
                extra_spared_destinations: self
                    .extra_spared_destinations
                    .map_or(protection.extra_spared_destinations, |a| a.value),
            },
            sources,
        })
    }
}

/// Read the CA certificate: trusted file, PEM with a certificate, no private key.
fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let hint = "copy the ca.pem that `chaos-control init` wrote on the control plane host";
    let meta =
        fs::metadata(path).map_err(|e| format!("cannot read {}: {e} ({hint})", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file ({hint})", path.display()));
    }
    check_trusted(path, &meta, "the CA certificate")?;
    let pem =
        fs::read(path).map_err(|e| format!("cannot read {}: {e} ({hint})", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(format!(
            "{} contains a private key: copy only the CA certificate (ca.pem), never its key",
            path.display()
        ));
    }
    if !(text.contains("-----BEGIN CERTIFICATE-----") && text.contains("-----END CERTIFICATE-----"))
    {
        return Err(format!(
            "{} is not a PEM certificate (no BEGIN/END CERTIFICATE block; {hint})",
            path.display()
        ));
    }
    Ok(pem)
}

/// Read a registration key file. Errors name the file, never its content.
fn read_key_file(path: &Path, warnings: &mut Vec<String>) -> Result<RegistrationKey, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    check_trusted(path, &meta, "the registration key file")?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o044 != 0 {
        warnings.push(format!(
            "{} (the registration key) is readable by group or others (mode {mode:04o}): \
             chmod 0600 {}",
            path.display(),
            path.display()
        ));
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{}: not a registration key (not text)", path.display()))?;
    let key = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if key.is_empty() {
        return Err(format!(
            "{} is empty: put the key from `chaos-control agents add NAME` in it",
            path.display()
        ));
    }
    RegistrationKey::parse(key).map_err(|m| format!("{}: {m}", path.display()))
}

/// `url`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    normalized: String,
    host: String,
    port: u16,
}

impl Url {
    fn parse(s: &str) -> Result<Url, String> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") {
            return Err(format!(
                "{s:?} is plain http://: the agent talks to the control plane over https:// only \
                 (its CA is pinned; over http the agent's token and orders could be read and \
                 forged on the way); write https://"
            ));
        }
        if !lower.starts_with("https://") {
            return Err(format!(
                "{s:?} must start with https:// (e.g. \"https://control.example:8443\")"
            ));
        }
        let rest = &s["https://".len()..];
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "{s:?} has a path, query or fragment: write only https://HOST[:PORT] (the agent \
                 adds /api/v1/…)"
            ));
        }
        if authority.contains('@') {
            return Err(format!(
                "{s:?} has a user name or password: the agent authenticates with its own token; \
                 write only https://HOST[:PORT]"
            ));
        }
        let (host, port_text) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(format!("{s:?}: an IPv6 address needs its closing ]"));
            };
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{s:?}: [{addr}] is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{s:?}: expected :PORT after the IPv6 address"))?,
                ),
            };
            (addr.to_ascii_lowercase(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(format!(
                    "{s:?}: an IPv6 address goes in brackets, e.g. https://[2001:db8::1]:8443"
                ));
            }
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !host.starts_with(['-', '.']);
            if !valid {
                return Err(format!(
                    "{s:?}: the host must be a DNS name or an IP address (letters, digits, '-' \
                     and '.')"
                ));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port_text {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: the port must be 1 to 65535")),
            },
        };
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let normalized = if port == 443 && port_text.is_none() {
            format!("https://{shown_host}")
        } else {
            format!("https://{shown_host}:{port}")
        };
        Ok(Url {
            normalized,
            host,
            port,
        })
    }
}

/// A SHA-256 fingerprint: 64 hex digits, colons allowed anywhere between pairs.
fn parse_fingerprint(s: &str) -> Result<String, String> {
    let digits: String = s.chars().filter(|&c| c != ':').collect();
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a SHA-256 fingerprint: expected 64 hex digits, colons allowed (as \
             `chaos-control init` prints it, e.g. \"AB:CD:…\")"
        ));
    }
    let upper = digits.to_ascii_uppercase();
    Ok(upper
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(":"))
}

/// "an integer", "a float (nan: NaN is not a number)", … for type errors.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::Float(f) => {
            let t = f.as_str().to_ascii_lowercase();
            if t.contains("nan") {
                "nan (NaN is not a number)".into()
            } else if t.contains("inf") {
                format!("{} (infinity is not a number)", f.as_str())
            } else {
                format!("the float {}", f.as_str())
            }
        }
        other => describe_type(other).into(),
    }
}

/// The type of a value with its article, without the value (safe for secrets).
fn describe_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

fn want_str<'a>(v: &'a DeValue<'_>) -> Result<&'a str, String> {
    match v {
        DeValue::String(s) => Ok(s),
        other => Err(format!("must be a string, not {}", describe(other))),
    }
}

fn want_bool(v: &DeValue<'_>) -> Result<bool, String> {
    match v {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(format!(
            "must be true or false (without quotes), not {}",
            describe(other)
        )),
    }
}

fn want_u64(v: &DeValue<'_>, what: &str) -> Result<u64, String> {
    match v {
        DeValue::Integer(i) => {
            let n = i128::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("{i} is too large"))?;
            if n < 0 {
                return Err(format!("{n} is negative: expected {what}"));
            }
            u64::try_from(n).map_err(|_| format!("{n} is too large"))
        }
        other => Err(format!("must be {what}, not {}", describe(other))),
    }
}

fn want_abs_path(v: &DeValue<'_>) -> Result<PathBuf, String> {
    let s = want_str(v)?;
    if s.is_empty() {
        return Err("empty: expected an absolute path".into());
    }
    if s.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!(
            "{s:?} is relative: write an absolute path (starting with /)"
        ));
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    const KEY: &str = "ccr_3f9c0d1e2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5";
    const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
    const CA: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    const SAMPLE: &str = include_str!("../../../packaging/agent.toml.sample");

    /// A directory of its own under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "chaos-agent-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            Dir(p)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        /// Write `name` (creating config.d if needed) with `mode`.
        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.path(name);
            if let Some(parent) = p.parent() {
                if !parent.exists() {
                    fs::create_dir_all(parent).unwrap();
                    fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).unwrap();
                }
            }
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
        fn ca(&self) -> PathBuf {
            self.write("ca.pem", CA, 0o644)
        }
        fn main(&self) -> PathBuf {
            self.path("agent.toml")
        }
        /// The snippet `chaos-control init` prints, with the key filled in.
        fn init_snippet(&self) -> String {
            let ca = self.ca();
            format!(
                "[control_plane]\n\
                 url = \"https://host:8443\"\n\
                 ca_file = \"{}\"        # a copy of /var/lib/chaos-control/ca.pem\n\
                 ca_sha256 = \"{FP}\"\n\
                 registration_key = \"{KEY}\"\n",
                ca.display()
            )
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn load(d: &Dir) -> Result<(Config, Vec<String>), ConfigError> {
        Config::load(&d.main())
    }

    fn err(d: &Dir) -> ConfigError {
        match load(d) {
            Ok((c, _)) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_init_snippet_alone_is_a_complete_configuration() {
        let d = Dir::new();
        let p = d.write("config.d/20-control.toml", &d.init_snippet(), 0o600);
        let (c, warnings) = load(&d).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.sources, vec![p]);
        assert_eq!(c.control_plane.url, "https://host:8443");
        assert_eq!(c.control_plane.host, "host");
        assert_eq!(c.control_plane.port, 8443);
        assert_eq!(c.control_plane.ca_pem, CA.as_bytes());
        assert_eq!(c.control_plane.ca_sha256.as_deref(), Some(FP));
        assert_eq!(
            c.control_plane.registration_key.as_ref().unwrap().expose(),
            KEY
        );
        assert!(!c.control_plane.proxy_from_env);
        assert_eq!(c.agent, AgentSettings::default());
        assert_eq!(c.self_protection, SelfProtection::default());
        assert_eq!(
            c.agent.state_dir(None),
            PathBuf::from("/var/lib/chaos-agent")
        );
        assert_eq!(c.agent.poll_wait(30), Duration::from_secs(30));
        assert_eq!(c.agent.poll_wait(600), Duration::from_secs(60));
        assert_eq!(c.agent.poll_wait(0), Duration::from_secs(1));
        assert_eq!(c.agent.outbox_max_bytes, 64 << 20);
    }

    #[test]
    fn no_file_at_all_says_what_to_create() {
        let d = Dir::new();
        let e = err(&d);
        assert_eq!(e.kind(), ConfigErrorKind::NoConfig);
        let m = e.to_string();
        assert!(m.contains("config.d/20-control.toml"), "{m}");
        assert!(m.contains("chaos-control init"), "{m}");
        // An empty config.d is no configuration either.
        fs::create_dir(d.path("config.d")).unwrap();
        fs::set_permissions(d.path("config.d"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(err(&d).kind(), ConfigErrorKind::NoConfig);
    }

    #[test]
    fn drop_ins_override_key_by_key_in_lexical_order() {
        let d = Dir::new();
        let main = d.write(
            "agent.toml",
            &format!(
                "{}\n[agent]\nlog_format = \"json\"\npoll_wait_secs = 10\n",
                d.init_snippet()
            ),
            0o600,
        );
        let b = d.write(
            "config.d/50-b.toml",
            "[agent]\npoll_wait_secs = 50\n[control_plane]\nurl = \"https://b.example\"\n",
            0o644,
        );
        let a = d.write(
            "config.d/10-a.toml",
            "[agent]\npoll_wait_secs = 20\noutbox_max_bytes = \"2MiB\"\n",
            0o644,
        );
        d.write("config.d/.hidden.toml", "garbage [", 0o644);
        d.write("config.d/99-z.toml.bak", "garbage [", 0o644);
        let (c, warnings) = load(&d).unwrap();
        assert_eq!(c.sources, vec![main, a, b]);
        assert_eq!(c.agent.poll_wait_secs, Some(50)); // the last file wins
        assert_eq!(c.agent.poll_wait(30), Duration::from_secs(50));
        assert_eq!(c.agent.outbox_max_bytes, 2 << 20); // only 10-a sets it
        assert_eq!(c.agent.log_format, LogFormat::Json); // only the main file sets it
        assert_eq!(c.control_plane.url, "https://b.example");
        assert_eq!(c.control_plane.port, 443);
        assert_eq!(
            c.control_plane.registration_key.as_ref().unwrap().expose(),
            KEY
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("99-z.toml.bak"), "{warnings:?}");
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let d = Dir::new();
        d.write("agent.toml", &d.init_snippet(), 0o600);
        let p = d.write(
            "config.d/20-control.toml",
            "# comment\n\n[control_plane]\nur = \"https://x\"\n\n[agent]\npoll_wait_secs = 5\nspare_control_plane = false\n[nope]\nx = 1\n",
            0o644,
        );
        let e = err(&d);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid);
        let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            lines[0],
            format!(
                "{}:4: unknown key \"ur\" in [control_plane] (known: url, ca_file, ca_sha256, \
                 registration_key, registration_key_file, proxy_from_env)",
                p.display()
            )
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&format!(
                "{}:8: unknown key \"spare_control_plane\" in [agent]",
                p.display()
            )) && l
                .ends_with("spare_control_plane belongs in [self_protection]")),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!(
                "{}:9: unknown section [nope] (known: [control_plane], [agent], [self_protection])",
                p.display()
            )),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn keys_outside_sections_and_nested_tables_are_refused() {
        let d = Dir::new();
        d.write(
            "agent.toml",
            &format!(
                "url = \"https://x\"\n{}[control_plane.tls]\nx = 1\n",
                d.init_snippet()
            ),
            0o600,
        );
        let m = err(&d).to_string();
        assert!(
            m.contains(
                "agent.toml:1: unknown key \"url\" at the top level: it belongs in [control_plane]"
            ),
            "{m}"
        );
        assert!(
            m.contains(":7: unknown key \"tls\" in [control_plane]"),
            "{m}"
        );
    }

    #[test]
    fn plain_http_is_refused_with_the_reason() {
        let d = Dir::new();
        let text = d
            .init_snippet()
            .replace("https://host:8443", "http://host:8443");
        let p = d.write("agent.toml", &text, 0o600);
        let m = err(&d).to_string();
        assert!(
            m.starts_with(&format!(
                "{}:2: control_plane.url: \"http://host:8443\" is plain http://",
                p.display()
            )),
            "{m}"
        );
        assert!(m.contains("https:// only"), "{m}");
    }

    #[test]
    fn urls_are_checked_and_normalised() {
        let ok = |s: &str| Url::parse(s).unwrap();
        assert_eq!(ok("https://h.example/").normalized, "https://h.example");
        assert_eq!(
            ok("HTTPS://H.Example:8443").normalized,
            "https://h.example:8443"
        );
        let v6 = ok("https://[2001:DB8::1]:8443");
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 8443));
        assert_eq!(v6.normalized, "https://[2001:db8::1]:8443");
        assert_eq!(ok("https://10.0.0.1").port, 443);
        for bad in [
            "https://",
            "https://:8443",
            "https://h/api",
            "https://h?x=1",
            "https://u:p@h",
            "https://h:0",
            "https://h:99999",
            "https://h:+1",
            "https://2001:db8::1",
            "https://[zz]",
            "https://h h",
            "ftp://h",
            "h:8443",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_missing_ca_file_says_what_to_copy() {
        let d = Dir::new();
        let text = d.init_snippet().replace("ca.pem", "missing.pem");
        let p = d.write("agent.toml", &text, 0o600);
        let m = err(&d).to_string();
        assert!(
            m.starts_with(&format!(
                "{}:3: control_plane.ca_file: cannot read",
                p.display()
            )),
            "{m}"
        );
        assert!(m.contains("chaos-control init"), "{m}");
    }

    #[test]
    fn a_ca_file_must_be_a_certificate_and_not_a_key() {
        let d = Dir::new();
        d.write("agent.toml", &d.init_snippet(), 0o600);
        d.write("ca.pem", "hello\n", 0o644);
        assert!(err(&d).to_string().contains("not a PEM certificate"));
        d.write(
            "ca.pem",
            &format!("{CA}-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"),
            0o644,
        );
        assert!(err(&d).to_string().contains("contains a private key"));
        d.write("ca.pem", CA, 0o666);
        assert!(err(&d)
            .to_string()
            .contains("writable by group or others (mode 0666)"));
    }

    #[test]
    fn required_keys_missing_are_named() {
        let d = Dir::new();
        d.write("agent.toml", "[control_plane]\n", 0o600);
        let e = err(&d);
        let m = e.to_string();
        assert!(m.contains("control_plane.url is missing"), "{m}");
        assert!(m.contains("control_plane.ca_file is missing"), "{m}");
        assert_eq!(e.problems().len(), 2);
    }

    #[test]
    fn key_and_key_file_together_are_refused() {
        let d = Dir::new();
        let kf = d.write("registration.key", &format!("{KEY}\n"), 0o600);
        d.write("agent.toml", &d.init_snippet(), 0o600);
        d.write(
            "config.d/30-key.toml",
            &format!(
                "[control_plane]\nregistration_key_file = \"{}\"\n",
                kf.display()
            ),
            0o600,
        );
        let m = err(&d).to_string();
        assert!(
            m.contains("agent.toml:5) and control_plane.registration_key_file ("),
            "{m}"
        );
        assert!(m.contains("30-key.toml:2) are both set: keep one"), "{m}");
        assert!(!m.contains(&KEY[4..]), "{m}");
    }

    #[test]
    fn a_key_file_is_read_trimmed_and_checked() {
        let d = Dir::new();
        let kf = d.write("registration.key", &format!("  {KEY}\n\n"), 0o600);
        let text = d.init_snippet().replace(
            &format!("registration_key = \"{KEY}\""),
            &format!("registration_key_file = \"{}\"", kf.display()),
        );
        d.write("agent.toml", &text, 0o600);
        let (c, warnings) = load(&d).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c.control_plane.registration_key.as_ref().unwrap().expose(),
            KEY
        );
        assert_eq!(
            c.control_plane.registration_key_file.as_deref(),
            Some(kf.as_path())
        );

        // Readable by others: loads, with a warning.
        fs::set_permissions(&kf, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, warnings) = load(&d).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("readable by group or others (mode 0644)"));

        // Re-read on every load (reload): a bad key now is an error that hides the content.
        let bad = format!("{}Z", &KEY[..KEY.len() - 1]);
        d.write("registration.key", &bad, 0o600);
        let m = err(&d).to_string();
        assert!(m.contains("not a registration key"), "{m}");
        assert!(!m.contains(&bad[4..]), "{m}");
        d.write("registration.key", "\n", 0o600);
        assert!(err(&d).to_string().contains("is empty"));
        fs::remove_file(&kf).unwrap();
        assert!(err(&d)
            .to_string()
            .contains("registration_key_file: cannot read"));
    }

    #[test]
    fn no_key_at_all_is_allowed() {
        let d = Dir::new();
        let text = d
            .init_snippet()
            .replace(&format!("registration_key = \"{KEY}\"\n"), "");
        d.write("agent.toml", &text, 0o644);
        let (c, warnings) = load(&d).unwrap();
        assert!(c.control_plane.registration_key.is_none());
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn an_inline_key_in_a_readable_file_is_a_warning() {
        let d = Dir::new();
        d.write("agent.toml", &d.init_snippet(), 0o644);
        let (_, warnings) = load(&d).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("holds the registration key"),
            "{warnings:?}"
        );
    }

    #[test]
    fn bad_key_formats_are_refused_without_echoing_them() {
        for bad in [
            "ccr_abc",
            "cca_3f9c0d1e2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5",
            "ccr_3F9C0D1E2A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5",
            "ccr_3f9c0d1e2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5 ",
            "<from chaos-control agents add NAME>",
        ] {
            let d = Dir::new();
            let text = d.init_snippet().replace(KEY, bad);
            d.write("agent.toml", &text, 0o600);
            let m = err(&d).to_string();
            assert!(
                m.contains(":5: control_plane.registration_key: not a registration key: expected \"ccr_\" followed by 64"),
                "{m}"
            );
            assert!(!m.contains(&bad[4..]), "{m}");
        }
        let d = Dir::new();
        let text = d.init_snippet().replace(&format!("\"{KEY}\""), "42");
        d.write("agent.toml", &text, 0o600);
        assert!(err(&d)
            .to_string()
            .contains("registration_key: must be a string, not an integer"));
    }

    #[test]
    fn toml_syntax_errors_give_the_line_and_never_the_key() {
        let d = Dir::new();
        let text = d
            .init_snippet()
            .replace(&format!("\"{KEY}\""), &format!("\"{KEY}"));
        let p = d.write("agent.toml", &text, 0o600);
        let m = err(&d).to_string();
        assert!(
            m.starts_with(&format!("{}:5: invalid TOML", p.display())),
            "{m}"
        );
        assert!(!m.contains(&KEY[4..]), "{m}");
    }

    #[test]
    fn nan_inf_and_wrong_types_are_refused() {
        let cases = [
            ("[agent]\npoll_wait_secs = nan\n", "agent.poll_wait_secs: must be a whole number of seconds, not nan (NaN is not a number)"),
            ("[agent]\npoll_wait_secs = -inf\n", "infinity is not a number"),
            ("[agent]\npoll_wait_secs = 30.0\n", "not the float 30.0"),
            ("[agent]\npoll_wait_secs = \"30\"\n", "not a string"),
            ("[agent]\npoll_wait_secs = 0\n", "0 is out of range"),
            ("[agent]\npoll_wait_secs = 61\n", "61 is out of range"),
            ("[agent]\npoll_wait_secs = -1\n", "-1 is negative"),
            ("[agent]\noutbox_max_bytes = nan\n", "NaN is not a number"),
            ("[agent]\noutbox_max_bytes = \"1KiB\"\n", "too small"),
            ("[agent]\noutbox_max_bytes = \"lots\"\n", "invalid size"),
            ("[agent]\nlog_format = \"xml\"\n", "use \"text\" or \"json\""),
            ("[agent]\nlog_level = \"\"\n", "empty"),
            ("[agent]\nstate_dir = \"var/lib/x\"\n", "is relative"),
            ("[self_protection]\nspare_control_plane = \"yes\"\n", "must be true or false"),
            ("[self_protection]\nspare_dns_resolvers = 1\n", "must be true or false"),
            ("[self_protection]\nextra_spared_destinations = \"10.0.0.0/8\"\n", "must be a list"),
            ("[self_protection]\nextra_spared_destinations = [\"10.0.0.1/8\"]\n", "write \"10.0.0.0/8\""),
            ("[self_protection]\nextra_spared_destinations = [\"db.example\"]\n", "[0]: \"db.example\" is not an IP address"),
            ("[self_protection]\nextra_spared_destinations = [\"::/129\"]\n", "0 to 128"),
            ("[control_plane]\nproxy_from_env = nan\n", "NaN is not a number"),
            ("[control_plane]\nca_sha256 = \"AB:CD\"\n", "not a SHA-256 fingerprint"),
            ("agent = 1\n", "agent must be a section"),
            ("[[agent]]\n", "agent must be a section"),
        ];
        for (extra, want) in cases {
            let d = Dir::new();
            d.write("agent.toml", &d.init_snippet(), 0o600);
            let p = d.write("config.d/50-x.toml", extra, 0o600);
            let e = err(&d);
            assert_eq!(e.kind(), ConfigErrorKind::Invalid);
            let m = e.to_string();
            assert!(m.contains(want), "{extra:?}: {m}");
            assert!(
                m.starts_with(&format!("{}:", p.display())),
                "{extra:?}: {m}"
            );
        }
    }

    #[test]
    fn every_problem_of_every_file_is_reported() {
        let d = Dir::new();
        d.write(
            "agent.toml",
            &format!("{}[agent]\nlog_format = 1\n", d.init_snippet()),
            0o600,
        );
        d.write("config.d/1.toml", "[agent]\npoll_wait_secs = 0\n", 0o600);
        d.write("config.d/2.toml", "[agent\n", 0o600);
        let e = err(&d);
        assert_eq!(e.problems().len(), 3, "{e}");
        assert!(e.problems()[0]
            .file
            .as_ref()
            .unwrap()
            .ends_with("agent.toml"));
        assert!(e.problems()[2].file.as_ref().unwrap().ends_with("2.toml"));
    }

    #[test]
    fn files_others_can_write_are_refused() {
        let d = Dir::new();
        d.write("agent.toml", &d.init_snippet(), 0o664);
        let m = err(&d).to_string();
        assert!(m.contains("writable by group or others (mode 0664)"), "{m}");
        assert!(m.contains("chmod go-w"), "{m}");

        let d = Dir::new();
        d.write("config.d/20-control.toml", &d.init_snippet(), 0o600);
        fs::set_permissions(d.path("config.d"), fs::Permissions::from_mode(0o777)).unwrap();
        let m = err(&d).to_string();
        assert!(m.contains("the drop-in directory"), "{m}");
    }

    #[test]
    fn values_are_typed_and_defaults_apply() {
        let d = Dir::new();
        d.write(
            "agent.toml",
            &format!(
                "{}proxy_from_env = true\n\
                 [agent]\nstate_dir = \"/srv/chaos\"\noutbox_max_bytes = 0x200000\nlog_level = \"chaos_engine=debug,info\"\n\
                 [self_protection]\nspare_dns_resolvers = false\n\
                 extra_spared_destinations = [\"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/32\", \"10.0.0.0/8\"]\n",
                d.init_snippet()
            ),
            0o600,
        );
        let (c, _) = load(&d).unwrap();
        assert!(c.control_plane.proxy_from_env);
        assert_eq!(c.agent.state_dir(None), PathBuf::from("/srv/chaos"));
        assert_eq!(
            c.agent.state_dir(Some(Path::new("/cli"))),
            PathBuf::from("/cli")
        );
        assert_eq!(c.agent.outbox_max_bytes, 2 << 20);
        assert_eq!(c.agent.log_level, "chaos_engine=debug,info");
        assert!(c.self_protection.spare_control_plane);
        assert!(!c.self_protection.spare_dns_resolvers);
        let spared: Vec<String> = c
            .self_protection
            .extra_spared_destinations
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(spared, ["192.0.2.7/32", "10.0.0.0/8", "2001:db8::/32"]);
    }

    #[test]
    fn debug_of_the_config_never_shows_the_key() {
        let d = Dir::new();
        d.write("agent.toml", &d.init_snippet(), 0o600);
        let (c, _) = load(&d).unwrap();
        let dbg = format!("{c:?} {:#?}", c);
        assert!(!dbg.contains(&KEY[4..]), "{dbg}");
        assert!(dbg.contains("ccr_…(redacted)"), "{dbg}");
        let key = c.control_plane.registration_key.unwrap();
        assert_eq!(format!("{key}"), "ccr_…(redacted)");
        assert_eq!(format!("{key:?}"), "ccr_…(redacted)");
        assert_eq!(redact(&format!("x {KEY}, y")), "x ccr_…(redacted), y");
        assert_eq!(redact("\"ccr_\" followed"), "\"ccr_\" followed");
        assert_eq!(
            redact("ccr_…(redacted) ccr_x"),
            "ccr_…(redacted) ccr_…(redacted)"
        );
    }

    #[test]
    fn fingerprints_are_normalised() {
        let plain = FP.replace(':', "").to_ascii_lowercase();
        assert_eq!(parse_fingerprint(&plain).unwrap(), FP);
        assert_eq!(parse_fingerprint(FP).unwrap(), FP);
        assert!(parse_fingerprint(&format!("{plain}00")).is_err());
        assert!(parse_fingerprint(&plain.replace('a', "g")).is_err());
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# generated\nsearch example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                    nameserver 10.0.0.2\n  nameserver   192.0.2.53  # x\n;nameserver 1.1.1.1\n\
                    nameserver bogus\noptions ndots:2\n";
        let got: Vec<String> = nameservers(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.0.0.2", "fe80::1", "192.0.2.53"]);
    }

    /// The sample with every `#key = value` line uncommented.
    fn uncommented_sample() -> String {
        SAMPLE
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty()
                            && k.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_sample_documents_every_key_with_its_default() {
        // Every key the code knows appears exactly once, commented, in its section.
        for (section, keys) in SECTIONS {
            let header = format!("\n[{section}]\n");
            let start = SAMPLE
                .find(&header)
                .unwrap_or_else(|| panic!("no [{section}] in the sample"));
            let body = &SAMPLE[start + header.len()..];
            let body = &body[..body.find("\n[").unwrap_or(body.len())];
            for key in *keys {
                let n = body
                    .lines()
                    .filter(|l| l.starts_with(&format!("#{key} = ")))
                    .count();
                assert_eq!(n, 1, "[{section}] {key} in the sample");
            }
        }
        // Uncommented, it parses with no unknown key and no bad value, and sets every key.
        let text = uncommented_sample();
        let mut raw = Raw::default();
        let mut problems = Vec::new();
        raw.read_document(Path::new("agent.toml.sample"), &text, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        let set = [
            raw.url.is_some(),
            raw.ca_file.is_some(),
            raw.ca_sha256.is_some(),
            raw.registration_key.is_some(),
            raw.registration_key_file.is_some(),
            raw.proxy_from_env.is_some(),
            raw.state_dir.is_some(),
            raw.poll_wait_secs.is_some(),
            raw.outbox_max_bytes.is_some(),
            raw.log_format.is_some(),
            raw.log_level.is_some(),
            raw.spare_control_plane.is_some(),
            raw.spare_dns_resolvers.is_some(),
            raw.extra_spared_destinations.is_some(),
        ];
        assert_eq!(
            set.len(),
            SECTIONS.iter().map(|(_, k)| k.len()).sum::<usize>()
        );
        assert!(set.iter().all(|s| *s), "{set:?}");
        // Keys with a default show exactly that default.
        let agent = AgentSettings::default();
        let protection = SelfProtection::default();
        assert!(!raw.proxy_from_env.unwrap().value);
        assert_eq!(
            raw.state_dir.unwrap().value,
            PathBuf::from(DEFAULT_STATE_DIR)
        );
        assert_eq!(raw.outbox_max_bytes.unwrap().value, agent.outbox_max_bytes);
        assert_eq!(raw.log_format.unwrap().value, agent.log_format);
        assert_eq!(raw.log_level.unwrap().value, agent.log_level);
        assert_eq!(
            raw.spare_control_plane.unwrap().value,
            protection.spare_control_plane
        );
        assert_eq!(
            raw.spare_dns_resolvers.unwrap().value,
            protection.spare_dns_resolvers
        );
        assert_eq!(
            raw.url.unwrap().value.normalized,
            "https://control.example:8443"
        );
    }

    #[test]
    fn the_sample_as_installed_loads_once_completed() {
        // As shipped (every key commented), with the init snippet as a drop-in.
        let d = Dir::new();
        d.write("agent.toml", SAMPLE, 0o644);
        d.write("config.d/20-control.toml", &d.init_snippet(), 0o600);
        let (c, _) = load(&d).unwrap();
        assert_eq!(c.agent, AgentSettings::default());
        // Uncommented, with this test's CA and without the key file (one key source only).
        let d = Dir::new();
        let ca = d.ca();
        let text: String = uncommented_sample()
            .lines()
            .filter(|l| !l.starts_with("registration_key_file = "))
            .map(|l| l.replace("/etc/chaos-agent/ca.pem", &ca.display().to_string()) + "\n")
            .collect();
        d.write("agent.toml", &text, 0o600);
        let (c, _) = load(&d).unwrap();
        assert_eq!(c.control_plane.url, "https://control.example:8443");
    }
}
