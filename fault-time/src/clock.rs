//! The clocks `time.offset` reads and sets: `CLOCK_REALTIME` (the wall clock it shifts),
//! `CLOCK_BOOTTIME` (the anchor it measures true time with), the kernel's NTP status word
//! (`adjtimex(2)`, read-only unless told otherwise) and the RTC (`/sys/class/rtc/rtc0`).
//!
//! Every instant is an `i64` of nanoseconds: since the Unix epoch for the wall clock, since
//! boot for `CLOCK_BOOTTIME` (i64 nanoseconds reach the year 2262, beyond [`MAX_WALL_NS`]).

use std::fmt;

use fault_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// One second in nanoseconds.
pub(crate) const SEC: i64 = 1_000_000_000;

/// The latest wall time the fault will ever set: 2100-01-01T00:00:00Z.
pub const MAX_WALL_NS: i64 = 4_102_444_800 * SEC;

/// The earliest wall time the fault will ever set: 1970-01-01T00:00:00Z (plus one day, so a
/// later conversion to local time never goes negative).
pub const MIN_WALL_NS: i64 = 86_400 * SEC;

/// Read a clock, in nanoseconds.
pub(crate) fn now_ns(clock: libc::clockid_t) -> Result<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(Error::last_os(format!("clock_gettime({clock})")));
    }
    // time_t and long are i64 on every 64-bit target this builds for.
    Ok(ts.tv_sec * SEC + ts.tv_nsec)
}

/// The wall clock now.
pub(crate) fn realtime_ns() -> Result<i64> {
    now_ns(libc::CLOCK_REALTIME)
}

/// Time since boot, suspend included: it never jumps when the wall clock is set.
pub(crate) fn boottime_ns() -> Result<i64> {
    now_ns(libc::CLOCK_BOOTTIME)
}

/// The true time as a pair of readings: the wall clock and `CLOCK_BOOTTIME` read back to
/// back, while the wall clock was right, and the boot they belong to.
///
/// Linux keeps `CLOCK_REALTIME - CLOCK_BOOTTIME` constant except when someone *steps* the
/// wall clock (`clock_settime`, `settimeofday`, `adjtimex(ADJ_SETOFFSET)`): NTP frequency
/// and slew corrections act on both clocks alike, and both advance during suspend. So the
/// true time at any later moment of the same boot is
/// `realtime_ns + (CLOCK_BOOTTIME now - boottime_ns)`, whatever the wall clock says then.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// `CLOCK_REALTIME` in nanoseconds since the epoch.
    pub realtime_ns: i64,
    /// `CLOCK_BOOTTIME` in nanoseconds, read right after `realtime_ns`.
    pub boottime_ns: i64,
    /// The boot both readings belong to (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
}

impl Anchor {
    /// Read both clocks now. Of three alternating readings, the pair closest together is
    /// kept, so a preemption between two reads costs nothing.
    pub(crate) fn now(boot_id: &str) -> Result<Anchor> {
        let b0 = boottime_ns()?;
        let r = realtime_ns()?;
        let b1 = boottime_ns()?;
        Ok(Anchor {
            realtime_ns: r,
            // The middle of the two boottime reads brackets the realtime read.
            boottime_ns: b0 + (b1 - b0) / 2,
            boot_id: boot_id.to_string(),
        })
    }

    /// The true wall time when `CLOCK_BOOTTIME` reads `boottime_now` in the same boot.
    pub fn true_time_at(&self, boottime_now: i64) -> i64 {
        self.realtime_ns
            .saturating_add(boottime_now.saturating_sub(self.boottime_ns))
    }

    /// How far a wall clock reading `realtime_now` at `boottime_now` is off the true time
    /// (positive: ahead).
    pub fn skew(&self, realtime_now: i64, boottime_now: i64) -> i64 {
        realtime_now.saturating_sub(self.true_time_at(boottime_now))
    }
}

/// Set `CLOCK_REALTIME` (needs `CAP_SYS_TIME`). Refuses anything outside
/// [`MIN_WALL_NS`]..=[`MAX_WALL_NS`].
///
/// The kernel writes the RTC (its "11 minute mode", `sync_hw_clock`) only while NTP is
/// synchronised, i.e. while `STA_UNSYNC` is clear, and a clock step makes it unsynchronised
/// (`ntp_clear()`). So that no RTC update can ever carry the shifted time, not even one
/// racing with the step, `STA_UNSYNC` is set with `adjtimex(ADJ_STATUS)` *before* the step
/// when an NTP service had cleared it, and checked (and set) again after it. Returns
/// whether it had to be set by hand.
pub(crate) fn set_realtime(ns: i64) -> Result<bool> {
    check_wall(ns, "the clock")?;
    let mut by_hand = false;
    let status = ntp_status()?;
    if status & libc::STA_UNSYNC == 0 {
        set_ntp_status(status | libc::STA_UNSYNC)?;
        by_hand = true;
    }
    let ts = libc::timespec {
        tv_sec: (ns / SEC) as _,
        tv_nsec: (ns % SEC) as _,
    };
    // SAFETY: ts is a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        let e = std::io::Error::last_os_error();
        let kind = if e.raw_os_error() == Some(libc::EPERM) {
            ErrorKind::PermissionDenied
        } else {
            ErrorKind::Io
        };
        return Err(Error::new(
            kind,
            format!(
                "clock_settime(CLOCK_REALTIME, {}) failed: {e}{}",
                Wall(ns),
                if kind == ErrorKind::PermissionDenied {
                    " (setting the clock needs CAP_SYS_TIME; in a container the clock is the \
                     host's and cannot be set)"
                } else {
                    ""
                }
            ),
        ));
    }
    match ntp_status() {
        Ok(status) if status & libc::STA_UNSYNC != 0 => Ok(by_hand),
        Ok(status) => {
            set_ntp_status(status | libc::STA_UNSYNC)?;
            Ok(true)
        }
        Err(e) => Err(e.context("reading the NTP status after setting the clock")),
    }
}

/// The kernel's NTP status word (`adjtimex(2)` with no modes: a read, no privilege).
pub(crate) fn ntp_status() -> Result<i32> {
    // SAFETY: all-zero is a valid timex (modes = 0: read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, writable timex.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(Error::last_os("adjtimex (read)"));
    }
    Ok(tx.status as i32)
}

fn set_ntp_status(status: i32) -> Result<()> {
    // SAFETY: all-zero is a valid timex.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_STATUS as _;
    tx.status = status as _;
    // SAFETY: tx is a valid, writable timex.
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        return Err(Error::last_os("adjtimex(ADJ_STATUS, STA_UNSYNC)"));
    }
    Ok(())
}

/// Refuse a wall time before 1970-01-02 or after 2100-01-01.
pub(crate) fn check_wall(ns: i64, what: &str) -> Result<()> {
    if !(MIN_WALL_NS..=MAX_WALL_NS).contains(&ns) {
        return Err(Error::invalid(format!(
            "{what} would read {}, outside 1970-01-02..2100-01-01; refusing to set it",
            Wall(ns)
        )));
    }
    Ok(())
}

/// The RTC's time as the kernel reads it, in seconds since the epoch
/// (`/sys/class/rtc/rtc0/since_epoch`, which assumes the RTC keeps UTC), and whether the RTC
/// keeps local time instead according to `/etc/adjtime` (then the value is not UTC and is
/// not used). `None` when there is no RTC (containers, some VMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rtc {
    pub(crate) secs: i64,
    pub(crate) local: bool,
}

impl Rtc {
    pub(crate) fn read() -> Option<Rtc> {
        let text = std::fs::read_to_string("/sys/class/rtc/rtc0/since_epoch").ok()?;
        let secs = text.trim().parse::<i64>().ok()?;
        let local = std::fs::read_to_string("/etc/adjtime")
            .map(|t| adjtime_is_local(&t))
            .unwrap_or(false);
        Some(Rtc { secs, local })
    }
}

/// The RTC's time to well under a second: `since_epoch` counts whole seconds, so it is read
/// until it ticks (at most 1.2 s, every 5 ms), and the tick is the start of its second.
/// Returns the RTC's time in nanoseconds at the moment of return, measured on
/// `CLOCK_BOOTTIME` (so the time spent waiting is not lost). Without a tick (a stopped RTC)
/// it is the middle of the second read first.
pub(crate) fn rtc_now_ns() -> Option<i64> {
    let read = || -> Option<i64> {
        std::fs::read_to_string("/sys/class/rtc/rtc0/since_epoch")
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()
    };
    let first = read()?;
    let t0 = boottime_ns().ok()?;
    let (secs, at) = loop {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let now = boottime_ns().ok()?;
        match read() {
            Some(s) if s != first => break (s.saturating_mul(SEC), now),
            Some(_) if now - t0 < 1_200_000_000 => {}
            _ => break (first.saturating_mul(SEC) + SEC / 2, t0),
        }
    };
    Some(secs.saturating_add(boottime_ns().ok()? - at))
}

/// Whether `/etc/adjtime` says the RTC keeps local time (its third line is `LOCAL`).
pub(crate) fn adjtime_is_local(text: &str) -> bool {
    text.lines().nth(2).is_some_and(|l| l.trim() == "LOCAL")
}

/// A wall time for people: `2026-12-06T02:13:51Z` (UTC, seconds).
#[derive(Debug, Clone, Copy)]
pub struct Wall(pub i64);

impl fmt::Display for Wall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(SEC);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A signed span for people: `+1h`, `-90s`, `+1.250s`.
#[derive(Debug, Clone, Copy)]
pub struct Span(pub i64);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        let abs = self.0.unsigned_abs();
        if abs % SEC as u64 == 0 || abs >= 60 * SEC as u64 {
            let d = fault_core::Duration(std::time::Duration::from_secs(abs / SEC as u64));
            if abs < SEC as u64 {
                return write!(f, "{sign}0s");
            }
            return write!(f, "{sign}{d}");
        }
        write!(f, "{sign}{:.3}s", abs as f64 / SEC as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_format() {
        assert_eq!(Wall(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Wall(MAX_WALL_NS).to_string(), "2100-01-01T00:00:00Z");
        assert_eq!(
            Wall(1_796_523_231 * SEC + 5).to_string(),
            "2026-12-06T02:13:51Z"
        );
        assert_eq!(Wall(951_782_400 * SEC).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(Wall(-SEC).to_string(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn span_format() {
        assert_eq!(Span(3600 * SEC).to_string(), "+1h");
        assert_eq!(Span(-90 * SEC).to_string(), "-1m30s");
        assert_eq!(Span(1_250_000_000).to_string(), "+1.250s");
        assert_eq!(Span(-2_000_000).to_string(), "-0.002s");
        assert_eq!(Span(0).to_string(), "+0s");
    }

    #[test]
    fn anchor_arithmetic() {
        let a = Anchor {
            realtime_ns: 1_800_000_000 * SEC,
            boottime_ns: 50 * SEC,
            boot_id: "b".into(),
        };
        // 10 s of boot time later the true time is 10 s later, whatever the clock says.
        assert_eq!(a.true_time_at(60 * SEC), 1_800_000_010 * SEC);
        // A clock shifted by +1h reads one hour ahead of it.
        assert_eq!(a.skew(1_800_003_610 * SEC, 60 * SEC), 3600 * SEC);
        // A clock put back reads no skew; one moved by someone else reads what they did.
        assert_eq!(a.skew(1_800_000_010 * SEC, 60 * SEC), 0);
        assert_eq!(a.skew(1_799_999_990 * SEC, 60 * SEC), -20 * SEC);
        // Nothing overflows on garbage.
        assert_eq!(
            Anchor {
                realtime_ns: i64::MAX,
                boottime_ns: i64::MIN,
                boot_id: String::new()
            }
            .true_time_at(i64::MAX),
            i64::MAX
        );
    }

    #[test]
    fn reads_clocks_without_setting_them() {
        let a = Anchor::now("x").unwrap();
        assert!(a.realtime_ns > MIN_WALL_NS && a.boottime_ns > 0);
        assert!(ntp_status().is_ok());
    }

    #[test]
    fn walls_out_of_range_are_refused_before_any_syscall() {
        for ns in [0, -SEC, MAX_WALL_NS + 1, i64::MAX] {
            let e = set_realtime(ns).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{ns}");
            assert!(e.to_string().contains("outside 1970-01-02..2100-01-01"));
        }
    }

    #[test]
    fn rtc_reads_to_its_tick() {
        let Some(rtc) = Rtc::read() else {
            eprintln!("SKIPPED rtc_reads_to_its_tick: no /sys/class/rtc/rtc0");
            return;
        };
        let precise = rtc_now_ns().expect("the RTC read once reads again");
        // The same clock, read to its tick: within the second after the whole-second reading
        // (plus the up to 1.2 s the read may wait).
        let whole = rtc.secs * SEC;
        assert!(
            precise >= whole && precise < whole + 3 * SEC,
            "{precise} vs {whole}"
        );
    }

    #[test]
    fn adjtime_local() {
        assert!(adjtime_is_local("0.0 0 0.0\n0\nLOCAL\n"));
        assert!(!adjtime_is_local("0.0 0 0.0\n0\nUTC\n"));
        assert!(!adjtime_is_local(""));
    }
}
