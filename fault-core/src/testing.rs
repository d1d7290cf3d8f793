//! Helpers for tests of crates built on `fault-core` (feature `test-util`).

/// Skip the current test (return early) with a printed reason unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::host::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (run the suite with sudo)",
                module_path!()
            );
            return;
        }
    };
}

/// A fresh temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Create `/tmp/<prefix>-<random>` (mode 0700).
    pub fn new(prefix: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        let p = std::env::temp_dir().join(format!("{prefix}-{}", crate::host::random_hex(6)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&p)
            .expect("create temp dir");
        TempDir(p)
    }
    /// The path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs of `size` mounted on a fresh temporary directory, unmounted on drop. Needs root.
#[derive(Debug)]
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` bytes.
    pub fn mount(size: u64) -> std::io::Result<Tmpfs> {
        Tmpfs::mount_opts(&format!("size={size},mode=0755"))
    }

    /// Mount a tmpfs of `size` bytes with room for `inodes` inodes (`nr_inodes`; the root
    /// directory takes one).
    pub fn mount_with_inodes(size: u64, inodes: u64) -> std::io::Result<Tmpfs> {
        Tmpfs::mount_opts(&format!("size={size},nr_inodes={inodes},mode=0755"))
    }

    fn mount_opts(opts: &str) -> std::io::Result<Tmpfs> {
        use std::ffi::CString;
        let dir = TempDir::new("chaos-tmpfs");
        let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("no NUL");
        let opts = CString::new(opts).expect("no NUL");
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tmpfs { dir })
    }
    /// The mount point.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()) {
            // SAFETY: target is a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A child process the test owns (`sleep` by default), killed and reaped on drop.
#[derive(Debug)]
pub struct Victim(pub std::process::Child);

impl Victim {
    /// Start `sleep 600` with `argv[0]` set to `name` (so tests can target it by name).
    pub fn sleeping(name: &str) -> Victim {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("sleep")
            .arg0(name)
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        Victim(child)
    }
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    /// Its state letter from `/proc/<pid>/stat`.
    pub fn state(&self) -> Option<char> {
        crate::host::process::Stat::read(self.pid()).map(|s| s.state)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An ext4 filesystem the test owns: an image file on a private tmpfs, loop-mounted on a
/// fresh temporary directory (so the real disk is never written), unmounted on drop. For
/// what tmpfs lacks: O_DIRECT, ext4's partial allocation on ENOSPC, reserved blocks. Needs
/// root, `mkfs.ext4` and loop devices; `None` (after printing why) when any is missing.
#[derive(Debug)]
pub struct Ext4Loop {
    mnt: TempDir,
    _backing: Tmpfs,
}

impl Ext4Loop {
    /// Make and mount an ext4 of `size` bytes (5% reserved blocks, as mkfs's default).
    pub fn mount(size: u64) -> Option<Ext4Loop> {
        use std::process::Command;
        let backing = Tmpfs::mount(size + size / 2).expect("mount tmpfs");
        let img = backing.path().join("ext4.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("create image");
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "5"])
            .arg(&img)
            .status();
        if !matches!(mkfs, Ok(s) if s.success()) {
            eprintln!("SKIPPED: mkfs.ext4 unavailable or failed: {mkfs:?}");
            return None;
        }
        let mnt = TempDir::new("chaos-ext4");
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(mnt.path())
            .status();
        if !matches!(mount, Ok(s) if s.success()) {
            eprintln!("SKIPPED: loop mount failed: {mount:?}");
            return None;
        }
        Some(Ext4Loop {
            mnt,
            _backing: backing,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &std::path::Path {
        self.mnt.path()
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        // Plain umount releases the auto-clear loop device before the backing tmpfs goes.
        let _ = std::process::Command::new("umount")
            .arg(self.mnt.path())
            .status();
    }
}
