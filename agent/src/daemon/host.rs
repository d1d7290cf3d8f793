//! Facts about this host for registration, and the daemon's self-protection.

use std::net::{IpAddr, ToSocketAddrs};

use chaos_protocol::agent::HostFacts;
use fault_core::Registry;
use serde_json::Value;

use super::config::Config;

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// The kinds this host can run: those whose [`fault_core::Fault::availability`] is
/// available or degraded (`chaos-agent doctor` shows why the others are not).
pub(super) fn runnable_kinds(registry: &Registry) -> Vec<String> {
    registry
        .kinds()
        .filter(|e| (e.availability)().runnable())
        .map(|e| e.kind.to_string())
        .collect()
}

/// Log, once at startup, the kinds this host cannot run (not offered to the control
/// plane) and the degraded ones, each with its reasons.
pub(super) fn log_availability(registry: &Registry) {
    for e in registry.kinds() {
        let a = (e.availability)();
        match a.level {
            fault_core::Level::Available => {}
            fault_core::Level::Degraded => tracing::info!(
                kind = e.kind,
                reasons = %a.reasons.join("; "),
                "kind degraded on this host (offered; see chaos-agent doctor)"
            ),
            fault_core::Level::Unavailable => tracing::warn!(
                kind = e.kind,
                reasons = %a.reasons.join("; "),
                fixes = %a.fixes.join("; "),
                "kind unavailable on this host: not offered to the control plane (see chaos-agent doctor)"
            ),
        }
    }
}

/// What the registration tells the control plane about this host.
pub(super) fn facts(registry: &Registry) -> HostFacts {
    let clip = |s: String, n: usize| super::runs::clip(&s, n);
    HostFacts {
        hostname: clip(read_trim("/proc/sys/kernel/hostname"), 255),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        os: clip(os_name(), 255),
        kernel: clip(read_trim("/proc/sys/kernel/osrelease"), 255),
        arch: std::env::consts::ARCH.into(),
        machine_id: clip(read_trim("/etc/machine-id"), 255),
        kinds: runnable_kinds(registry),
    }
}

/// The DNS resolvers in /etc/resolv.conf.
fn resolvers() -> Vec<IpAddr> {
    super::config::nameservers(
        &std::fs::read_to_string(super::config::RESOLV_CONF).unwrap_or_default(),
    )
}

/// The control plane's addresses (resolved now).
fn control_plane_addrs(url: &str) -> Vec<IpAddr> {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let with_port = if hostport.starts_with('[')
        || hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:443")
    };
    let mut out: Vec<IpAddr> = with_port
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Add the control plane's addresses and the resolvers to every network fault's
/// `exclude_destinations`, unless the experiment says `spare_control_plane = false` or the
/// configuration turns it off. Returns the experiment to run and a line for the run's log.
pub(super) fn spare_control_plane(experiment: &Value, config: &Config) -> (Value, Option<String>) {
    if !config.self_protection.spare_control_plane
        || experiment.get("spare_control_plane") == Some(&Value::Bool(false))
    {
        return (experiment.clone(), None);
    }
    let mut exp = experiment.clone();
    let sp = &config.self_protection;
    let dns = if sp.spare_dns_resolvers {
        resolvers()
    } else {
        Vec::new()
    };
    let mut spared: Vec<String> = control_plane_addrs(&config.control_plane.url)
        .into_iter()
        .chain(dns)
        .map(|a| a.to_string())
        .chain(sp.extra_spared_destinations.iter().map(|d| d.to_string()))
        .collect();
    spared.sort();
    spared.dedup();
    let mut touched = 0;
    if let Some(steps) = exp.get_mut("steps").and_then(Value::as_array_mut) {
        for step in steps {
            let Some(faults) = step.get_mut("faults").and_then(Value::as_array_mut) else {
                continue;
            };
            for f in faults {
                let network = f
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.starts_with("network."));
                let Some(obj) = f.as_object_mut().filter(|_| network) else {
                    continue;
                };
                let list = obj
                    .entry("exclude_destinations")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(list) = list.as_array_mut() {
                    for a in &spared {
                        if !list.iter().any(|v| v.as_str() == Some(a)) {
                            list.push(Value::String(a.clone()));
                        }
                    }
                    touched += 1;
                }
            }
        }
    }
    if touched == 0 || spared.is_empty() {
        return (exp, None);
    }
    let note = format!(
        "{touched} network fault(s) spare the control plane and the DNS resolvers: {} (set spare_control_plane = false in the experiment to include them)",
        spared.join(", ")
    );
    (exp, Some(note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(extra: &str) -> (fault_core::testing::TempDir, Config) {
        let d = fault_core::testing::TempDir::new("host-config");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca = d.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let main = d.path().join("agent.toml");
        std::fs::write(
            &main,
            format!(
                "[control_plane]\nurl = \"https://127.0.0.9:8443\"\nca_file = \"{}\"\n{extra}",
                ca.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (c, _) = Config::load(&main).unwrap();
        (d, c)
    }

    fn experiment(spare: Option<bool>) -> Value {
        let mut e = serde_json::json!({"name": "n", "steps": [{"name": "s", "faults": [
            {"kind": "network.blackhole", "duration": "1s", "interface": "eth0",
             "exclude_destinations": ["10.9.9.9"]},
            {"kind": "process.stop", "duration": "1s", "pid": 4242},
        ]}]});
        if let Some(s) = spare {
            e["spare_control_plane"] = Value::Bool(s);
        }
        e
    }

    #[test]
    fn network_faults_spare_the_control_plane_unless_the_experiment_opts_out() {
        let (_d, c) = config(
            "[self_protection]\nspare_dns_resolvers = false\nextra_spared_destinations = [\"192.0.2.0/24\"]\n",
        );
        let (exp, note) = spare_control_plane(&experiment(None), &c);
        let ex = &exp["steps"][0]["faults"][0]["exclude_destinations"];
        assert_eq!(
            ex,
            &serde_json::json!(["10.9.9.9", "127.0.0.9", "192.0.2.0/24"]),
            "{exp}"
        );
        assert!(exp["steps"][0]["faults"][1]
            .get("exclude_destinations")
            .is_none());
        assert!(note.unwrap().contains("127.0.0.9"));
        // What the daemon runs still validates with the kinds' own specs.
        chaos_engine::experiment::Experiment::load_value(&exp, &chaos_kinds::registry())
            .unwrap_or_else(|e| panic!("{e}"));
        let (exp, note) = spare_control_plane(&experiment(Some(false)), &c);
        assert_eq!(exp, experiment(Some(false)));
        assert!(note.is_none());
        let (_d2, off) = config("[self_protection]\nspare_control_plane = false\n");
        assert_eq!(
            spare_control_plane(&experiment(None), &off).0,
            experiment(None)
        );
    }

    #[test]
    fn host_facts_name_this_machine() {
        let reg = chaos_kinds::registry();
        let f = facts(&reg);
        assert!(!f.hostname.is_empty() && !f.kernel.is_empty());
        assert!(f.kinds.contains(&"process.stop".to_string()));
        assert_eq!(
            f.kinds.iter().any(|k| k.starts_with("service.")),
            std::path::Path::new("/run/systemd/system").is_dir()
        );
        // Exactly the kinds the registry says can run here.
        for e in reg.kinds() {
            assert_eq!(
                f.kinds.iter().any(|k| k == e.kind),
                (e.availability)().runnable(),
                "{}",
                e.kind
            );
        }
    }
}
