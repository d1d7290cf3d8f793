//! `disk.fill` by inodes through the real agent, on a tmpfs with `nr_inodes` the test
//! mounts: `df -i` shows the inodes taken while the fault holds and free after; a `kill -9`
//! with the fault applied is cleaned by `recover`, also when the journal lost its record
//! (the directory is found by its name).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{text, wait_with_deadline, Sandbox};
use fault_core::testing::Tmpfs;

/// `(total, free)` inodes of the filesystem holding `path`.
fn inodes(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statvfs is valid; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_files, st.f_ffree)
}

/// `df`'s "IUsed IFree IUse%" of `path`.
fn df_i(path: &Path) -> String {
    let out = std::process::Command::new("df")
        .args(["--output=iused,iavail,ipcent"])
        .arg(path)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = s.lines().nth(1).unwrap_or_default();
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn experiment(sb: &Sandbox, fs: &Path) -> std::path::PathBuf {
    sb.write(
        "inodes.toml",
        &format!(
            r#"
name = "inodes"
[[steps]]
  [[steps.faults]]
  kind = "disk.fill"
  duration = "30s"
  path = "{}"
  inodes_percent = 80
"#,
            fs.display()
        ),
    )
}

fn crash_with_the_inodes_taken(sb: &Sandbox, fs: &Tmpfs) -> (u64, u64) {
    let before = inodes(fs.path());
    let shown = df_i(fs.path());
    let exp = experiment(sb, fs.path());
    let out = sb.agent(&["run", "--dry-run", exp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("take 2399 of 3000 inodes"),
        "{}",
        text(&out)
    );
    let mut child = sb.spawn(
        &["run", exp.to_str().unwrap()],
        Some("after-journal-applied"),
    );
    wait_with_deadline(&mut child, Duration::from_secs(30));
    let (total, free) = inodes(fs.path());
    // 80% of 3000 = 2400 used; the root directory was one of them.
    assert_eq!(total - free, 2400, "df -i during: {}", df_i(fs.path()));
    eprintln!("df -i before [{shown}] during [{}]", df_i(fs.path()));
    before
}

fn inode_dirs(fs: &Path) -> Vec<String> {
    std::fs::read_dir(fs)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".chaos-agent-inodes-"))
        .collect()
}

#[test]
fn kill_9_with_the_inodes_taken_then_recover_frees_them() {
    let Some(sb) = Sandbox::new("kill_9_with_the_inodes_taken_then_recover_frees_them") else {
        return;
    };
    let fs = Tmpfs::mount_with_inodes(16 << 20, 3000).unwrap();
    let before = crash_with_the_inodes_taken(&sb, &fs);
    assert_eq!(inode_dirs(fs.path()).len(), 1);
    let out = sb.agent(&["recover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        inodes(fs.path()),
        before,
        "df -i after: {}",
        df_i(fs.path())
    );
    assert!(inode_dirs(fs.path()).is_empty());
    eprintln!("df -i after recover [{}]", df_i(fs.path()));
}

#[test]
fn a_lost_journal_record_still_recovers_the_inode_directory() {
    let Some(sb) = Sandbox::new("a_lost_journal_record_still_recovers_the_inode_directory") else {
        return;
    };
    let fs = Tmpfs::mount_with_inodes(16 << 20, 3000).unwrap();
    let before = crash_with_the_inodes_taken(&sb, &fs);
    std::fs::remove_dir_all(sb.state.path().join("journal")).unwrap();
    let out = sb.agent(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = sb.agent(&["recover"]);
    let t = text(&out);
    assert!(t.contains("inode directory"), "{t}");
    assert!(
        inode_dirs(fs.path()).is_empty(),
        "inode directory left: {t}"
    );
    assert_eq!(
        inodes(fs.path()),
        before,
        "df -i after: {}",
        df_i(fs.path())
    );
    assert!(out.status.success(), "{t}");
}
