//! `disk.fill` by inodes against the real kernel, on a tmpfs with `nr_inodes` and a
//! loop-mounted ext4 image each test makes itself. The real disk is never filled.

#![cfg(feature = "privileged-tests")]

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use fault_core::testing::{Ext4Loop, Tmpfs};
use fault_core::{Context, Effect, ErrorKind, Fault};
use fault_disk::{DiskFill, DiskFillSpec};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// `(total inodes, free inodes)` of the filesystem holding `path`, from statvfs.
fn inodes(path: &Path) -> (u64, u64) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statvfs is valid; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_files, st.f_ffree)
}

/// `df -i`'s "IUsed IFree IUse%" for `path`, as a person would read it.
fn df_i(path: &Path) -> String {
    let out = Command::new("df")
        .args(["--output=iused,iavail,ipcent"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn cx() -> Context {
    Context::new(
        format!("i-{}", fault_core::host::random_hex(6)),
        "privileged-test",
    )
}

fn fault(spec: serde_json::Value) -> DiskFill {
    let spec: DiskFillSpec = serde_json::from_value(spec).expect("spec parses");
    DiskFill::new(spec).expect("spec validates")
}

#[test]
fn inodes_by_count_on_tmpfs_then_revert_frees_them() {
    fault_core::require_root!();
    let fs = Tmpfs::mount_with_inodes(16 * MIB, 2000).unwrap();
    let dir = fs.path();
    let (total, free0) = inodes(dir);
    let before = df_i(dir);
    let cx = cx();
    let f = fault(json!({"path": dir, "inodes": 1500}));
    let mut r = f.plan(&cx).unwrap();
    assert_eq!(r.bytes, 0);
    let t = Instant::now();
    f.inject(&cx, &mut r).unwrap();
    let took = t.elapsed();
    let during = df_i(dir);
    assert_eq!(inodes(dir).1, free0 - 1500, "df -i: {during}");
    let v = DiskFill::verify(&r).unwrap();
    assert_eq!(v.effect, Effect::InEffect, "{}", v.detail);
    // Inject again: nothing more is taken.
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(inodes(dir).1, free0 - 1500);
    let t = Instant::now();
    DiskFill::revert(&r).unwrap();
    let back = t.elapsed();
    assert_eq!(inodes(dir), (total, free0), "df -i after: {}", df_i(dir));
    assert_eq!(df_i(dir), before);
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::Clean);
    eprintln!(
        "tmpfs nr_inodes=2000: before [{before}] during [{during}] after [{}]; 1500 inodes in {took:?}, freed in {back:?}",
        df_i(dir)
    );
}

#[test]
fn inodes_percent_on_ext4_fills_to_the_df_i_percentage() {
    fault_core::require_root!();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let dir = fs.path();
    let before = df_i(dir);
    let cx = cx();
    let f = fault(json!({"path": dir, "inodes_percent": 90, "size": "4MiB"}));
    let mut r = f.plan(&cx).unwrap();
    assert!(r.bytes > 0 && r.inodes.is_some());
    let t = Instant::now();
    f.inject(&cx, &mut r).unwrap();
    let took = t.elapsed();
    let (total, free) = inodes(dir);
    let pct = (total - free) as f64 * 100.0 / total as f64;
    let during = df_i(dir);
    // Exactly the fewest used inodes whose share reaches 90% (df -i rounds it up to 91%).
    assert_eq!(
        total - free,
        (total * 9).div_ceil(10),
        "{pct}% used: {during}"
    );
    assert!(r.file.exists(), "the space half too");
    let touches = DiskFill::touches(&r);
    assert_eq!(touches.len(), 2, "{touches:?}");
    let t = Instant::now();
    DiskFill::revert(&r).unwrap();
    let back = t.elapsed();
    assert_eq!(df_i(dir), before);
    assert!(!r.file.exists());
    eprintln!(
        "ext4 32 MiB: before [{before}] during [{during}] after [{}]; {} inodes in {took:?}, freed in {back:?}",
        df_i(dir),
        r.inodes.as_ref().unwrap().count
    );
}

#[test]
fn plan_refuses_what_does_not_fit_or_has_no_inode_limit() {
    fault_core::require_root!();
    let fs = Tmpfs::mount_with_inodes(16 * MIB, 100).unwrap();
    let dir = fs.path();
    let (_, free) = inodes(dir);
    let e = fault(json!({"path": dir, "inodes": free + 1}))
        .plan(&cx())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("inodes are free"), "{e}");
    std::fs::write(dir.join("a"), "").unwrap();
    let e = fault(json!({"path": dir, "inodes_percent": 1}))
        .plan(&cx())
        .unwrap_err();
    assert!(e.to_string().contains("already has"), "{e}");
    // A tmpfs without an inode limit reports 0 inodes, like btrfs.
    let unlimited = Tmpfs::mount_with_inodes(16 * MIB, 0).unwrap();
    if inodes(unlimited.path()).0 == 0 {
        let e = fault(json!({"path": unlimited.path(), "inodes": 10}))
            .plan(&cx())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("no inode limit"), "{e}");
    } else {
        eprintln!("SKIPPED no-inode-limit case: this kernel's tmpfs nr_inodes=0 reports inodes");
    }
}

#[test]
fn the_protected_filesystem_keeps_its_inode_reserve() {
    fault_core::require_root!();
    let fs = Tmpfs::mount_with_inodes(16 * MIB, 20_000).unwrap();
    let dir = fs.path();
    let mut cx = cx();
    cx.protected_paths = vec![dir.to_path_buf()];
    // Reserve: max(5%, 10000) capped at a quarter = 5000 of 20000.
    let e = fault(json!({"path": dir, "inodes_percent": 90}))
        .plan(&cx)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("allow_protected_filesystem"), "{e}");
    let ok = fault(json!({"path": dir, "inodes_percent": 70}));
    ok.plan(&cx).unwrap();
    let opted =
        fault(json!({"path": dir, "inodes_percent": 90, "allow_protected_filesystem": true}));
    let mut r = opted.plan(&cx).unwrap();
    opted.inject(&cx, &mut r).unwrap();
    DiskFill::revert(&r).unwrap();
}

#[test]
fn inject_checks_the_free_inodes_again_and_takes_nothing_when_short() {
    fault_core::require_root!();
    let fs = Tmpfs::mount_with_inodes(16 * MIB, 500).unwrap();
    let dir = fs.path();
    let cx = cx();
    let f = fault(json!({"path": dir, "inodes": 400}));
    let mut r = f.plan(&cx).unwrap();
    // Another writer takes inodes between plan and inject.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    for n in 0..200 {
        std::fs::write(other.join(n.to_string()), "").unwrap();
    }
    let (_, free) = inodes(dir);
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert!(e.to_string().contains("inodes are free"), "{e}");
    assert_eq!(inodes(dir).1, free, "inodes left taken");
    assert!(!r.inodes.as_ref().unwrap().dir.exists());
}
