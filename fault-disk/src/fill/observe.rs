//! What `disk.fill` observes: `verify` of both halves, and the inode line of `touches`.

use std::path::Path;

use fault_core::{Effect, Observation, Result};

use super::space::verify_file;
use super::{inodes, DiskFillReceipt, InodeFill};
use crate::files;
use crate::mounts;
use crate::statfs::FsStats;

/// `verify` in the receipt's mount namespace: the fill file (when there is one) and the
/// inode directory (when there is one), each in effect, partial or clean.
pub(super) fn verify_here(receipt: &DiskFillReceipt) -> Result<Observation> {
    let mut seen: Vec<Observation> = Vec::new();
    if receipt.bytes > 0 || receipt.inodes.is_none() {
        seen.push(verify_file(receipt)?);
    }
    if let Some(i) = &receipt.inodes {
        let o = match inodes::count(i, &receipt.dir)? {
            None => Observation::clean(format!("no inode directory {}", i.dir.display())),
            Some((ours, other)) => {
                let want = i.count.saturating_sub(1);
                let detail = format!(
                    "{} holds {ours} of {want} empty files{}; {}",
                    i.dir.display(),
                    if other > 0 {
                        format!(" and {other} other entries")
                    } else {
                        String::new()
                    },
                    inode_usage(&receipt.dir)
                );
                if ours >= want {
                    Observation::in_effect(detail)
                } else {
                    Observation::partial(detail)
                }
            }
        };
        seen.push(o);
    }
    let all = |e: Effect| seen.iter().all(|o| o.effect == e);
    let detail = seen
        .iter()
        .map(|o| o.detail.clone())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(if all(Effect::InEffect) {
        Observation::in_effect(detail)
    } else if all(Effect::Clean) {
        Observation::clean(detail)
    } else {
        Observation::partial(detail)
    })
}

/// "N.N% of inodes used, M free" of the filesystem holding `dir`, or why it is unknown.
fn inode_usage(dir: &Path) -> String {
    match FsStats::of_path(dir) {
        Ok(s) => format!(
            "{:.1}% of its inodes used, {} free",
            inodes::inodes_used_percent(&s),
            s.favail
        ),
        Err(e) => format!("inode usage of {} unknown: {e}", dir.display()),
    }
}

/// The inode line of [`DiskFill::touches`], computed in the receipt's mount namespace.
pub(super) fn inode_touch_line(r: &DiskFillReceipt, i: &InodeFill, ns: &str) -> String {
    let label = mounts::label(&r.dir, r.device);
    let Ok(s) = FsStats::of_path(&r.dir) else {
        return format!(
            "take {} inodes of {label}{ns}: {} and {} empty files in it",
            i.count,
            i.dir.display(),
            i.count.saturating_sub(1)
        );
    };
    // Inodes already taken by this fault (once injected) count as free.
    let mine = match inodes::count(i, &r.dir) {
        Ok(Some((ours, _))) => ours + 1,
        _ => 0,
    };
    let free = s.favail.saturating_add(mine);
    let used = s.files.saturating_sub(s.ffree).saturating_sub(mine);
    let after = if s.files == 0 {
        100.0
    } else {
        used.saturating_add(i.count).min(s.files) as f64 * 100.0 / s.files as f64
    };
    format!(
        "take {} of {} inodes of {label}{ns} ({} and {} empty files in it): {} of the inodes \
         used after the fill, {} free left",
        i.count,
        s.files,
        i.dir.display(),
        i.count.saturating_sub(1),
        files::percent(after),
        free.saturating_sub(i.count)
    )
}
