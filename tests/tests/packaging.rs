//! The release artefacts (scripts/release.sh) and the systemd unit they ship.
//!
//! - `unit_directives_are_known_to_systemd_219`: every directive of
//!   packaging/chaos-agent.service is one systemd 219 (CentOS 7) reads, or is listed in
//!   [`NEWER`] with what makes up for it on 219.
//! - `release_sh_packages_prebuilt_static_binaries`: `release.sh --bin-dir` over a musl debug
//!   build; the .deb, the .rpm and the tarballs are read back with `dpkg-deb`, `rpm -qp` and
//!   `tar` (file list, modes, owners, the unit, the maintainer scripts, SHA256SUMS). Prints
//!   SKIPPED when dpkg-deb, rpmbuild or the musl toolchain is missing.
//! - `release_sh_refuses_bad_input`: bad arguments, a dynamically linked binary.
//!
//! Run alone: `cargo test -p chaos-tests --test packaging`. Nothing here needs root or
//! touches the host outside its temporary directories.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fault_core::testing::TempDir;

const MUSL: &str = "x86_64-unknown-linux-musl";

/// The directives systemd 219 knows in the sections a service unit uses, transcribed from
/// src/core/load-fragment-gperf.gperf.m4 (Unit.*, Service.* with the exec, kill and cgroup
/// contexts it includes, Install.*). Only names found in BOTH of two trees are listed: the
/// RHEL 7 systemd-219 tree (github.com/lnykryn/systemd-rhel, what CentOS 7 runs) and an upstream
/// tree of the 219-226 series; so neither RHEL's backports (TasksMax=, PassEnvironment=,
/// AmbientCapabilities=, ...) nor later upstream additions (UtmpMode=, ...) count as 219.
const SYSTEMD_219: &[(&str, &str)] = &[
    (
        "Unit",
        "Description Documentation SourcePath Requires RequiresOverridable Requisite \
         RequisiteOverridable Wants BindsTo BindTo Conflicts Before After OnFailure \
         PropagatesReloadTo PropagateReloadTo ReloadPropagatedFrom PropagateReloadFrom PartOf \
         JoinsNamespaceOf RequiresMountsFor StopWhenUnneeded RefuseManualStart RefuseManualStop \
         AllowIsolate DefaultDependencies OnFailureJobMode OnFailureIsolate IgnoreOnIsolate \
         IgnoreOnSnapshot JobTimeoutSec JobTimeoutAction JobTimeoutRebootArgument \
         ConditionPathExists ConditionPathExistsGlob ConditionPathIsDirectory \
         ConditionPathIsSymbolicLink ConditionPathIsMountPoint ConditionPathIsReadWrite \
         ConditionDirectoryNotEmpty ConditionFileNotEmpty ConditionFileIsExecutable \
         ConditionNeedsUpdate ConditionFirstBoot ConditionKernelCommandLine \
         ConditionArchitecture ConditionVirtualization ConditionSecurity ConditionCapability \
         ConditionHost ConditionACPower ConditionNull AssertPathExists AssertPathExistsGlob \
         AssertPathIsDirectory AssertPathIsSymbolicLink AssertPathIsMountPoint \
         AssertPathIsReadWrite AssertDirectoryNotEmpty AssertFileNotEmpty \
         AssertFileIsExecutable AssertNeedsUpdate AssertFirstBoot AssertKernelCommandLine \
         AssertArchitecture AssertVirtualization AssertSecurity AssertCapability AssertHost \
         AssertACPower AssertNull",
    ),
    (
        "Service",
        "PIDFile ExecStartPre ExecStart ExecStartPost ExecReload ExecStop ExecStopPost \
         RestartSec TimeoutSec TimeoutStartSec TimeoutStopSec WatchdogSec StartLimitInterval \
         StartLimitBurst StartLimitAction RebootArgument FailureAction Type Restart \
         PermissionsStartOnly RootDirectoryStartOnly RemainAfterExit GuessMainPID \
         RestartPreventExitStatus RestartForceExitStatus SuccessExitStatus SysVStartPriority \
         NonBlocking BusName FileDescriptorStoreMax NotifyAccess Sockets BusPolicy \
         WorkingDirectory RootDirectory User Group SupplementaryGroups Nice OOMScoreAdjust \
         IOSchedulingClass IOSchedulingPriority CPUSchedulingPolicy CPUSchedulingPriority \
         CPUSchedulingResetOnFork CPUAffinity UMask Environment EnvironmentFile StandardInput \
         StandardOutput StandardError TTYPath TTYReset TTYVHangup TTYVTDisallocate \
         SyslogIdentifier SyslogFacility SyslogLevel SyslogLevelPrefix Capabilities SecureBits \
         CapabilityBoundingSet TimerSlackNSec NoNewPrivileges SystemCallFilter \
         SystemCallArchitectures SystemCallErrorNumber RestrictAddressFamilies LimitCPU \
         LimitFSIZE LimitDATA LimitSTACK LimitCORE LimitRSS LimitNOFILE LimitAS LimitNPROC \
         LimitMEMLOCK LimitLOCKS LimitSIGPENDING LimitMSGQUEUE LimitNICE LimitRTPRIO \
         LimitRTTIME ReadWriteDirectories ReadOnlyDirectories InaccessibleDirectories \
         PrivateTmp PrivateNetwork PrivateDevices ProtectSystem ProtectHome MountFlags \
         Personality RuntimeDirectoryMode RuntimeDirectory PAMName IgnoreSIGPIPE UtmpIdentifier \
         SELinuxContext AppArmorProfile SmackProcessLabel SendSIGKILL SendSIGHUP KillMode \
         KillSignal Slice CPUAccounting CPUShares StartupCPUShares CPUQuota MemoryAccounting \
         MemoryLimit DeviceAllow DevicePolicy BlockIOAccounting BlockIOWeight \
         StartupBlockIOWeight BlockIODeviceWeight BlockIOReadBandwidth BlockIOWriteBandwidth \
         Delegate",
    ),
    ("Install", "Alias WantedBy RequiredBy Also DefaultInstance"),
];

/// Directives newer than 219 that the unit uses on purpose: (section, directive, the version
/// that added it, what makes up for it on 219). systemd 219 logs "Unknown lvalue" and ignores
/// them. Each make-up is checked by [`made_up_for`].
const NEWER: &[(&str, &str, u32, &str)] = &[
    (
        "Unit",
        "StartLimitIntervalSec",
        230,
        "StartLimitInterval= in [Service], with the same value",
    ),
    (
        "Service",
        "StateDirectory",
        235,
        "packaging/install.sh and the packages' scripts create /var/lib/chaos-agent 0700",
    ),
    (
        "Service",
        "StateDirectoryMode",
        235,
        "packaging/install.sh and the packages' scripts create /var/lib/chaos-agent 0700",
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (section, key, value) of every assignment of a unit file, in order.
fn directives(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in unit.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not `Key=value`: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "line {}: {line} before any section",
            n + 1
        );
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// Panics unless every directive of `unit` is in [`SYSTEMD_219`] or [`NEWER`] (and made up for).
fn check_unit_for_219(unit: &str, what: &str) {
    let known: BTreeMap<&str, BTreeSet<&str>> = SYSTEMD_219
        .iter()
        .map(|(s, keys)| (*s, keys.split_whitespace().collect()))
        .collect();
    let ds = directives(unit);
    let mut unknown = Vec::new();
    for (section, key, _) in &ds {
        if known
            .get(section.as_str())
            .is_some_and(|k| k.contains(key.as_str()))
        {
            continue;
        }
        match NEWER.iter().find(|(s, k, ..)| s == section && k == key) {
            Some((_, _, since, _)) => assert!(*since > 219, "{key}: listed as newer than 219"),
            None => unknown.push(format!("[{section}] {key}=")),
        }
    }
    assert!(
        unknown.is_empty(),
        "{what}: systemd 219 does not know {unknown:?}: use what 219 reads, or list it in NEWER \
         (tests/tests/packaging.rs) with what makes up for it"
    );
    // Every NEWER entry is still used (a stale list hides nothing, but misleads).
    for (s, k, ..) in NEWER {
        assert!(
            ds.iter().any(|(ds, dk, _)| ds == s && dk == k),
            "{what}: NEWER lists [{s}] {k}=, which the unit no longer sets"
        );
    }
    made_up_for(&ds, what);
}

fn value<'a>(ds: &'a [(String, String, String)], section: &str, key: &str) -> Option<&'a str> {
    ds.iter()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(.., v)| v.as_str())
}

/// What makes up on 219 for each [`NEWER`] directive is really there.
fn made_up_for(ds: &[(String, String, String)], what: &str) {
    assert_eq!(
        value(ds, "Service", "StartLimitInterval"),
        value(ds, "Unit", "StartLimitIntervalSec"),
        "{what}: StartLimitInterval= in [Service] must match [Unit] StartLimitIntervalSec= (219 reads only the first)"
    );
    assert_eq!(value(ds, "Service", "StateDirectory"), Some("chaos-agent"));
    assert_eq!(value(ds, "Service", "StateDirectoryMode"), Some("0700"));
    let install = std::fs::read_to_string(repo().join("packaging/install.sh")).unwrap();
    assert!(
        install.contains("install -d -m 0700 /var/lib/chaos-agent"),
        "install.sh must create /var/lib/chaos-agent 0700 (systemd < 235 does not)"
    );
    let scripts = std::fs::read_to_string(repo().join("packaging/pkg/scripts.sh")).unwrap();
    assert!(
        scripts.contains("state=/var/lib/chaos-agent")
            && scripts.contains(r#"install -d -m 0700 "$state""#),
        "packaging/pkg/scripts.sh must create /var/lib/chaos-agent 0700 (systemd < 235 does not)"
    );
}

#[test]
fn unit_directives_are_known_to_systemd_219() {
    let unit = std::fs::read_to_string(repo().join("packaging/chaos-agent.service")).unwrap();
    check_unit_for_219(&unit, "packaging/chaos-agent.service");
    // KillMode=mixed needs 209, Type=notify + WatchdogSec= and RestartPreventExitStatus= are
    // older still: values 219 reads too.
    let ds = directives(&unit);
    assert_eq!(value(&ds, "Service", "KillMode"), Some("mixed"));
    assert_eq!(
        value(&ds, "Service", "ExecStart"),
        Some("/usr/local/bin/chaos-agent daemon")
    );
}

#[test]
fn the_checker_rejects_what_219_does_not_know() {
    let r = std::panic::catch_unwind(|| {
        check_unit_for_219("[Service]\nExecStart=/bin/true\nTasksMax=10\n", "sample")
    });
    let msg = r.expect_err("TasksMax= (227) must be refused");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("TasksMax"), "{msg}");
}

// ---------------------------------------------------------------- release.sh

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} exited {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// `tool` is an executable file in a directory of PATH.
fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// target/x86_64-unknown-linux-musl/debug with chaos-agent and chaos-control built, or why not.
fn musl_debug_build() -> Result<PathBuf, String> {
    if !have("musl-gcc") {
        return Err("musl-gcc is not installed (apt-get install musl-tools)".into());
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup: {e}"))?;
    if !String::from_utf8_lossy(&targets.stdout)
        .lines()
        .any(|l| l == MUSL)
    {
        return Err(format!(
            "the Rust target {MUSL} is not installed (rustup target add {MUSL})"
        ));
    }
    // target/debug/deps/<test> -> target
    let target_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--target", MUSL])
        .args(["-p", "chaos-agent", "--bin", "chaos-agent"])
        .args([
            "-p",
            "chaos-control",
            "--bin",
            "chaos-control",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .current_dir(repo());
    common::scrub_cargo_env(&mut cmd);
    run(&mut cmd);
    Ok(target_dir.join(MUSL).join("debug"))
}

fn release_sh() -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/release.sh"));
    c
}

/// `dpkg-deb -c` / tar tv lines -> path -> (mode string, owner/group).
fn tar_listing(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5]
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

/// Print why `test` skips; in CI (`CI=true`, where scripts/test.sh installs every tool this
/// needs) a skip would hide the package checks, so it fails instead.
fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run in CI: {why} (scripts/test.sh installs its tools)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

#[test]
fn release_sh_packages_prebuilt_static_binaries() {
    let test = "release_sh_packages_prebuilt_static_binaries";
    for tool in ["dpkg-deb", "rpmbuild", "rpm", "readelf", "strip"] {
        if !have(tool) {
            return skip(test, &format!("{tool} is not installed"));
        }
    }
    let bin_dir = match musl_debug_build() {
        Ok(d) => d,
        Err(why) => return skip(test, &why),
    };
    let out = TempDir::new("chaos-release");
    let dist = out.path().join("dist");
    let version = "0.0.7";
    run(release_sh()
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(["--version", version, "--out"])
        .arg(&dist));
    let deb = dist.join(format!("chaos-agent_{version}_amd64.deb"));
    let rpm = dist.join(format!("chaos-agent-{version}-1.x86_64.rpm"));
    let tar_agent = dist.join(format!("chaos-agent-{version}-{MUSL}.tar.gz"));
    let tar_control = dist.join(format!("chaos-control-{version}-{MUSL}.tar.gz"));
    for f in [&deb, &rpm, &tar_agent, &tar_control] {
        assert!(f.is_file(), "{} missing", f.display());
    }
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 4, "SHA256SUMS:\n{sums}");
    run(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&dist));

    // ---- deb: fields, files, modes, owners, conffiles, scripts, the unit, the binary
    let field = |f: &str| {
        stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "chaos-agent");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Depends"), "", "a static binary depends on nothing");
    let files = tar_listing(&stdout(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let want: BTreeMap<&str, &str> = [
        ("etc", "drwxr-xr-x"),
        ("etc/chaos-agent", "drwxr-xr-x"),
        ("etc/chaos-agent/agent.toml.sample", "-rw-r--r--"),
        ("etc/chaos-agent/config.d", "drwx------"),
        ("lib", "drwxr-xr-x"),
        ("lib/systemd", "drwxr-xr-x"),
        ("lib/systemd/system", "drwxr-xr-x"),
        ("lib/systemd/system/chaos-agent.service", "-rw-r--r--"),
        ("usr", "drwxr-xr-x"),
        ("usr/bin", "drwxr-xr-x"),
        ("usr/bin/chaos-agent", "-rwxr-xr-x"),
        ("usr/share", "drwxr-xr-x"),
        ("usr/share/doc", "drwxr-xr-x"),
        ("usr/share/doc/chaos-agent", "drwxr-xr-x"),
        ("usr/share/doc/chaos-agent/README.md", "-rw-r--r--"),
        ("usr/share/doc/chaos-agent/copyright", "-rw-r--r--"),
        ("usr/share/doc/chaos-agent/install.md", "-rw-r--r--"),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<&str, &str> = files
        .iter()
        .map(|(p, (m, _))| (p.as_str(), m.as_str()))
        .collect();
    assert_eq!(got, want, "deb file list and modes");
    for (p, (_, owner)) in &files {
        assert_eq!(owner, "root/root", "deb: {p} owned by {owner}");
    }
    let ctl = out.path().join("deb-control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    assert_eq!(
        std::fs::read_to_string(ctl.join("conffiles")).unwrap(),
        "/etc/chaos-agent/agent.toml.sample\n"
    );
    let script = |name: &str| std::fs::read_to_string(ctl.join(name)).unwrap();
    for s in ["preinst", "postinst", "prerm", "postrm"] {
        let text = script(s);
        assert!(
            text.starts_with("#!/bin/sh\nset -e\n"),
            "{s}: {}",
            &text[..40]
        );
        run(Command::new("sh").arg("-n").arg(ctl.join(s)));
        let mode = std::fs::metadata(ctl.join(s)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o755,
            "{s}"
        );
    }
    // the events each script maps to, and the actions behind them (one shared body)
    assert!(script("prerm").contains("remove) pkg_event pre-remove"));
    assert!(
        script("prerm").contains("upgrade | failed-upgrade | deconfigure) pkg_event pre-upgrade")
    );
    assert!(script("preinst").contains("upgrade) pkg_event pre-upgrade"));
    assert!(script("postinst").contains("pkg_event post-install"));
    assert!(script("postinst").contains("pkg_event post-upgrade"));
    assert!(script("postrm").contains("purge) pkg_event purge"));
    let body = script("prerm");
    for action in [
        r#"systemctl stop "$unit""#,
        r#""$bin" recover || rc=$?"#,
        r#"systemctl disable "$unit""#,
        r#"systemctl enable "$unit""#,
        r#"install -d -m 0700 "$state""#,
        r#"rm -rf "$etc" "/etc/systemd/system/$unit.d""#,
        "3) refuse_remove",
        "CHAOS_AGENT_REMOVE_ANYWAY",
        "[ -d /run/systemd/system ]",
    ] {
        assert!(body.contains(action), "maintainer scripts lack {action:?}");
    }
    let root = out.path().join("deb-root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/chaos-agent.service")).unwrap();
    check_packaged_unit(&unit, "the deb's unit");
    assert_static(&root.join("usr/bin/chaos-agent"));

    // ---- rpm: header, files (--dump: path size mtime digest mode owner group isconfig isdoc ...)
    let q = |args: &[&str]| stdout(Command::new("rpm").arg("-qp").args(args).arg(&rpm));
    assert_eq!(
        q(&[
            "--qf",
            "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{PAYLOADCOMPRESSOR}\n"
        ]),
        format!("chaos-agent {version} 1 x86_64 xz\n"),
        "xz: a payload CentOS 7's rpm 4.11 reads (not zstd)"
    );
    let dump: BTreeMap<String, (String, String, String, String)> = q(&["--dump"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].into(),
                (
                    f[4].into(),
                    format!("{}/{}", f[5], f[6]),
                    f[7].into(),
                    f[8].into(),
                ),
            )
        })
        .collect();
    let want_rpm: BTreeMap<&str, (&str, &str, &str)> = [
        ("/etc/chaos-agent", ("040755", "0", "0")),
        ("/etc/chaos-agent/agent.toml.sample", ("0100644", "1", "0")),
        ("/etc/chaos-agent/config.d", ("040700", "0", "0")),
        ("/usr/bin/chaos-agent", ("0100755", "0", "0")),
        (
            "/usr/lib/systemd/system/chaos-agent.service",
            ("0100644", "0", "0"),
        ),
        ("/usr/share/doc/chaos-agent", ("040755", "0", "0")),
        (
            "/usr/share/doc/chaos-agent/README.md",
            ("0100644", "0", "1"),
        ),
        (
            "/usr/share/doc/chaos-agent/install.md",
            ("0100644", "0", "1"),
        ),
        ("/var/lib/chaos-agent", ("040700", "0", "0")),
    ]
    .into_iter()
    .collect();
    let got_rpm: BTreeMap<&str, (&str, &str, &str)> = dump
        .iter()
        .map(|(p, (m, _, c, d))| (p.as_str(), (m.as_str(), c.as_str(), d.as_str())))
        .collect();
    assert_eq!(got_rpm, want_rpm, "rpm files: (mode, config, doc)");
    for (p, (_, owner, ..)) in &dump {
        assert_eq!(owner, "root/root", "rpm: {p} owned by {owner}");
    }
    assert_eq!(
        q(&["-l"]).lines().collect::<BTreeSet<_>>(),
        want_rpm.keys().copied().collect::<BTreeSet<_>>()
    );
    // Only what rpm 4.11 (CentOS 7) provides: no zstd payload, no rich dependencies.
    for req in q(&["--requires"]).lines() {
        assert!(
            req == "/bin/sh"
                || [
                    "rpmlib(CompressedFileNames)",
                    "rpmlib(FileDigests)",
                    "rpmlib(PayloadFilesHavePrefix)",
                    "rpmlib(PayloadIsXz)",
                ]
                .iter()
                .any(|r| req.starts_with(r)),
            "rpm requires {req:?}, which CentOS 7's rpm may not provide"
        );
    }
    let scripts = q(&["--scripts"]);
    // "<name> scriptlet (using /bin/sh):" then its body, up to the next such line
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in scripts.lines() {
        if let Some(name) = line.strip_suffix(" scriptlet (using /bin/sh):") {
            current = name.to_string();
        } else {
            let body = sections.entry(current.clone()).or_default();
            body.push_str(line);
            body.push('\n');
        }
    }
    for (section, call) in [
        ("preinstall", "pkg_event pre-upgrade"),
        ("postinstall", "pkg_event post-install"),
        ("postinstall", "pkg_event post-upgrade"),
        ("preuninstall", "pkg_event pre-remove"),
        ("postuninstall", "pkg_event post-remove"),
    ] {
        let body = sections
            .get(section)
            .unwrap_or_else(|| panic!("no {section} scriptlet:\n{scripts}"));
        assert!(body.contains(call), "{section} lacks {call}");
        assert!(
            body.contains(r#"systemctl stop "$unit""#),
            "{section} lacks the shared body"
        );
    }
    assert!(
        scripts.contains("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "rpm expanded a % of the scripts (release.sh must write %% in the spec)"
    );
    // the payload as a tar (rpm2archive FILE writes FILE.tgz), read back like the deb's
    let rpm_root = out.path().join("rpm-root");
    std::fs::create_dir(&rpm_root).unwrap();
    if have("rpm2archive") {
        let copy = out.path().join("payload.rpm");
        std::fs::copy(&rpm, &copy).unwrap();
        run(Command::new("rpm2archive").arg(&copy));
        run(Command::new("tar")
            .arg("xzf")
            .arg(out.path().join("payload.rpm.tgz"))
            .arg("-C")
            .arg(&rpm_root));
        let unit =
            std::fs::read_to_string(rpm_root.join("usr/lib/systemd/system/chaos-agent.service"))
                .unwrap();
        check_packaged_unit(&unit, "the rpm's unit");
        assert_static(&rpm_root.join("usr/bin/chaos-agent"));
    } else {
        eprintln!("(rpm2archive not installed: the rpm's unit and binary not read back)");
    }

    rpm_scriptlets_in_a_chroot(&rpm, out.path());

    // ---- tarballs
    let t = tar_listing(&stdout(Command::new("tar").arg("tzvf").arg(&tar_agent)));
    let top = format!("chaos-agent-{version}-{MUSL}");
    for (p, mode) in [
        ("chaos-agent", "-rwxr-xr-x"),
        ("README.md", "-rw-r--r--"),
        ("docs/install.md", "-rw-r--r--"),
        ("packaging/chaos-agent.service", "-rw-r--r--"),
        ("packaging/agent.toml.sample", "-rw-r--r--"),
        ("packaging/install.sh", "-rwxr-xr-x"),
        ("packaging/uninstall.sh", "-rwxr-xr-x"),
    ] {
        let (m, owner) = t
            .get(&format!("{top}/{p}"))
            .unwrap_or_else(|| panic!("{top}/{p} not in {t:?}"));
        assert_eq!((m.as_str(), owner.as_str()), (mode, "0/0"), "{p}");
    }
    let t = tar_listing(&stdout(Command::new("tar").arg("tzvf").arg(&tar_control)));
    assert!(
        t.contains_key(&format!("chaos-control-{version}-{MUSL}/chaos-control")),
        "{t:?}"
    );
}

/// The rpm's scriptlets for real, where systemd is not running: `rpm --root` runs them
/// chrooted into a directory holding only dash, the few coreutils they use and /dev/null.
/// Install, upgrade (`-U --replacepkgs`: the %pre/%post of an upgrade), a refused erase (the
/// agent cannot check the host: its state directory is writable by others), a forced erase,
/// a reinstall, an erase that keeps the state. Needs root (chroot, mknod).
fn rpm_scriptlets_in_a_chroot(rpm: &Path, tmp: &Path) {
    if !fault_core::host::is_root() || !have("ldd") {
        eprintln!("SKIPPED rpm scriptlets in a chroot: needs root (chroot, mknod) and ldd");
        return;
    }
    let root = tmp.join("chroot");
    for tool in ["dash", "install", "rm", "cat", "date", "uname"] {
        let exe = Path::new("/usr/bin").join(tool);
        let libs = stdout(Command::new("ldd").arg(&exe));
        let files = std::iter::once(exe.clone()).chain(
            libs.split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
        for f in files {
            let dest = root.join(f.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&f, &dest).unwrap();
        }
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let link = root
            .join("bin")
            .join(if tool == "dash" { "sh" } else { tool });
        std::os::unix::fs::symlink(&exe, link).unwrap();
    }
    std::fs::create_dir_all(root.join("dev")).unwrap();
    run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    let rpm_cmd = |args: &[&str]| {
        let o = Command::new("rpm")
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(root.join(p)).unwrap().permissions(),
        ) & 0o7777
    };
    let rpm_s = rpm.to_str().unwrap();
    assert!(rpm_cmd(&["--initdb"]).0);

    let (ok, text) = rpm_cmd(&["-i", "--nodeps", rpm_s]);
    assert!(ok, "rpm -i in a chroot:\n{text}");
    assert!(text.contains("systemctl not found"), "{text}");
    assert_eq!(mode("var/lib/chaos-agent"), 0o700);
    assert_eq!(mode("etc/chaos-agent/config.d"), 0o700);

    let (ok, text) = rpm_cmd(&["-U", "--replacepkgs", "--nodeps", rpm_s]);
    assert!(ok, "rpm -U in a chroot:\n{text}");
    assert!(
        text.contains("systemd is not running here: no service to stop"),
        "%pre of an upgrade: {text}"
    );

    // the agent refuses a state directory others can write: the host cannot be checked
    let state = root.join("var/lib/chaos-agent");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (ok, text) = rpm_cmd(&["-e", "chaos-agent"]);
    assert!(!ok, "rpm -e went on although recovery failed:\n{text}");
    assert!(
        text.contains("chaos-agent recover failed (exit 2)") && text.contains("NOT removed"),
        "{text}"
    );
    assert!(
        rpm_cmd(&["-q", "chaos-agent"]).0,
        "refused, yet not installed any more"
    );
    assert!(root.join("usr/bin/chaos-agent").exists());

    let o = Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-e", "chaos-agent"])
        .env("CHAOS_AGENT_REMOVE_ANYWAY", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "CHAOS_AGENT_REMOVE_ANYWAY=1 rpm -e:\n{text}"
    );
    assert!(
        state.join("REMOVED-WITH-FAULTS-LEFT").exists(),
        "no marker: {text}"
    );
    assert!(!root.join("usr/bin/chaos-agent").exists());

    // reinstalled: the marker goes; erased with a clean host: the state stays (no purge)
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (ok, text) = rpm_cmd(&["-i", "--nodeps", rpm_s]);
    assert!(ok, "rpm -i again:\n{text}");
    assert!(!state.join("REMOVED-WITH-FAULTS-LEFT").exists());
    let (ok, text) = rpm_cmd(&["-e", "chaos-agent"]);
    assert!(
        ok && text.contains("recovery: the host is clean"),
        "rpm -e:\n{text}"
    );
    assert!(state.join("journal").is_dir(), "rpm -e deleted the journal");
    for gone in [
        "usr/bin/chaos-agent",
        "usr/lib/systemd/system/chaos-agent.service",
        "etc/chaos-agent",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after rpm -e");
    }
}

/// The packages' unit: the repository's with /usr/bin paths, and nothing 219 cannot read.
fn check_packaged_unit(unit: &str, what: &str) {
    check_unit_for_219(unit, what);
    let ds = directives(unit);
    assert_eq!(
        value(&ds, "Service", "ExecStart"),
        Some("/usr/bin/chaos-agent daemon"),
        "{what}"
    );
    assert_eq!(
        value(&ds, "Service", "ExecStartPre"),
        Some("-/usr/bin/chaos-agent recover"),
        "{what}"
    );
    assert!(!unit.contains("/usr/local"), "{what} names /usr/local");
    let source = std::fs::read_to_string(repo().join("packaging/chaos-agent.service")).unwrap();
    let same: Vec<_> = directives(&source)
        .into_iter()
        .map(|(s, k, v)| (s, k, v.replace("/usr/local/", "/usr/")))
        .collect();
    assert_eq!(
        ds, same,
        "{what}: not packaging/chaos-agent.service with /usr paths"
    );
}

fn assert_static(bin: &Path) {
    let l = stdout(Command::new("readelf").arg("-l").arg(bin));
    assert!(
        !l.contains("INTERP"),
        "{} has a program interpreter",
        bin.display()
    );
    let d = stdout(Command::new("readelf").arg("-d").arg(bin));
    assert!(
        !d.contains("(NEEDED)"),
        "{} needs shared libraries",
        bin.display()
    );
    let v = stdout(Command::new(bin).arg("--version"));
    assert!(v.starts_with("chaos-agent "), "{v}");
}

#[test]
fn release_sh_refuses_bad_input() {
    let code = |c: &mut Command| {
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (rc, err) = code(release_sh().arg("--bogus"));
    assert_eq!(rc, Some(2), "{err}");
    assert!(err.contains("unknown argument: --bogus"), "{err}");
    let (rc, err) = code(release_sh().args(["--version", "1.0-2", "--bin-dir", "/nonexistent"]));
    assert_eq!(rc, Some(2), "{err}");
    assert!(err.contains("no '-'"), "{err}");
    let (rc, err) = code(release_sh().arg("--out"));
    assert_eq!(rc, Some(2), "{err}");
    let (rc, err) = code(release_sh().arg("--help"));
    assert_eq!(rc, Some(0), "{err}");
    if !have("dpkg-deb") || !have("rpmbuild") || !have("readelf") {
        return skip(
            "release_sh_refuses_bad_input (dynamic binary part)",
            "packaging tools missing",
        );
    }
    // a glibc build: dynamically linked, refused before anything is written
    let dynamic = common::agent_bin();
    let dir = TempDir::new("chaos-release-dyn");
    std::fs::copy(&dynamic, dir.path().join("chaos-agent")).unwrap();
    std::fs::copy(common::control_bin(), dir.path().join("chaos-control")).unwrap();
    let out = dir.path().join("dist");
    let (rc, err) = code(
        release_sh()
            .arg("--bin-dir")
            .arg(dir.path())
            .arg("--out")
            .arg(&out),
    );
    assert_eq!(rc, Some(1), "{err}");
    assert!(err.contains("dynamically linked"), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "wrote something anyway"
    );
}
