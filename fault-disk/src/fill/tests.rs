//! Unit tests of `disk.fill` that need no privilege.

use super::*;
use serde_json::json;

fn build(spec: serde_json::Value) -> Result<DiskFill> {
    let spec: DiskFillSpec =
        serde_json::from_value(spec).map_err(|e| Error::invalid(e.to_string()))?;
    DiskFill::new(spec)
}

#[test]
fn spec_validation_table() {
    let ok = [
        json!({"path": "/var/tmp", "size": "1GiB"}),
        json!({"path": "/var/tmp", "size": 4096}),
        json!({"path": "/var/tmp", "percent": 90}),
        json!({"path": "/var/tmp", "percent": "12.5%", "reserve": "100MiB"}),
        json!({"path": "/", "percent": 100}),
        json!({"path": "/var/tmp", "inodes": 1000}),
        json!({"path": "/var/tmp", "inodes_percent": 95}),
        json!({"path": "/var/tmp", "size": "1GiB", "inodes_percent": "50%"}),
    ];
    for spec in ok {
        build(spec.clone()).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
    let bad = [
        (
            json!({"path": "/var/tmp", "size": "1GiB", "color": 1}),
            "unknown field",
        ),
        (json!({"size": "1GiB"}), "missing field `path`"),
        (json!({"path": "var/tmp", "size": "1GiB"}), "is relative"),
        (json!({"path": "", "size": "1GiB"}), "path is empty"),
        (json!({"path": "/a\u{0}b", "size": "1GiB"}), "NUL"),
        (
            json!({"path": "/var/tmp", "size": "1GiB", "percent": 5}),
            "both size and percent",
        ),
        (json!({"path": "/var/tmp"}), "neither size nor percent"),
        (
            json!({"path": "/var/tmp", "inodes": 5, "inodes_percent": 5}),
            "both inodes and inodes_percent",
        ),
        (json!({"path": "/var/tmp", "inodes": 0}), "inodes is 0"),
        (
            json!({"path": "/var/tmp", "inodes": 10_000_001}),
            "more than the 10000000",
        ),
        (json!({"path": "/var/tmp", "inodes": -1}), "invalid value"),
        (json!({"path": "/var/tmp", "inodes": 1.5}), "invalid type"),
        (
            json!({"path": "/var/tmp", "inodes": "many"}),
            "invalid type",
        ),
        (
            json!({"path": "/var/tmp", "inodes_percent": 0}),
            "inodes_percent is 0",
        ),
        (
            json!({"path": "/var/tmp", "inodes_percent": "101%"}),
            "out of range",
        ),
        (
            json!({"path": "/var/tmp", "inodes": null}),
            "neither size nor percent",
        ),
        (
            json!({"path": "/var/tmp", "reserve": "1GiB"}),
            "neither size nor percent",
        ),
        (json!({"path": "/var/tmp", "size": 0}), "size is 0"),
        (json!({"path": "/var/tmp", "size": "0MiB"}), "size is 0"),
        (json!({"path": "/var/tmp", "percent": 0}), "percent is 0"),
        (json!({"path": "/var/tmp", "percent": "0%"}), "percent is 0"),
        (
            json!({"path": "/var/tmp", "percent": "101%"}),
            "out of range",
        ),
        (json!({"path": "/var/tmp", "percent": -5}), "out of range"),
        (json!({"path": "/var/tmp", "size": "-1MiB"}), "negative"),
        (json!({"path": "/var/tmp", "size": "lots"}), "invalid size"),
    ];
    for (spec, want) in bad {
        let e = build(spec.clone()).expect_err(&spec.to_string());
        assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{spec}");
        assert!(
            e.to_string().contains(want),
            "{spec}: {e} (wanted {want:?})"
        );
    }
}

#[test]
fn registry_reports_invalid_specs() {
    let mut reg = fault_core::Registry::new();
    crate::register(&mut reg);
    let e = reg
        .build(KIND, &json!({"path": "/tmp", "percent": "101%"}))
        .err()
        .expect("101% must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert!(e.to_string().starts_with("percent: "), "{e}");
    let e = reg
        .build(KIND, &json!({"path": "/tmp", "size": 1, "bogus": true}))
        .err()
        .expect("unknown key must be refused");
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn example_validates_through_the_registry() {
    let examples = chaos_engine::testing::build_examples(crate::register);
    assert_eq!(
        examples[KIND].describe(),
        "fill the filesystem of /var/tmp to 90% used"
    );
    let info = DiskFill::info();
    assert!(info.reversible);
    // Every documented parameter is a spec field, and every field is documented.
    let names: Vec<&str> = info.params.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "path",
            "size",
            "percent",
            "inodes",
            "inodes_percent",
            "reserve",
            "allow_protected_filesystem"
        ]
    );
}

#[test]
fn describe_names_amount_and_reserve() {
    let f = build(json!({"path": "/srv", "size": "2GiB", "reserve": "100MiB"})).unwrap();
    assert_eq!(
        f.describe(),
        "allocate 2.0 GiB on the filesystem of /srv, keeping at least 100.0 MiB available"
    );
}

#[test]
fn spec_round_trips() {
    let spec = DiskFillSpec {
        path: "/srv".into(),
        size: None,
        percent: Some("40%".parse().unwrap()),
        inodes: None,
        inodes_percent: None,
        reserve: Some(Bytes(1 << 20)),
        allow_protected_filesystem: false,
    };
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        v,
        json!({"path": "/srv", "percent": 40.0, "reserve": "1MiB"})
    );
    assert_eq!(serde_json::from_value::<DiskFillSpec>(v).unwrap(), spec);
    let allowed = DiskFillSpec {
        allow_protected_filesystem: true,
        ..spec
    };
    let v = serde_json::to_value(&allowed).unwrap();
    assert_eq!(v["allow_protected_filesystem"], json!(true));
    assert_eq!(serde_json::from_value::<DiskFillSpec>(v).unwrap(), allowed);
}

#[test]
fn fill_file_name_comes_from_the_fault_id() {
    let p = fill_file(Path::new("/srv"), "f-123").unwrap();
    assert_eq!(p, Path::new("/srv/.chaos-agent-fill-f-123"));
    for bad in ["", "a/b", "../x", "a\0b"] {
        let e = fill_file(Path::new("/srv"), bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{bad:?}");
    }
    let long = "x".repeat(NAME_MAX - FILE_PREFIX.len());
    assert!(fill_file(Path::new("/srv"), &long).is_ok());
    assert!(fill_file(Path::new("/srv"), &format!("{long}x")).is_err());
}

fn receipt(dir: &str, id: &str) -> DiskFillReceipt {
    DiskFillReceipt {
        dir: dir.into(),
        file: Path::new(dir).join(format!("{FILE_PREFIX}{id}")),
        bytes: 4096,
        device: 2049,
        mnt_ns: None,
        boot_id: None,
        inode: None,
        inodes: None,
    }
}

#[test]
fn manual_undo_and_targets() {
    let r = receipt("/srv/it's", "f1");
    assert_eq!(
        DiskFill::manual_undo(&r)[1],
        r"rm -f -- '/srv/it'\''s/.chaos-agent-fill-f1'"
    );
    assert!(DiskFill::manual_undo(&r)[0].starts_with(r"chattr -i -a -- '/srv/it'\''s/"));
    assert_eq!(DiskFill::targets(&r), ["path:/srv/it's"]);
}

#[test]
fn manual_undo_quotes_spaces_and_semicolons() {
    let r = receipt("/srv/my data;rm -rf ~", "f1");
    assert_eq!(
        DiskFill::manual_undo(&r),
        [
            "chattr -i -a -- '/srv/my data;rm -rf ~/.chaos-agent-fill-f1'  # only if \
             `lsattr` shows it immutable (i) or append-only (a)",
            "rm -f -- '/srv/my data;rm -rf ~/.chaos-agent-fill-f1'",
        ]
    );
    // Plain paths stay readable.
    assert_eq!(
        DiskFill::manual_undo(&receipt("/srv/data", "f1"))[1],
        "rm -f -- /srv/data/.chaos-agent-fill-f1"
    );
    // Made in a mount namespace nothing refers to any more: the person is told to
    // enter it, in one quoted word.
    let r = DiskFillReceipt {
        mnt_ns: Some(NsId {
            kind: fault_core::host::ns::NsKind::Mnt,
            dev: 4,
            ino: 1,
            cookie: None,
        }),
        ..receipt("/srv/my data", "f1")
    };
    assert_eq!(
        DiskFill::manual_undo(&r)[1],
        "nsenter '--mount=/proc/PID-IN-mnt:[1]/ns/mnt' rm -f -- \
         '/srv/my data/.chaos-agent-fill-f1'"
    );
}

#[test]
fn check_receipt_wants_exactly_the_file_of_the_fault_id() {
    let r = receipt("/srv/data", "f1");
    DiskFill::check_receipt("f1", &r).unwrap();
    let edits = [
        ("f2", r.clone()),
        (
            "f1",
            DiskFillReceipt {
                file: "/etc/passwd".into(),
                ..r.clone()
            },
        ),
        (
            "f1",
            DiskFillReceipt {
                file: "/srv/data/precious".into(),
                ..r.clone()
            },
        ),
        (
            "f1",
            DiskFillReceipt {
                file: "/srv/data/.chaos-agent-fill-f2".into(),
                ..r.clone()
            },
        ),
        ("f1", receipt("/srv/data/../../etc", "f1")),
        ("f1", receipt("srv/data", "f1")),
        ("a/b", receipt("/srv/data", "a/b")),
        ("", r.clone()),
    ];
    for (id, edited) in edits {
        let e = DiskFill::check_receipt(id, &edited).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{id} {edited:?}: {e}");
    }
    // Revert alone (no fault id) still refuses what is no fill file in its directory.
    for file in [
        "/etc/passwd",
        "/srv/data/precious",
        "/srv/data/sub/.chaos-agent-fill-f1",
    ] {
        let edited = DiskFillReceipt {
            file: file.into(),
            ..r.clone()
        };
        let e = DiskFill::revert(&edited).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{file}: {e}");
    }
}

#[test]
fn receipts_of_the_first_release_still_read_and_write_back_the_same() {
    let old = json!({
        "dir": "/nonexistent-chaos-dir",
        "file": "/nonexistent-chaos-dir/.chaos-agent-fill-x",
        "bytes": 4096,
        "device": 2049
    });
    let r: DiskFillReceipt = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(r, receipt("/nonexistent-chaos-dir", "x"));
    assert_eq!(serde_json::to_value(&r).unwrap(), old);
    DiskFill::revert(&r).unwrap();
    assert_eq!(DiskFill::manual_undo(&r).len(), 2);
}

#[test]
fn plan_records_the_mount_namespace_and_boot() {
    let dir = std::env::temp_dir();
    // Only planned, never injected: the protected-filesystem guard (which refuses a plan when
    // the temporary directory's filesystem is short of its safe reserve, as a full build disk
    // can be) is not what this test is about.
    let f = build(json!({"path": dir, "size": 4096, "allow_protected_filesystem": true})).unwrap();
    let cx = Context::new("plan-ns", "run");
    let r = f.plan(&cx).unwrap();
    assert_eq!(r.mnt_ns, files::current_mnt_ns());
    assert!(r.mnt_ns.is_some());
    assert_eq!(r.boot_id.as_deref(), Some(cx.boot_id.as_str()));
    assert_eq!(r.inode, None, "identity comes with the file, at inject");
    DiskFill::check_receipt("plan-ns", &r).unwrap();
    let back: DiskFillReceipt = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn receipt_functions_work_without_the_filesystem() {
    // A receipt whose directory is gone: clean, and revert succeeds.
    let r = receipt("/nonexistent-chaos-dir", "x");
    assert_eq!(
        DiskFill::verify(&r).unwrap().effect,
        fault_core::Effect::Clean
    );
    DiskFill::revert(&r).unwrap();
    DiskFill::revert(&r).unwrap();
}

#[test]
fn plan_errors_need_no_privilege() {
    let cx = Context::new("plan-test", "run");
    let f = build(json!({"path": "/nonexistent-chaos-dir", "size": 1})).unwrap();
    assert_eq!(f.plan(&cx).unwrap_err().kind(), ErrorKind::NotFound);
    let f = build(json!({"path": "/proc/self/status", "size": 1})).unwrap();
    let e = f.plan(&cx).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert_eq!(e.to_string(), "/proc/self/status is not a directory");
}

#[test]
fn inode_receipts_are_checked_against_the_fault_id() {
    let with = |dir: &str| DiskFillReceipt {
        bytes: 0,
        inodes: Some(InodeFill {
            dir: dir.into(),
            count: 10,
            id: None,
        }),
        ..receipt("/srv/data", "f1")
    };
    let r = with("/srv/data/.chaos-agent-inodes-f1");
    DiskFill::check_receipt("f1", &r).unwrap();
    assert_eq!(
        DiskFill::manual_undo(&r)[2],
        "rm -rf -- /srv/data/.chaos-agent-inodes-f1  # the inode fill: a directory of empty \
         files named after the fault id"
    );
    for bad in [
        "/srv/data/.chaos-agent-inodes-f2",
        "/srv/data/sub/.chaos-agent-inodes-f1",
        "/etc",
        "/srv/data/precious",
    ] {
        let e = DiskFill::check_receipt("f1", &with(bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{bad}: {e}");
        // Revert alone refuses it too.
        let e = DiskFill::revert(&with(bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{bad}: {e}");
    }
    // Receipts without the inode fill write back without the field.
    let v = serde_json::to_value(receipt("/srv", "x")).unwrap();
    assert!(v.get("inodes").is_none(), "{v}");
    let back: DiskFillReceipt = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn describe_names_inodes() {
    let f = build(json!({"path": "/srv", "inodes_percent": 95})).unwrap();
    assert_eq!(
        f.describe(),
        "fill the inodes of the filesystem of /srv to 95% used"
    );
    let f = build(json!({"path": "/srv", "size": "1MiB", "inodes": 7})).unwrap();
    assert_eq!(
        f.describe(),
        "allocate 1.0 MiB on the filesystem of /srv and take 7 inodes of the filesystem of /srv"
    );
}

#[test]
fn an_inode_fill_in_a_temporary_directory_runs_the_whole_cycle() {
    let t = fault_core::testing::TempDir::new("fill-inodes");
    let f = build(json!({"path": t.path(), "inodes": 21})).unwrap();
    let cx = Context::new("ino-1", "run");
    let mut r = match f.plan(&cx) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(r.bytes, 0);
    assert_eq!(r.inodes.as_ref().unwrap().count, 21);
    f.inject(&cx, &mut r).unwrap();
    let dir = t.path().join(".chaos-agent-inodes-ino-1");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 20);
    assert!(!r.file.exists(), "no fill file for an inode-only fill");
    let v = DiskFill::verify(&r).unwrap();
    assert_eq!(v.effect, fault_core::Effect::InEffect, "{}", v.detail);
    let touches = DiskFill::touches(&r);
    assert!(touches[0].starts_with("take 21 of "), "{touches:?}");
    DiskFill::revert(&r).unwrap();
    assert!(!dir.exists());
    DiskFill::revert(&r).unwrap();
    assert_eq!(
        DiskFill::verify(&r).unwrap().effect,
        fault_core::Effect::Clean
    );
}
