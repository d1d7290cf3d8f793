//! `disk.fill` against the real kernel, on tmpfs (and one loop-mounted ext4 image kept on a
//! tmpfs) filesystems each test mounts itself. The real disk is never filled.

#![cfg(feature = "privileged-tests")]

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use fault_core::testing::Ext4Loop;
use fault_core::testing::{TempDir, Tmpfs};
use fault_core::{Context, Effect, ErrorKind, Fault};
use fault_disk::{DiskFill, DiskFillReceipt, DiskFillSpec};
use serde_json::json;

const MIB: u64 = 1 << 20;
const FS_SIZE: u64 = 64 * MIB;

/// `(available bytes, df-style percent used)` of the filesystem holding `path`.
fn df(path: &Path) -> (u64, f64) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statvfs is valid; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let fr = st.f_frsize;
    let used = (st.f_blocks - st.f_bfree) * fr;
    let avail = st.f_bavail * fr;
    (avail, used as f64 * 100.0 / (used + avail) as f64)
}

/// A child process (`mount`, `mkfs.ext4`, `umount`) holds a copy of every open file of this
/// process from its fork to its exec, another test's fill file included, and the space of
/// that file is not returned until then: on a loaded machine a revert measured in that window
/// sees its space still taken. Tests that measure what a revert returns hold this lock while
/// a fill file may be open; tests that start children hold it while they do.
static CHILDREN: Mutex<()> = Mutex::new(());

fn no_children() -> MutexGuard<'static, ()> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

fn cx() -> Context {
    Context::new(
        format!("t-{}", fault_core::host::random_hex(6)),
        "privileged-test",
    )
}

fn fault(spec: serde_json::Value) -> DiskFill {
    let spec: DiskFillSpec = serde_json::from_value(spec).expect("spec parses");
    DiskFill::new(spec).expect("spec validates")
}

fn tmpfs() -> Tmpfs {
    Tmpfs::mount(FS_SIZE).expect("mount tmpfs")
}

/// Allocate `bytes` in a file of our own (the "other writer" in the tests).
fn hog(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    // SAFETY: the fd is open for writing.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    assert_eq!(
        r,
        0,
        "hog {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Every entry of a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn fill_by_size_takes_the_space_and_revert_returns_it() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = tmpfs();
    let (before, _) = df(fs.path());
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "16MiB"}));
    let mut r = f.plan(&cx).unwrap();
    assert_eq!(r.bytes, 16 * MIB);
    assert_eq!(
        r.file,
        fs.path().join(format!(".chaos-agent-fill-{}", cx.fault_id))
    );
    assert_eq!(r.device, std::fs::metadata(fs.path()).unwrap().dev());
    assert_eq!(
        DiskFill::targets(&r),
        [format!("path:{}", fs.path().display())]
    );
    // Plan changes nothing.
    assert!(!r.file.exists());
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::Clean);

    f.inject(&cx, &mut r).unwrap();
    let (during, _) = df(fs.path());
    assert_eq!(before - during, 16 * MIB, "avail {before} -> {during}");
    let meta = std::fs::symlink_metadata(&r.file).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 16 * MIB);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let obs = DiskFill::verify(&r).unwrap();
    assert_eq!(obs.effect, Effect::InEffect, "{}", obs.detail);
    assert!(obs.detail.contains("% used"), "{}", obs.detail);

    DiskFill::revert(&r).unwrap();
    assert_eq!(df(fs.path()).0, before);
    assert!(!r.file.exists());
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::Clean);
    assert!(entries(fs.path()).is_empty());
}

#[test]
fn percent_fills_to_the_df_percentage() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = tmpfs();
    hog(&fs.path().join("existing"), 8 * MIB); // start at 12.5%
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "percent": 50}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let (_, pct) = df(fs.path());
    assert!((pct - 50.0).abs() <= 1.0, "{pct}% used");
    DiskFill::revert(&r).unwrap();
    let (_, after) = df(fs.path());
    assert!((after - 12.5).abs() < 0.1, "{after}% used after the revert");
}

#[test]
fn percent_already_reached_is_refused_at_plan() {
    fault_core::require_root!();
    let fs = tmpfs();
    hog(&fs.path().join("existing"), 40 * MIB); // 62.5%
    let e = fault(json!({"path": fs.path(), "percent": "50%"}))
        .plan(&cx())
        .unwrap_err();
    let want = format!(
        "{} is already 62.5% used (requested 50%)",
        fs.path().display()
    );
    assert_eq!(e.to_string(), want);
}

#[test]
fn inject_twice_is_inject_once() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = tmpfs();
    let (before, _) = df(fs.path());
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "8MiB"}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let ino = std::fs::metadata(&r.file).unwrap().ino();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(std::fs::metadata(&r.file).unwrap().ino(), ino);
    assert_eq!(before - df(fs.path()).0, 8 * MIB);
    assert_eq!(entries(fs.path()).len(), 1);
    DiskFill::revert(&r).unwrap();
    assert_eq!(df(fs.path()).0, before);
}

#[test]
fn inject_completes_a_fill_file_left_short() {
    fault_core::require_root!();
    let fs = tmpfs();
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "8MiB"}));
    let mut r = f.plan(&cx).unwrap();
    // As if an earlier inject died between open and fallocate.
    std::fs::File::create(&r.file).unwrap();
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::Partial);
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::InEffect);
    DiskFill::revert(&r).unwrap();
}

#[test]
fn revert_twice_and_from_a_journaled_receipt() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = tmpfs();
    let (before, _) = df(fs.path());
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "4MiB"}));
    let mut r = f.plan(&cx).unwrap();
    // Revert before inject: nothing to do.
    DiskFill::revert(&r).unwrap();
    f.inject(&cx, &mut r).unwrap();

    // A fresh process only has the journal's JSON.
    let journaled = serde_json::to_string(&r).unwrap();
    drop(f);
    let back: DiskFillReceipt = serde_json::from_str(&journaled).unwrap();
    assert_eq!(back, r);
    DiskFill::revert(&back).unwrap();
    DiskFill::revert(&back).unwrap();
    DiskFill::revert(&r).unwrap();
    assert_eq!(df(fs.path()).0, before);
    assert_eq!(DiskFill::verify(&back).unwrap().effect, Effect::Clean);

    // The registry path too.
    let mut reg = fault_core::Registry::new();
    fault_disk::register(&mut reg);
    let v: serde_json::Value = serde_json::from_str(&journaled).unwrap();
    reg.revert(fault_disk::KIND, &v).unwrap();
    let undo = reg.manual_undo(fault_disk::KIND, &v).unwrap();
    assert_eq!(undo.len(), 2, "{undo:?}");
    let file = r.file.to_string_lossy();
    assert!(
        undo[0].starts_with(&fault_core::shell_cmd!["chattr", "-i", "-a", "--", file]),
        "{undo:?}"
    );
    assert_eq!(undo[1], fault_core::shell_cmd!["rm", "-f", "--", file]);
}

#[test]
fn registry_runs_the_whole_cycle() {
    fault_core::require_root!();
    let fs = tmpfs();
    let mut reg = fault_core::Registry::new();
    fault_disk::register(&mut reg);
    let cx = cx();
    let dynf = reg
        .build(
            fault_disk::KIND,
            &json!({"path": fs.path(), "size": "2MiB"}),
        )
        .unwrap();
    let mut r = dynf.plan(&cx).unwrap();
    dynf.inject(&cx, &mut r).unwrap();
    assert_eq!(
        reg.verify(fault_disk::KIND, &r).unwrap().effect,
        Effect::InEffect
    );
    reg.revert(fault_disk::KIND, &r).unwrap();
    assert_eq!(
        reg.verify(fault_disk::KIND, &r).unwrap().effect,
        Effect::Clean
    );
}

#[test]
fn size_larger_than_free_is_refused_at_plan() {
    fault_core::require_root!();
    let fs = tmpfs();
    let e = fault(json!({"path": fs.path(), "size": "100MiB"}))
        .plan(&cx())
        .unwrap_err();
    let want = format!(
        "requested 100.0 MiB but only 64.0 MiB is available on {}",
        fs.path().display()
    );
    assert_eq!(e.to_string(), want);
    assert!(entries(fs.path()).is_empty());
}

#[test]
fn reserve_violation_is_refused_at_plan() {
    fault_core::require_root!();
    let fs = tmpfs();
    let e = fault(json!({"path": fs.path(), "size": "60MiB", "reserve": "8MiB"}))
        .plan(&cx())
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("but only 56.0 MiB of the 64.0 MiB available") && s.contains("reserve 8.0 MiB"),
        "{s}"
    );
    assert!(entries(fs.path()).is_empty());
    // Within the reserve it plans.
    fault(json!({"path": fs.path(), "size": "56MiB", "reserve": "8MiB"}))
        .plan(&cx())
        .unwrap();
}

#[test]
fn enospc_during_inject_leaves_no_fill_file() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = tmpfs();
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "32MiB"}));
    let mut r = f.plan(&cx).unwrap();
    // Someone else takes the space between plan and inject.
    hog(&fs.path().join("other"), 48 * MIB);
    let (avail, _) = df(fs.path());
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("not enough space on {}", fs.path().display())),
        "{e}"
    );
    assert!(!r.file.exists());
    assert_eq!(entries(fs.path()), ["other"]);
    assert_eq!(df(fs.path()).0, avail);
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::Clean);
    DiskFill::revert(&r).unwrap();
}

#[test]
fn reserve_is_checked_again_at_inject() {
    fault_core::require_root!();
    let fs = tmpfs();
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "16MiB", "reserve": "16MiB"}));
    let mut r = f.plan(&cx).unwrap();
    hog(&fs.path().join("other"), 40 * MIB); // 24 MiB left: the fill fits, the reserve not
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert!(e.to_string().contains("reserve 16.0 MiB"), "{e}");
    assert!(!r.file.exists());
    assert_eq!(entries(fs.path()), ["other"]);
}

#[test]
fn path_that_is_a_file_is_refused() {
    fault_core::require_root!();
    let fs = tmpfs();
    let file = fs.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let e = fault(json!({"path": file, "size": "1MiB"}))
        .plan(&cx())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpec);
    assert_eq!(
        e.to_string(),
        format!("{} is not a directory", file.display())
    );
    let e = fault(json!({"path": fs.path().join("missing"), "size": "1MiB"}))
        .plan(&cx())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn a_foreign_file_named_like_ours_elsewhere_is_never_touched() {
    fault_core::require_root!();
    let fs = tmpfs();
    let other = TempDir::new("chaos-disk-foreign");
    let cx = cx();
    let name = format!(".chaos-agent-fill-{}", cx.fault_id);
    let foreign = other.path().join(&name);
    std::fs::write(&foreign, b"not yours").unwrap();
    let f = fault(json!({"path": fs.path(), "size": "1MiB"}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    DiskFill::revert(&r).unwrap();
    assert_eq!(std::fs::read(&foreign).unwrap(), b"not yours");
    // Nor does a fault with another id touch ours.
    let mut r1 = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r1).unwrap();
    let r2 = f.plan(&self::cx()).unwrap();
    DiskFill::revert(&r2).unwrap();
    assert_eq!(DiskFill::verify(&r1).unwrap().effect, Effect::InEffect);
    DiskFill::revert(&r1).unwrap();
}

#[test]
fn revert_refuses_to_delete_a_directory_or_symlink_at_the_fill_path() {
    fault_core::require_root!();
    let fs = tmpfs();
    let cx = cx();
    let f = fault(json!({"path": fs.path(), "size": "1MiB"}));
    let mut r = f.plan(&cx).unwrap();

    std::fs::create_dir(&r.file).unwrap();
    let e = DiskFill::revert(&r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted);
    assert!(e.to_string().contains("it is a directory"), "{e}");
    assert!(r.file.is_dir());
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert!(r.file.is_dir(), "inject must not remove what is not ours");
    std::fs::remove_dir(&r.file).unwrap();

    let target = fs.path().join("precious");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, &r.file).unwrap();
    let e = DiskFill::revert(&r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted);
    assert!(e.to_string().contains("it is a symlink"), "{e}");
    assert_eq!(DiskFill::verify(&r).unwrap_err().kind(), ErrorKind::Drifted);
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert!(std::fs::symlink_metadata(&r.file).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

#[test]
fn read_only_filesystem_is_refused_at_plan() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = tmpfs();
    let ok = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .status()
        .expect("run mount");
    assert!(ok.success());
    let e = fault(json!({"path": fs.path(), "size": "1MiB"}))
        .plan(&cx())
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[test]
fn ext4_partial_allocation_on_enospc_is_removed() {
    fault_core::require_root!();
    let _children = no_children();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let dir = fs.path();
    let cx = cx();
    let f = fault(json!({"path": dir, "size": "16MiB"}));
    let mut r = f.plan(&cx).unwrap();
    let (avail, _) = df(dir);
    // Leave ~8 MiB: ext4 allocates what it can, then fails with ENOSPC.
    hog(&dir.join("other"), avail - 8 * MIB);
    let (left, _) = df(dir);
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(!r.file.exists(), "partial fill file left behind");
    assert_eq!(
        df(dir).0,
        left,
        "space of the partial allocation not returned"
    );

    // And a fill that fits works on ext4 as on tmpfs, to the df percentage.
    std::fs::remove_file(dir.join("other")).unwrap();
    let f = fault(json!({"path": dir, "percent": 80}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let (_, pct) = df(dir);
    assert!((pct - 80.0).abs() <= 1.0, "{pct}% used");
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::InEffect);
    DiskFill::revert(&r).unwrap();
    assert_eq!(DiskFill::verify(&r).unwrap().effect, Effect::Clean);
}
