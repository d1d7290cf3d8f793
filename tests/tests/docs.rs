//! docs/faults.md embeds the output of `chaos-agent faults`; keep it current.

mod common;

#[test]
fn docs_faults_md_matches_chaos_agent_faults() {
    let out = std::process::Command::new(common::agent_bin())
        .arg("faults")
        .output()
        .unwrap();
    assert!(out.status.success());
    let current = String::from_utf8(out.stdout).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/faults.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (
        "<!-- BEGIN chaos-agent faults -->\n",
        "<!-- END chaos-agent faults -->",
    );
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let stop = doc.find(end).expect("end marker");
    let want = format!("```text\n{current}```\n");
    if doc[start..stop] != want {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[stop..])).unwrap();
            return;
        }
        panic!("docs/faults.md is out of date: run `UPDATE_DOCS=1 cargo test -p chaos-tests --test docs`");
    }
}

/// The example `chaos-agent faults` shows for every kind is a valid experiment fragment
/// (planning may still fail on this host: `name = "worker"` need not exist here).
#[test]
fn every_kind_example_passes_validation() {
    let bin = common::agent_bin();
    let out = std::process::Command::new(&bin)
        .args(["faults", "--json"])
        .output()
        .unwrap();
    let kinds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = fault_core::testing::TempDir::new("chaos-examples");
    for k in kinds.as_array().unwrap() {
        let kind = k["kind"].as_str().unwrap();
        let example = k["example"].as_str().unwrap();
        assert!(
            example.contains(&format!("kind = \"{kind}\"")),
            "{kind}: {example}"
        );
        let file = dir.path().join(format!("{kind}.toml"));
        let text = format!("name = \"example\"\n[[steps]]\n[[steps.faults]]\n{example}\n");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(&bin)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["run", "--dry-run"])
            .arg(&file)
            .output()
            .unwrap();
        assert_ne!(
            out.status.code(),
            Some(2),
            "{kind}: its example is invalid:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The README's table of fault kinds names every kind `chaos-agent faults` knows.
#[test]
fn readme_fault_table_lists_every_kind() {
    let out = std::process::Command::new(common::agent_bin())
        .args(["faults", "--json"])
        .output()
        .unwrap();
    let kinds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Fault kinds"))
        .take_while(|l| !l.starts_with("## ") || l.starts_with("## Fault kinds"))
        .filter(|l| l.starts_with("| `"))
        .collect();
    let mut missing = Vec::new();
    for k in kinds.as_array().unwrap() {
        let kind = k["kind"].as_str().unwrap();
        // A row may list siblings as `network.latency`, `.loss`, …
        let (family, leaf) = kind.split_once('.').unwrap();
        let listed = table.iter().any(|row| {
            let first = row.split('|').nth(1).unwrap_or("");
            first.contains(&format!("`{kind}`"))
                || (first.contains(&format!("`{family}.")) && first.contains(&format!("`.{leaf}`")))
        });
        if !listed {
            missing.push(kind);
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's fault table lacks {missing:?}"
    );
}

/// The README's first command: `examples/demo.sh` runs the demo for real and leaves nothing
/// behind — in particular no empty `/tmp/chaos-demo/data` on the root filesystem, which
/// `demo.toml` would then target.
#[test]
fn demo_runs_and_removes_what_it_made() {
    if !fault_core::host::is_root() {
        eprintln!("SKIPPED demo_runs_and_removes_what_it_made: needs root (mounts a tmpfs)");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo = std::path::Path::new("/tmp/chaos-demo");
    let out = std::process::Command::new("bash")
        .arg(root.join("examples/demo.sh"))
        .env("CHAOS_AGENT_BIN", common::agent_bin())
        .output()
        .unwrap();
    let t = common::text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("The host is clean"), "{t}");
    assert!(
        t.contains("touches:"),
        "the dry run shows the blast radius: {t}"
    );
    assert!(
        !demo.exists(),
        "demo.sh left {} behind:\n{t}",
        demo.display()
    );
    // Without the demo's tmpfs, the experiment is refused before anything changes.
    let state = fault_core::testing::TempDir::new("chaos-demo-after");
    let out = std::process::Command::new(common::agent_bin())
        .arg("--state-dir")
        .arg(state.path())
        .args(["run", "--dry-run"])
        .arg(root.join("examples/experiments/demo.toml"))
        .output()
        .unwrap();
    let t = common::text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("WOULD FAIL NOW"), "{t}");
}
