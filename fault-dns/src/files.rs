//! Reading and durably rewriting `/etc/hosts` and `/etc/resolv.conf`: a temporary file in
//! the same directory, `fsync`, `rename`, `fsync` of the directory, the mode and owner kept;
//! a symlinked file (systemd-resolved's stub) replaced by a regular one and put back; and
//! acting in the mount namespace a receipt was planned in.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fault_core::host::fs::sync_dir;
use fault_core::host::ns::{NsId, NsKind};
use fault_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::lines;

/// Largest file either kind edits (both are a few lines; a huge one is not what we think).
const MAX_BYTES: u64 = 4 << 20;

/// A file that was a symlink when the fault was planned: inject replaces it with a regular
/// file, and revert puts the symlink back when what is left equals `content`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    /// The link's target, exactly as `readlink` gave it.
    pub target: PathBuf,
    /// What reading through the link gave at inject (UTF-8).
    pub content: String,
}

/// What is at a path now.
#[derive(Debug)]
pub(crate) struct Current {
    /// The text (read through a symlink).
    pub text: String,
    /// The link's target when the path is a symlink.
    pub link: Option<PathBuf>,
    /// Mode bits, owner and group of the regular file (of the link's target for a link).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Read `path`; `None` when nothing is there. Refuses what is not UTF-8 text of a sane
/// size, and a symlink to nothing.
pub(crate) fn read(path: &Path) -> Result<Option<Current>> {
    let shown = path.display();
    let lmeta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("inspecting {shown}"), e)),
    };
    let link = if lmeta.file_type().is_symlink() {
        Some(std::fs::read_link(path).map_err(|e| Error::io(format!("readlink {shown}"), e))?)
    } else {
        None
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("following {shown}"), e))?;
    if !meta.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{shown} is not a regular file (nor a symlink to one)"),
        ));
    }
    if meta.len() > MAX_BYTES {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{shown} is {} bytes: too large to be edited safely",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::new(
            ErrorKind::Unsupported,
            format!("{shown} is not UTF-8 text; it is left alone"),
        )
    })?;
    Ok(Some(Current {
        text,
        link,
        mode: meta.permissions().mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }))
}

/// A temporary name next to `path`, carrying the fault id.
fn temp_name(path: &Path, id: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{} names no file", path.display())))?;
    let mut t = OsString::from(".");
    t.push(name);
    t.push(format!(".chaos-agent-{id}.tmp"));
    Ok(path.with_file_name(t))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Replace `path` with a regular file holding `text` (mode, owner, group as given): a
/// temporary file in the same directory, `fsync`, `rename` over `path`, `fsync` the
/// directory. A crash leaves the old file or the new one, and at most a temporary file.
pub(crate) fn write(
    path: &Path,
    id: &str,
    text: &str,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let tmp = temp_name(path, id)?;
    let shown = path.display();
    let _ = std::fs::remove_file(&tmp); // one an earlier crash left
    let run = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(parent(path))
    };
    run().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("rewriting {shown}"), e)
    })
}

/// Replace `path` with a symlink to `target` (temporary link, `rename`, `fsync` dir).
pub(crate) fn write_symlink(path: &Path, id: &str, target: &Path) -> Result<()> {
    let tmp = temp_name(path, id)?;
    let _ = std::fs::remove_file(&tmp);
    let run = || -> std::io::Result<()> {
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, path)?;
        sync_dir(parent(path))
    };
    run().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!(
                "putting back the symlink {} -> {}",
                path.display(),
                target.display()
            ),
            e,
        )
    })
}

/// Apply `edit` to `path` for fault `id` (inject). `edit` gets the current text and returns
/// the new one; nothing is written when it changes nothing. A symlink is replaced by a
/// regular file holding the edited text and a [`marker`] line tagged `id` naming the
/// target; the target and its content are returned for the receipt.
pub(crate) fn apply(
    path: &Path,
    id: &str,
    edit: impl FnOnce(&str) -> Result<String>,
) -> Result<Option<Symlink>> {
    let cur = read(path)?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        )
    })?;
    let mut new = edit(&cur.text)?;
    if new == cur.text {
        return Ok(None);
    }
    if let Some(target) = &cur.link {
        // The file's own record of the link, so that revert knows it even from a receipt
        // that lost it (leftovers) or after another fault inherits the duty.
        new = format!("{}{new}", marker(target, id)?);
    }
    // A regular file is written with the mode and owner it has; a file replacing a symlink
    // gets those of the link's target.
    write(path, id, &new, cur.mode, cur.uid, cur.gid)?;
    Ok(cur.link.map(|target| Symlink {
        target,
        content: cur.text,
    }))
}

/// Undo fault `id`'s edits of `path` (revert). `symlink` is what the receipt recorded when
/// the path was a symlink: once no fault's edit is left and the text equals what the
/// target held, the symlink is put back. When other faults' edits remain, the duty passes
/// to one of them through a tagged marker line (see [`marker`]).
pub(crate) fn undo(path: &Path, id: &str, symlink: Option<&Symlink>) -> Result<()> {
    let Some(cur) = read(path)? else {
        return Ok(());
    };
    // A marker a reverted fault left for this one.
    let handed = handed_symlink(&cur.text, id);
    let symlink = symlink.cloned().or(handed);
    if cur.link.is_some() {
        // Still (or again) a symlink: inject never replaced it, or revert already put it
        // back. We never write through a link.
        return Ok(());
    }
    let rest = lines::revert(&cur.text, id);
    let Some(link) = symlink else {
        if rest != cur.text {
            write(path, id, &rest, cur.mode, cur.uid, cur.gid)?;
        }
        return Ok(());
    };
    let others = lines::ids(&rest);
    if others.is_empty() {
        if rest == link.content {
            return write_symlink(path, id, &link.target);
        }
        if rest != cur.text {
            write(path, id, &rest, cur.mode, cur.uid, cur.gid)?;
        }
        return Err(changed_meanwhile(path, &link));
    }
    // Other faults' edits remain: the last of them to revert puts the link back.
    let mut bare = rest.clone();
    for o in &others {
        bare = lines::revert(&bare, o);
    }
    if bare != link.content {
        if rest != cur.text {
            write(path, id, &rest, cur.mode, cur.uid, cur.gid)?;
        }
        return Err(changed_meanwhile(path, &link));
    }
    let heir = &others[0];
    let new = format!("{}{rest}", marker(&link.target, heir)?);
    write(path, id, &new, cur.mode, cur.uid, cur.gid)
}

fn changed_meanwhile(path: &Path, link: &Symlink) -> Error {
    Error::new(
        ErrorKind::Drifted,
        format!(
            "{} was a symlink to {} before the fault; this fault's lines are removed, but the \
             file now holds something else than the link's target held (someone edited it \
             during the fault), so it is left a regular file: compare the two and put the \
             link back by hand (see the manual undo)",
            path.display(),
            link.target.display()
        ),
    )
}

/// The words of a marker line before its target.
const MARKER: &str = "# chaos-agent: this file was a symlink to ";

/// A comment line, tagged with `heir`, that hands the duty of putting the symlink back to
/// that fault's revert: `# chaos-agent: this file was a symlink to TARGET # chaos-agent ID`.
pub(crate) fn marker(target: &Path, heir: &str) -> Result<String> {
    let t = target
        .to_str()
        .filter(|t| !t.contains(['\n', '#']))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "symlink target {} cannot be written on one line",
                    target.display()
                ),
            )
        })?;
    Ok(lines::inserted(&format!("{MARKER}{t}"), heir))
}

/// The symlink a marker line hands to `id`, with the current target's content.
fn handed_symlink(text: &str, id: &str) -> Option<Symlink> {
    lines::split(text).into_iter().find_map(|l| {
        if lines::tag_id(l) != Some(id) {
            return None;
        }
        let b = lines::body(l);
        let t = b.strip_prefix(MARKER)?;
        let t = &t[..t.len() - lines::tag(id).len()];
        let target = PathBuf::from(t);
        let content = std::fs::read_to_string(&target).ok()?;
        Some(Symlink { target, content })
    })
}

/// The mount namespace the calling thread is in, for a receipt.
pub(crate) fn current_mnt_ns() -> Option<NsId> {
    NsId::current(NsKind::Mnt).ok()
}

/// Run `f` in the mount namespace a receipt was made in
/// ([`in_recorded`](fault_core::host::ns::in_recorded)): here when none is recorded or it is
/// this thread's; on a thread that entered it when something visible refers to it; here when
/// the receipt is from an earlier boot (namespaces do not outlive one); else fail, touching
/// nothing.
pub(crate) fn in_mount_ns<T, F>(ns: Option<&NsId>, boot_id: Option<&str>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    fault_core::host::ns::in_recorded(ns, boot_id, "the DNS files' edit", f)
}

/// `["nsenter", "--mount=PATH"]` when the receipt's namespace is not the caller's.
pub(crate) fn nsenter_prefix(ns: Option<&NsId>) -> Vec<String> {
    ns.map(NsId::nsenter_prefix).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fault_core::testing::TempDir;

    #[test]
    fn apply_then_undo_keeps_bytes_mode_and_owner() {
        let d = TempDir::new("dns-files");
        let p = d.path().join("hosts");
        std::fs::write(&p, "127.0.0.1 localhost\n::1 x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = apply(&p, "f1", |t| {
            Ok(format!("{}{t}", lines::inserted("1.2.3.4 a", "f1")))
        })
        .unwrap();
        assert!(link.is_none());
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.starts_with("1.2.3.4 a # chaos-agent f1\n"), "{t}");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        undo(&p, "f1", None).unwrap();
        undo(&p, "f1", None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "127.0.0.1 localhost\n::1 x"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }

    fn symlinked(d: &TempDir) -> (PathBuf, PathBuf) {
        let stub = d.path().join("stub-resolv.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        let p = d.path().join("resolv.conf");
        std::os::unix::fs::symlink(&stub, &p).unwrap();
        (p, stub)
    }

    fn add(id: &str) -> impl FnOnce(&str) -> Result<String> + '_ {
        move |t: &str| {
            Ok(format!(
                "{}{t}",
                lines::inserted("nameserver 127.100.0.1", id)
            ))
        }
    }

    #[test]
    fn a_symlink_comes_back_as_the_same_symlink() {
        let d = TempDir::new("dns-files");
        let (p, stub) = symlinked(&d);
        let link = apply(&p, "a", add("a")).unwrap().expect("was a link");
        assert_eq!(link.target, stub);
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&stub).unwrap(),
            "nameserver 127.0.0.53\noptions edns0\n",
            "the target is never written"
        );
        undo(&p, "a", Some(&link)).unwrap();
        assert_eq!(std::fs::read_link(&p).unwrap(), stub);
        undo(&p, "a", Some(&link)).unwrap();
        assert_eq!(std::fs::read_link(&p).unwrap(), stub);
    }

    #[test]
    fn overlapping_faults_on_a_symlink_put_it_back_in_either_order() {
        for first in ["a", "b"] {
            let d = TempDir::new("dns-files");
            let (p, stub) = symlinked(&d);
            let la = apply(&p, "a", add("a")).unwrap();
            let lb = apply(&p, "b", add("b")).unwrap();
            assert!(la.is_some() && lb.is_none());
            let (r1, r2) = if first == "a" {
                (("a", &la), ("b", &lb))
            } else {
                (("b", &lb), ("a", &la))
            };
            undo(&p, r1.0, r1.1.as_ref()).unwrap();
            assert!(!std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink());
            undo(&p, r2.0, r2.1.as_ref()).unwrap();
            assert_eq!(std::fs::read_link(&p).unwrap(), stub, "first {first}");
        }
    }

    #[test]
    fn a_person_edit_during_the_fault_keeps_the_file_and_asks_for_a_person() {
        let d = TempDir::new("dns-files");
        let (p, _) = symlinked(&d);
        let link = apply(&p, "a", add("a")).unwrap().unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{t}search corp.example\n")).unwrap();
        let e = undo(&p, "a", Some(&link)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Drifted);
        assert!(e.to_string().contains("was a symlink to"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "nameserver 127.0.0.53\noptions edns0\nsearch corp.example\n"
        );
    }
}
