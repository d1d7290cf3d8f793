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
mod tests;
