//! What keeps `disk.fill` and `disk.io` from touching what is not theirs, against the real
//! kernel: receipts read back from a journal and edited, fill files replaced behind the
//! fault's back, revert from another mount namespace, the protected-filesystem guard,
//! `touches` and `leftovers`. Every filesystem is a tmpfs (or an ext4 image on one) that the
//! test mounts itself; mount namespaces are held by a `sleep` the test starts.

#![cfg(feature = "privileged-tests")]

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use fault_core::host::ns::{NsId, NsKind};
use fault_core::testing::{Ext4Loop, TempDir, Tmpfs};
use fault_core::{shell_cmd, Context, Effect, ErrorKind, Fault};
use fault_disk::{DiskFill, DiskFillReceipt, DiskFillSpec, DiskIo, DiskIoReceipt, DiskIoSpec};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// A child process (`mount`, `umount`, `mkfs.ext4`, the `sleep` holding a mount namespace)
/// holds a copy of every open file of this process from its fork to its exec, another test's
/// fill file included, and that file's space is not returned until then: a revert measured in
/// that window sees its space still taken (CI saw a plan right after a revert find 0 B free).
/// Most tests here start children or measure space, so each test holds this lock throughout:
/// they run one at a time (about a second in all).
static CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn no_children() -> std::sync::MutexGuard<'static, ()> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

fn cx() -> Context {
    Context::new(
        format!("t-{}", fault_core::host::random_hex(6)),
        "privileged-test",
    )
}

fn fill(spec: serde_json::Value) -> DiskFill {
    let spec: DiskFillSpec = serde_json::from_value(spec).expect("spec parses");
    DiskFill::new(spec).expect("spec validates")
}

fn io(spec: serde_json::Value) -> DiskIo {
    let spec: DiskIoSpec = serde_json::from_value(spec).expect("spec parses");
    DiskIo::new(spec).expect("spec validates")
}

fn registry() -> fault_core::Registry {
    let mut reg = fault_core::Registry::new();
    fault_disk::register(&mut reg);
    reg
}

/// Available bytes of the filesystem holding `path`.
fn avail(path: &Path) -> u64 {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statvfs is valid; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

fn hog(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    // SAFETY: the fd is open for writing.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

fn json_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(r: &T) -> T {
    serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap()
}

// ---- receipts edited in the journal ----------------------------------------------------

#[test]
fn a_fill_receipt_edited_to_another_file_is_refused_and_the_file_survives() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = Tmpfs::mount(64 * MIB).unwrap();
    let cx = cx();
    let f = fill(json!({"path": fs.path(), "size": "4MiB"}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let reg = registry();
    // Files the test owns: a plain one in the same directory, one named like another
    // fault's fill file, and a stand-in for /etc/passwd elsewhere.
    let precious = fs.path().join("precious");
    std::fs::write(&precious, b"keep").unwrap();
    let other_fill = fs.path().join(".chaos-agent-fill-t-someone-else");
    std::fs::write(&other_fill, b"keep").unwrap();
    let elsewhere = TempDir::new("chaos-disk-etc");
    let passwd = elsewhere.path().join("passwd");
    std::fs::write(&passwd, b"keep").unwrap();
    for target in [&precious, &other_fill, &passwd] {
        let edited = DiskFillReceipt {
            file: target.clone(),
            ..r.clone()
        };
        let v = serde_json::to_value(&edited).unwrap();
        let e = reg
            .check_receipt(fault_disk::KIND, &cx.fault_id, &v)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{}: {e}", target.display());
        // Revert of the edited receipt refuses on its own as well: by name, or because the
        // file is not the one inject created.
        let e = reg.revert(fault_disk::KIND, &v).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted, "{}: {e}", target.display());
        assert_eq!(std::fs::read(target).unwrap(), b"keep");
    }
    // The receipt as inject wrote it passes, and reverts twice from its JSON.
    let v = serde_json::to_value(&r).unwrap();
    reg.check_receipt(fault_disk::KIND, &cx.fault_id, &v)
        .unwrap();
    reg.revert(fault_disk::KIND, &v).unwrap();
    reg.revert(fault_disk::KIND, &v).unwrap();
    assert!(!r.file.exists());
    assert!(precious.exists() && other_fill.exists() && passwd.exists());
}

#[test]
fn a_fill_file_replaced_after_inject_is_never_unlinked() {
    fault_core::require_root!();
    let _children = no_children();
    let tmpfs = Tmpfs::mount(64 * MIB).unwrap();
    replaced_fill_file(tmpfs.path());
    // ext4 gives a new file the inode number of the one just deleted: the generation
    // number tells them apart.
    if let Some(ext4) = Ext4Loop::mount(32 * MIB) {
        replaced_fill_file(ext4.path());
    }
}

fn replaced_fill_file(dir: &Path) {
    let cx = cx();
    let f = fill(json!({"path": dir, "size": "4MiB"}));
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let recorded = r.inode.expect("inject records the fill file's identity");
    let meta = std::fs::metadata(&r.file).unwrap();
    assert_eq!((recorded.dev, recorded.ino), (meta.dev(), meta.ino()));
    // Someone removes it and puts a file of their own under the same name.
    std::fs::remove_file(&r.file).unwrap();
    std::fs::write(&r.file, b"theirs").unwrap();
    let ino = std::fs::metadata(&r.file).unwrap().ino();
    eprintln!(
        "{}: inode {} -> {ino}, generation {:?}",
        dir.display(),
        recorded.ino,
        recorded.generation
    );
    let back = json_round_trip(&r);
    let e = DiskFill::revert(&back).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert!(e.to_string().contains("someone replaced it"), "{e}");
    assert_eq!(
        DiskFill::verify(&back).unwrap_err().kind(),
        ErrorKind::Drifted
    );
    assert_eq!(
        f.inject(&cx, &mut back.clone()).unwrap_err().kind(),
        ErrorKind::Drifted
    );
    assert_eq!(std::fs::read(&r.file).unwrap(), b"theirs");
    // A receipt journaled before inject recorded the identity reverts by name, as
    // receipts always did.
    let before = DiskFillReceipt {
        inode: None,
        ..r.clone()
    };
    DiskFill::revert(&before).unwrap();
    assert!(!r.file.exists());
}

#[test]
fn a_disk_io_receipt_edited_to_another_file_is_refused_and_the_file_survives() {
    fault_core::require_root!();
    let _children = no_children();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let cx = cx();
    let f = io(
        json!({"path": fs.path(), "workers": 2, "block_size": "64KiB",
                      "file_size": "1MiB", "rate": "1MiB"}),
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(r.file_ids.len(), 2);
    assert!(
        r.file_ids
            .iter()
            .all(|i| i.is_some_and(|i| i.generation.is_some())),
        "ext4 reports inode generations: {:?}",
        r.file_ids
    );
    for (file, id) in r.files.iter().zip(&r.file_ids) {
        let m = std::fs::metadata(file).unwrap();
        assert_eq!(id.map(|i| (i.dev, i.ino)), Some((m.dev(), m.ino())));
    }
    let precious = fs.path().join("precious");
    std::fs::write(&precious, b"keep").unwrap();
    let reg = registry();
    let mut edited = r.clone();
    edited.files[1] = precious.clone();
    let v = serde_json::to_value(&edited).unwrap();
    let e = reg
        .check_receipt(fault_disk::IO_KIND, &cx.fault_id, &v)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert_eq!(
        reg.revert(fault_disk::IO_KIND, &v).unwrap_err().kind(),
        ErrorKind::Drifted
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
    // A scratch file replaced under its name is refused too.
    let r2 = json_round_trip(&r);
    r2.stressors.stop().unwrap();
    std::fs::remove_file(&r.files[0]).unwrap();
    std::fs::write(&r.files[0], b"theirs").unwrap();
    let e = DiskIo::revert(&r2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert_eq!(std::fs::read(&r.files[0]).unwrap(), b"theirs");
    std::fs::remove_file(&r.files[0]).unwrap();
    // The receipt as written passes and reverts twice.
    let v = serde_json::to_value(&r).unwrap();
    reg.check_receipt(fault_disk::IO_KIND, &cx.fault_id, &v)
        .unwrap();
    reg.revert(fault_disk::IO_KIND, &v).unwrap();
    reg.revert(fault_disk::IO_KIND, &v).unwrap();
    assert!(r.files.iter().all(|f| !f.exists()));
    assert!(precious.exists());
    assert_eq!(DiskIo::verify(&r).unwrap().effect, Effect::Clean);
}

// ---- mount namespaces ------------------------------------------------------------------

/// A `sleep` in a mount namespace of its own, where a tmpfs of `size` is mounted on `dir`
/// (outside it, `dir` is an empty directory of the host's filesystem).
struct MntNs {
    child: std::process::Child,
    ns: NsId,
}

impl MntNs {
    fn with_tmpfs(dir: &Path, size: u64) -> MntNs {
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let opts = CString::new(format!("size={size},mode=0755")).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        // SAFETY: only raw system calls on strings prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let ok = |r: libc::c_int| {
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                ok(libc::unshare(libc::CLONE_NEWNS))?;
                ok(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                ok(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                ))
            });
        }
        let child = cmd.spawn().expect("start sleep in a mount namespace");
        let m = std::fs::metadata(format!("/proc/{}/ns/mnt", child.id())).unwrap();
        MntNs {
            child,
            ns: NsId {
                kind: NsKind::Mnt,
                dev: m.dev(),
                ino: m.ino(),
                cookie: None,
            },
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn end(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MntNs {
    fn drop(&mut self) {
        self.end();
    }
}

#[test]
fn revert_enters_the_mount_namespace_the_fill_was_made_in() {
    fault_core::require_root!();
    let _children = no_children();
    let dir = TempDir::new("chaos-disk-mntns");
    let ns = MntNs::with_tmpfs(dir.path(), 32 * MIB);
    let cx = cx();
    let f = fill(json!({"path": dir.path(), "size": "8MiB"}));
    // Planned and injected by an agent that lives in that namespace.
    let r = ns
        .ns
        .enter(|| {
            let mut r = f.plan(&cx)?;
            f.inject(&cx, &mut r)?;
            Ok(r)
        })
        .unwrap();
    assert_eq!(r.mnt_ns.as_ref(), Some(&ns.ns));
    // Out here the same path is an empty directory of the host's filesystem; put a file of
    // the test's own under the fill file's name there.
    let decoy = &r.file;
    std::fs::write(decoy, b"host file").unwrap();

    let back = json_round_trip(&r);
    assert_eq!(DiskFill::verify(&back).unwrap().effect, Effect::InEffect);
    let t = DiskFill::touches(&back);
    assert!(
        t[0].starts_with("fill 8.0 MiB of 32.0 MiB tmpfs on ")
            && t[0].contains(&format!("(mount namespace {})", ns.ns)),
        "{t:?}"
    );
    let undo = DiskFill::manual_undo(&back);
    let file = r.file.to_string_lossy();
    assert_eq!(
        undo[1],
        shell_cmd![
            "nsenter",
            format!("--mount=/proc/{}/ns/mnt", ns.pid()),
            "rm",
            "-f",
            "--",
            file
        ]
    );

    DiskFill::revert(&back).unwrap();
    DiskFill::revert(&back).unwrap();
    assert_eq!(DiskFill::verify(&back).unwrap().effect, Effect::Clean);
    let inside = ns
        .ns
        .enter(|| Ok((r.file.exists(), avail(&r.dir))))
        .unwrap();
    assert_eq!(
        inside,
        (false, 32 * MIB),
        "the fill inside the namespace is gone"
    );
    assert_eq!(
        std::fs::read(decoy).unwrap(),
        b"host file",
        "the host file is untouched"
    );
}

#[test]
fn a_mount_namespace_gone_in_the_same_boot_fails_revert_clearly_and_touches_nothing() {
    fault_core::require_root!();
    let _children = no_children();
    let dir = TempDir::new("chaos-disk-mntns");
    let mut ns = MntNs::with_tmpfs(dir.path(), 32 * MIB);
    let cx = cx();
    let f = fill(json!({"path": dir.path(), "size": "1MiB"}));
    let r = ns
        .ns
        .enter(|| {
            let mut r = f.plan(&cx)?;
            f.inject(&cx, &mut r)?;
            Ok(r)
        })
        .unwrap();
    ns.end();
    std::fs::write(&r.file, b"host file").unwrap();
    let e = DiskFill::revert(&r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("mount namespace {}", ns.ns))
            && msg.contains("not reachable")
            && msg.contains("nsenter --mount="),
        "{msg}"
    );
    assert_eq!(std::fs::read(&r.file).unwrap(), b"host file");
    let undo = DiskFill::manual_undo(&r);
    let prefix = format!("nsenter '--mount=/proc/PID-IN-{}/ns/mnt' ", ns.ns);
    assert!(undo.iter().all(|l| l.starts_with(&prefix)), "{undo:?}");

    // The same receipt from an earlier boot: namespaces do not survive a reboot, so revert
    // acts here, where the recorded identity keeps it off the host's file.
    let earlier = DiskFillReceipt {
        boot_id: Some("an-earlier-boot".into()),
        ..r.clone()
    };
    let e = DiskFill::revert(&earlier).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Drifted, "{e}");
    assert_eq!(std::fs::read(&r.file).unwrap(), b"host file");
}

// ---- the protected-filesystem guard ----------------------------------------------------

/// A context whose protected paths are `paths` (as the engine adds its state directory).
fn protecting(paths: &[&Path]) -> Context {
    Context {
        protected_paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        ..cx()
    }
}

#[test]
fn a_fill_below_the_safe_reserve_of_a_protected_filesystem_is_refused() {
    fault_core::require_root!();
    let _children = no_children();
    // 64 MiB: the safe reserve is a quarter, 16 MiB.
    let fs = Tmpfs::mount(64 * MIB).unwrap();
    let state = fs.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let dev = std::fs::metadata(fs.path()).unwrap().dev();
    let label = format!(
        "tmpfs on {} (device {}:{})",
        fs.path().display(),
        libc::major(dev),
        libc::minor(dev)
    );
    for cx in [
        protecting(&[fs.path()]),
        protecting(&[Path::new("/"), &state]),
    ] {
        let held = cx.protected_paths.last().unwrap().display().to_string();
        let e = fill(json!({"path": fs.path(), "size": "50MiB"}))
            .plan(&cx)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(
            e.to_string(),
            format!(
                "refusing to fill {label}: it holds protected path {held} and filling 50.0 MiB \
                 would leave 14.0 MiB available of 64.0 MiB, below its safe reserve of 16.0 MiB \
                 (5% of the filesystem, at least 1 GiB, at most a quarter of it); set \
                 allow_protected_filesystem = true in this fault to fill it anyway"
            )
        );
        // Within the reserve it plans; so does the fill with the explicit opt-in.
        fill(json!({"path": fs.path(), "size": "48MiB"}))
            .plan(&cx)
            .unwrap();
        let f =
            fill(json!({"path": fs.path(), "percent": 100, "allow_protected_filesystem": true}));
        let mut r = f.plan(&cx).unwrap();
        f.inject(&cx, &mut r).unwrap();
        assert_eq!(avail(fs.path()), 0);
        DiskFill::revert(&r).unwrap();
    }
    // Not protected (only / is, and this tmpfs is not the root filesystem): no guard.
    fill(json!({"path": fs.path(), "size": "60MiB"}))
        .plan(&protecting(&[Path::new("/")]))
        .unwrap();
    // A protected path that does not exist yet counts where it would be made.
    let later = state.join("not/yet");
    let e = fill(json!({"path": fs.path(), "size": "60MiB"}))
        .plan(&protecting(&[&later]))
        .unwrap_err();
    assert!(e.to_string().contains("allow_protected_filesystem"), "{e}");
}

#[test]
fn the_guard_is_checked_again_at_inject() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = Tmpfs::mount(64 * MIB).unwrap();
    let cx = protecting(&[fs.path()]);
    let f = fill(json!({"path": fs.path(), "size": "40MiB"}));
    let mut r = f.plan(&cx).unwrap();
    hog(&fs.path().join("other"), 10 * MIB); // 14 MiB would be left, the reserve is 16
    let e = f.inject(&cx, &mut r).unwrap_err();
    assert!(
        e.to_string().contains("below its safe reserve of 16.0 MiB"),
        "{e}"
    );
    assert!(!r.file.exists());
    DiskFill::revert(&r).unwrap();
}

// ---- touches ---------------------------------------------------------------------------

#[test]
fn touches_says_how_full_the_filesystem_will_be() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = Tmpfs::mount(64 * MIB).unwrap();
    let cx = cx();
    let f = fill(json!({"path": fs.path(), "percent": 60}));
    let mut r = f.plan(&cx).unwrap();
    let dev = std::fs::metadata(fs.path()).unwrap().dev();
    let want = format!(
        "fill 38.4 MiB of 64.0 MiB tmpfs on {} (device {}:{}): 60% used after the fill, \
         25.6 MiB left",
        fs.path().display(),
        libc::major(dev),
        libc::minor(dev)
    );
    assert_eq!(DiskFill::touches(&r), std::slice::from_ref(&want));
    // Once injected, the fill is not counted twice.
    f.inject(&cx, &mut r).unwrap();
    assert_eq!(DiskFill::touches(&r), [want]);
    DiskFill::revert(&r).unwrap();

    // In a subdirectory, the directory is named too.
    let sub = fs.path().join("my data");
    std::fs::create_dir(&sub).unwrap();
    let r = fill(json!({"path": sub, "size": "16MiB"}))
        .plan(&cx)
        .unwrap();
    let t = DiskFill::touches(&r);
    assert!(
        t[0].starts_with("fill 16.0 MiB of 64.0 MiB tmpfs on ")
            && t[0].contains(&format!(
                " in {}: 25% used after the fill, 48.0 MiB left",
                sub.display()
            )),
        "{t:?}"
    );
}

// ---- leftovers -------------------------------------------------------------------------

#[test]
fn leftovers_find_fill_files_of_known_ids_within_the_bounds() {
    fault_core::require_root!();
    let _children = no_children();
    let fs = Tmpfs::mount(64 * MIB).unwrap();
    let nested = fs.path().join("nested");
    std::fs::create_dir(&nested).unwrap();
    // A tmpfs mounted inside the other: not reached by the outer walk, found from its own
    // mount point.
    let inner_at = nested.join("inner");
    std::fs::create_dir(&inner_at).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8M", "tmpfs"])
        .arg(&inner_at)
        .status()
        .unwrap();
    assert!(ok.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(inner_at.clone());

    // Depth 6 below the mount point is searched; depth 7 is not (the documented bound).
    let deep6 = (1..=6).fold(fs.path().to_path_buf(), |p, i| p.join(format!("d{i}")));
    let deep7 = deep6.join("d7");
    std::fs::create_dir_all(&deep7).unwrap();

    let ids: Vec<String> = (0..5).map(|_| cx().fault_id).collect();
    let mut receipts = Vec::new();
    for (id, dir) in ids.iter().zip([fs.path(), &deep6, &deep7, &inner_at]) {
        let cx = Context {
            fault_id: id.clone(),
            ..cx()
        };
        let f = fill(json!({"path": dir, "size": "1MiB"}));
        let mut r = f.plan(&cx).unwrap();
        f.inject(&cx, &mut r).unwrap();
        receipts.push(r);
    }
    // A symlink to the deep directory is not followed (it would make the depth-7 file
    // visible at depth 2).
    std::os::unix::fs::symlink(&deep7, fs.path().join("link")).unwrap();
    // A file named like a fill file of an id this agent did not plan: never listed.
    let foreign = fs.path().join(format!(".chaos-agent-fill-{}", ids[4]));
    std::fs::write(&foreign, b"x").unwrap();

    let known: Vec<String> = ids[..4].to_vec();
    let found = DiskFill::leftovers(&known).unwrap();
    let mut got: Vec<(String, PathBuf)> = found
        .iter()
        .map(|l| (l.fault_id.clone(), l.receipt.file.clone()))
        .collect();
    got.sort();
    let mut want: Vec<(String, PathBuf)> = [0, 1, 3]
        .map(|i| (ids[i].clone(), receipts[i].file.clone()))
        .to_vec();
    want.sort();
    assert_eq!(got, want, "{found:?}");
    let reg = registry();
    for l in &found {
        assert!(l.found.starts_with("fill file "), "{}", l.found);
        assert!(l.found.contains("1.0 MiB, tmpfs on "), "{}", l.found);
        DiskFill::check_receipt(&l.fault_id, &l.receipt).unwrap();
        let v = serde_json::to_value(&l.receipt).unwrap();
        reg.revert(fault_disk::KIND, &v).unwrap();
        reg.revert(fault_disk::KIND, &v).unwrap();
        assert_eq!(
            reg.verify(fault_disk::KIND, &v).unwrap().effect,
            Effect::Clean
        );
    }
    assert!(DiskFill::leftovers(&known).unwrap().is_empty());
    assert!(
        receipts[2].file.exists(),
        "beyond the depth bound: not found, not touched"
    );
    assert!(foreign.exists());
    DiskFill::revert(&receipts[2]).unwrap();
    assert_eq!(avail(&inner_at), 8 * MIB);
}

#[test]
fn leftovers_of_disk_io_find_scratch_files_and_cgroups() {
    fault_core::require_root!();
    let _children = no_children();
    let Some(fs) = Ext4Loop::mount(32 * MIB) else {
        return;
    };
    let cx = cx();
    let f = io(
        json!({"path": fs.path(), "workers": 2, "block_size": "64KiB",
                      "file_size": "1MiB", "rate": "1MiB"}),
    );
    let mut r = f.plan(&cx).unwrap();
    f.inject(&cx, &mut r).unwrap();
    let found = DiskIo::leftovers(std::slice::from_ref(&cx.fault_id)).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let l = &found[0];
    assert_eq!(l.receipt.files, r.files);
    assert_eq!(l.receipt.dir, r.dir);
    assert_eq!(l.receipt.stressors.cgroups.len(), r.stressors.cgroups.len());
    DiskIo::check_receipt(&cx.fault_id, &l.receipt).unwrap();
    let back: DiskIoReceipt = json_round_trip(&l.receipt);
    DiskIo::revert(&back).unwrap();
    DiskIo::revert(&back).unwrap();
    for p in &r.stressors.processes {
        assert!(!p.is_alive(), "worker {} survived", p.pid);
    }
    assert!(r.files.iter().all(|f| !f.exists()));
    assert_eq!(DiskIo::verify(&back).unwrap().effect, Effect::Clean);
    assert!(DiskIo::leftovers(std::slice::from_ref(&cx.fault_id))
        .unwrap()
        .is_empty());
    DiskIo::revert(&r).unwrap(); // reaps the workers
    let t = DiskIo::touches(&r);
    assert!(
        t[0].starts_with("2 workers doing direct write I/O in 64.0 KiB blocks on ext4 /dev/loop")
            && t[0].ends_with(", at most 1.0 MiB/s each"),
        "{t:?}"
    );
    assert_eq!(
        t[1],
        format!(
            "2 scratch files of 1.0 MiB (2.0 MiB in all) in {}",
            r.dir.display()
        )
    );
}
