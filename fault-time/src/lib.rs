//! # fault-time
//!
//! Clock faults for chaos-agent:
//!
//! - [`TimeOffset`] (`time.offset`): shift the wall clock (`CLOCK_REALTIME`) by a signed
//!   offset for the duration, with the NTP services paused; revert puts the true time back
//!   and starts the NTP services that ran before.
//!
//! ## What changes on the host
//!
//! The wall clock of the whole host (it is not namespaced: every process and container sees
//! it), and the run state of the NTP services that ran (`systemctl stop`; `SIGSTOP` where
//! systemd is not init). Monotonic and boot-time clocks never move, so timeouts measured
//! with them (Rust's `Instant`, systemd timers on `CLOCK_MONOTONIC`) are not affected; timers
//! on the wall clock (cron, `OnCalendar=` timers, TLS validity, log timestamps, file times)
//! are, which is the point.
//!
//! ## How the true time is known again
//!
//! The receipt records an [`Anchor`]: `CLOCK_REALTIME` and `CLOCK_BOOTTIME` read back to
//! back while the clock was right, and the boot id. Linux changes `REALTIME - BOOTTIME` only
//! when the clock is stepped, so in the same boot the true time is
//! `realtime_ns + (CLOCK_BOOTTIME now - boottime_ns)`: revert does not compute "clock minus
//! offset", which would be wrong if anything else moved the clock during the fault (revert
//! logs such a move, and verify reports it). The anchor is read at plan, so the journal holds
//! one before anything changes, and again by inject after NTP is paused.
//!
//! ## The RTC
//!
//! Nothing here writes the RTC. The kernel's "11 minute mode" writes it only while NTP is
//! synchronised (`STA_UNSYNC` clear); inject sets `STA_UNSYNC` with `adjtimex(ADJ_STATUS)`
//! before the step (when an NTP service had cleared it) and checks it after, and a step
//! makes the kernel unsynchronised by itself anyway (`ntp_clear()`). The NTP daemons that
//! write the RTC themselves (chrony's `rtcsync`/`rtcfile`, ntpd) are paused first. After a reboot during the fault the kernel
//! boots with the RTC's (true) time; revert sets the clock from the RTC
//! (`/sys/class/rtc/rtc0/since_epoch`) when they still differ by more than 5 s and the RTC
//! keeps UTC, then starts the NTP units, which correct the rest.
//!
//! ## Limits
//!
//! - An offset is between 1 s and 3653 days either way, and the clock must read between
//!   1970-01-02 and 2100-01-01 afterwards.
//! - A `hwclock --systohc` run by someone else during the fault (sysvinit's `hwclock.sh` at
//!   a clean shutdown) writes the shifted time to the RTC; nothing here can prevent that.
//! - After a reboot, a receipt's frozen NTP processes are gone: their init starts new ones.
//! - Lost journal records are not looked for: a shifted clock carries no mark of who
//!   shifted it.
//! - The journal holds the anchor read at plan until inject's own reading is journaled
//!   after the shift: should the agent die in that window, revert uses the plan's anchor,
//!   off by whatever stepped the clock in the milliseconds between (normally nothing: NTP is
//!   paused before inject reads it).
//! - After a reboot, an RTC that keeps local time (`/etc/adjtime` says `LOCAL`) is not
//!   used: the clock is left to the NTP service. Without an RTC (containers, some VMs) the
//!   same (doctor notes it).
//! - The whole host sees the shifted clock, the agent included: its deadlines are on
//!   monotonic clocks, but TLS certificate validity is checked against the wall clock, and a
//!   control plane on the same host is shifted too (docs/protocol.md, "Clocks").
//! - Two `time.offset` faults cannot run in one step (both target `clock:realtime`), nor
//!   one with a `service.stop` or `process.stop` of the NTP service it pauses.

#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod clock;
mod ntp;
mod offset;

pub use clock::{Anchor, Span, Wall, MAX_WALL_NS, MIN_WALL_NS};
pub use ntp::{NtpService, PROCESSES, UNITS};
pub use offset::{
    parse_offset, TimeOffset, TimeOffsetReceipt, TimeOffsetSpec, KIND, MAX_OFFSET_NS,
    MIN_OFFSET_NS, RTC_TOLERANCE_NS, TOLERANCE_NS, WATCH_INTERVAL,
};

/// Register `time.offset`.
pub fn register(reg: &mut fault_core::Registry) {
    reg.register::<TimeOffset>();
}

#[cfg(test)]
mod tests {
    /// The kind's `info().example` validates as an experiment file would be read.
    #[test]
    fn examples_validate() {
        let examples = chaos_engine::testing::build_examples(super::register);
        let kinds: Vec<&str> = examples.keys().copied().collect();
        assert_eq!(kinds, ["time.offset"]);
        assert!(examples.values().all(|f| !f.describe().is_empty()));
    }
}
