//! `time.offset`: shift the wall clock (`CLOCK_REALTIME`) by a signed offset for the
//! duration, with the NTP services paused, and put the true time back from an anchor.

use fault_core::{Context, Error, ErrorKind, Fault, KindInfo, Observation, Param, Result};
use serde::{Deserialize, Serialize};

use crate::clock::{self, Anchor, Rtc, Span, Wall, SEC};
use crate::ntp::{self, NtpService};

/// The kind string.
pub const KIND: &str = "time.offset";

/// The largest offset accepted: 10 years (3,653 days), enough to step past any
/// certificate's lifetime, and the clock must still read 1970..2100 afterwards.
pub const MAX_OFFSET_NS: i64 = 3653 * 86_400 * SEC;

/// The smallest offset accepted: 1 s (a smaller one cannot be told apart from the true time
/// by [`TOLERANCE_NS`]).
pub const MIN_OFFSET_NS: i64 = SEC;

/// How far the clock may be from where it should be for verify to count it there: the
/// clock is set with nanosecond resolution in microseconds, so this only absorbs what a
/// restarted NTP service corrects in the first moments.
pub const TOLERANCE_NS: i64 = SEC / 2;

/// How often the held fault looks whether someone else moved the clock.
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// After a reboot, the clock is set from the RTC only when the two differ by more than
/// this: RTCs drift by seconds a day, and a restarted NTP service corrects the rest.
pub const RTC_TOLERANCE_NS: i64 = 5 * SEC;

/// Parameters of `time.offset`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeOffsetSpec {
    /// The signed shift, e.g. `"+2h"`, `"-90s"`, `"+1d12h"` (sign required).
    pub offset: String,
}

/// Shifts the wall clock by a signed offset for the fault's duration.
///
/// **Changes on the host:** the NTP services that run (the units of [`crate::UNITS`], or
/// the processes of [`crate::PROCESSES`] without systemd) are stopped (`systemctl stop`)
/// or, where systemd is not init, frozen (`SIGSTOP`); then
/// `CLOCK_REALTIME` is stepped by `offset` with `clock_settime(2)`. Every process on the
/// host sees the new wall time (the clock is not namespaced); monotonic and boot-time
/// clocks are unchanged. The RTC is never written: the kernel writes it only while its NTP
/// state is synchronised, and inject sets `STA_UNSYNC` (`adjtimex`) before the step when it
/// is clear, and checks it after.
///
/// **Privileges:** root, or `CAP_SYS_TIME` plus whatever `systemctl stop` needs.
///
/// **Revert** (same boot) sets the clock to the true time computed from the anchor the
/// receipt records (`CLOCK_REALTIME` and `CLOCK_BOOTTIME` read back to back before the
/// shift): `true = realtime_at_anchor + (CLOCK_BOOTTIME now - boottime_at_anchor)`, not
/// "clock minus offset", so a clock that someone else moved during the fault is put right
/// too (and revert logs that it was moved). Then it starts the NTP units that were active
/// (resumes the frozen processes). After a reboot the anchor is meaningless: revert sets
/// the clock from the RTC when they differ by more than 5 s and the RTC keeps UTC, and
/// starts the NTP units that were active, which correct the rest. Revert twice = once.
#[derive(Debug, Clone)]
pub struct TimeOffset {
    offset_ns: i64,
}

/// What `time.offset` planned and did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeOffsetReceipt {
    /// The shift in nanoseconds (positive: the clock runs ahead).
    pub offset_ns: i64,
    /// The true time before the shift. Read at plan (so that the journal holds one before
    /// anything changes) and read again by inject after pausing NTP, right before the shift.
    pub anchor: Anchor,
    /// The NTP services that ran before the fault: inject pauses them, revert brings them
    /// back. Empty when none ran (then none is started afterwards either).
    pub ntp: Vec<NtpService>,
    /// Whether inject set the clock.
    #[serde(default)]
    pub shifted: bool,
    /// Whether the kernel's NTP state was synchronised (`STA_UNSYNC` clear: an NTP service
    /// had synchronised the clock) and inject set `STA_UNSYNC` before the step, so the
    /// kernel cannot write the shifted time to the RTC; for people.
    #[serde(default)]
    pub set_unsync: bool,
    /// How far someone else moved the clock while the fault held (the skew seen minus the
    /// offset), when the fault saw it moved (it looks every 5 s); revert puts the true time
    /// back all the same. For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_by_others_ns: Option<i64>,
}

const PARAMS: [Param; 1] = [Param {
    name: "offset",
    ty: "signed duration",
    default: None,
    doc: "The shift of the wall clock with its sign, e.g. \"+2h\", \"-90s\", \"+1d\" (units \
          ms, s, m, h, d); between 1s and 3653d either way, and the clock must read between \
          1970-01-02 and 2100-01-01 afterwards.",
}];

/// Parse a signed offset: `+` or `-`, then a duration (`"2h"`, `"1m30s"`).
pub fn parse_offset(raw: &str) -> Result<i64> {
    let t = raw.trim();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1i64, &t[1..]),
        Some(b'-') => (-1i64, &t[1..]),
        _ => {
            return Err(Error::invalid(format!(
                "offset {raw:?} needs a sign: \"+2h\" runs the clock ahead, \"-2h\" behind"
            )))
        }
    };
    if rest.starts_with(['+', '-']) || rest.trim() != rest {
        return Err(Error::invalid(format!(
            "offset {raw:?} is not a signed duration"
        )));
    }
    let d: fault_core::Duration = rest
        .parse()
        .map_err(|e: String| Error::invalid(format!("offset {raw:?}: {e}")))?;
    let ns = i64::try_from(d.std().as_nanos())
        .ok()
        .filter(|&n| n <= MAX_OFFSET_NS)
        .ok_or_else(|| {
            Error::invalid(format!(
                "offset {raw:?} is more than 3653 days (10 years); refusing an absurd clock"
            ))
        })?;
    if ns < MIN_OFFSET_NS {
        return Err(Error::invalid(format!(
            "offset {raw:?} is less than 1s; a smaller shift cannot be told apart from the true \
             time"
        )));
    }
    Ok(sign * ns)
}

fn drifted(fault_id: &str, problem: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Drifted,
        format!(
            "{KIND} receipt of {fault_id}: {problem}; plan never writes that, so the journal \
             record was edited or damaged: refusing to act on it"
        ),
    )
}

fn is_boot_id(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

/// `CAP_SYS_TIME` is capability 25.
const CAP_SYS_TIME: u32 = 25;

impl Fault for TimeOffset {
    const KIND: &'static str = KIND;
    type Spec = TimeOffsetSpec;
    type Receipt = TimeOffsetReceipt;

    fn new(spec: TimeOffsetSpec) -> Result<TimeOffset> {
        Ok(TimeOffset {
            offset_ns: parse_offset(&spec.offset)?,
        })
    }

    fn info() -> KindInfo {
        KindInfo {
            summary: "Shifts the wall clock (CLOCK_REALTIME, clock_settime) by a signed offset \
                      for the duration, for every process on the host; monotonic and boot-time \
                      clocks do not move. First it stops the NTP service that runs \
                      (systemd-timesyncd, chrony, ntpd, ntpsec, openntpd: systemctl stop, or \
                      SIGSTOP where systemd is not init), so nothing corrects the clock. The RTC \
                      is never written (the kernel writes it only while NTP is synchronised, \
                      and the fault marks NTP unsynchronised, adjtimex STA_UNSYNC, before the \
                      step). Revert sets the true time from an anchor (the wall clock and \
                      CLOCK_BOOTTIME read together before the shift), so a clock someone else \
                      moved meanwhile is put right too (the held fault looks every 5 s, and \
                      logs and journals such a move), then starts the NTP service again only if \
                      it ran before. After a crash, `chaos-agent recover` does the same; after a \
                      reboot it sets the clock from the RTC (when they differ by more than 5 s) \
                      and starts the NTP service. The agent's own deadlines use monotonic \
                      clocks and do not jump.",
            privileges: "root (CAP_SYS_TIME to set the clock, systemd manage-units to stop NTP)",
            reversible: true,
            params: &PARAMS,
            example: "kind = \"time.offset\"\nduration = \"1m\"\noffset = \"+2h\"",
        }
    }

    /// Unavailable without `CAP_SYS_TIME` (containers, non-root).
    fn availability() -> fault_core::Availability {
        let host = fault_core::host::probe::host();
        let mut a = fault_core::Availability::available();
        match host.cap_eff {
            Some(m) if m & (1u64 << CAP_SYS_TIME) != 0 => {}
            _ => {
                a.refuse(
                    "CAP_SYS_TIME is not in the agent's effective capabilities: it cannot set \
                     the clock (in a container, the clock is the host's)",
                    Some("run the agent as root on the host, not in a container".into()),
                );
            }
        }
        if Rtc::read().is_none() {
            a.note(
                "no RTC (/sys/class/rtc/rtc0): after a reboot during the fault, the clock is \
                 put right only by the NTP service",
            );
        }
        a
    }

    fn describe(&self) -> String {
        format!(
            "shift the wall clock by {} with NTP stopped (the true time is put back on revert)",
            Span(self.offset_ns)
        )
    }

    fn plan(&self, cx: &Context) -> Result<TimeOffsetReceipt> {
        if !is_boot_id(&cx.boot_id) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "cannot read this boot's id (got {:?}), so the anchor of the true time \
                     could not be told apart from one of a later boot",
                    cx.boot_id
                ),
            ));
        }
        let anchor = Anchor::now(&cx.boot_id)?;
        clock::check_wall(
            anchor.realtime_ns.saturating_add(self.offset_ns),
            &format!("shifted by {}, the clock", Span(self.offset_ns)),
        )?;
        let ntp = ntp::running_services(&cx.boot_id)?;
        Ok(TimeOffsetReceipt {
            offset_ns: self.offset_ns,
            anchor,
            ntp,
            shifted: false,
            set_unsync: false,
            moved_by_others_ns: None,
        })
    }

    fn inject(&self, cx: &Context, receipt: &mut TimeOffsetReceipt) -> Result<()> {
        if receipt.shifted {
            return Ok(()); // inject twice = once
        }
        for s in &receipt.ntp {
            s.pause()?;
        }
        // NTP is paused: nothing steps the clock between this reading and the shift.
        let fresh = Anchor::now(&cx.boot_id)?;
        let moved = receipt.anchor.skew(fresh.realtime_ns, fresh.boottime_ns);
        if moved.abs() > TOLERANCE_NS {
            tracing::warn!(
                fault_id = %cx.fault_id,
                "the clock was stepped by {} between plan and inject; anchoring at the new time",
                Span(moved)
            );
        }
        receipt.anchor = fresh;
        let target = receipt.anchor.realtime_ns.saturating_add(receipt.offset_ns);
        clock::check_wall(target, "the shifted clock")?;
        receipt.set_unsync = clock::set_realtime(target)?;
        receipt.shifted = true;
        Ok(())
    }

    fn maintain_interval(&self) -> Option<std::time::Duration> {
        Some(WATCH_INTERVAL)
    }

    /// Watch the clock while the fault holds: record (and log, once per change) a move by
    /// someone else, so the journal says so even if the agent dies before revert.
    fn maintain(
        &self,
        cx: &Context,
        receipt: &mut TimeOffsetReceipt,
    ) -> Result<Option<std::time::Duration>> {
        if receipt.shifted && receipt.anchor.boot_id == cx.boot_id {
            let skew = receipt
                .anchor
                .skew(clock::realtime_ns()?, clock::boottime_ns()?);
            let moved = skew - receipt.offset_ns;
            let known = receipt.moved_by_others_ns.unwrap_or(0);
            if moved.abs() > TOLERANCE_NS && (moved - known).abs() > TOLERANCE_NS {
                tracing::warn!(
                    fault_id = %cx.fault_id,
                    "time.offset: someone else moved the clock by {} during the fault (it is {} \
                     off the true time, the fault set {}); revert sets the true time anyway",
                    Span(moved),
                    Span(skew),
                    Span(receipt.offset_ns)
                );
                receipt.moved_by_others_ns = Some(moved);
            }
        }
        Ok(Some(WATCH_INTERVAL))
    }

    fn verify(receipt: &TimeOffsetReceipt) -> Result<Observation> {
        let boot = fault_core::host::boot_id();
        let ntp = ntp_state(receipt)?;
        if boot != receipt.anchor.boot_id {
            let now = clock::realtime_ns()?;
            let rtc = Rtc::read().filter(|r| !r.local);
            let clock_ok = rtc.is_none_or(|r| (now - r.secs * SEC).abs() <= RTC_TOLERANCE_NS);
            let detail = format!(
                "rebooted since the fault (the anchor is of boot {}); the clock reads {}{}; {}",
                receipt.anchor.boot_id,
                Wall(now),
                match rtc {
                    Some(r) => format!(", the RTC {}", Wall(r.secs * SEC)),
                    None => ", no RTC in UTC to compare with".to_string(),
                },
                ntp.1
            );
            return Ok(if clock_ok && ntp.0 != Some(false) {
                Observation::clean(detail)
            } else {
                Observation::partial(detail)
            });
        }
        let skew = receipt
            .anchor
            .skew(clock::realtime_ns()?, clock::boottime_ns()?);
        let shifted = (skew - receipt.offset_ns).abs() <= TOLERANCE_NS;
        let right = skew.abs() <= TOLERANCE_NS;
        let detail = format!(
            "the clock is {} off the anchored true time (offset {}); {}",
            Span(skew),
            Span(receipt.offset_ns),
            ntp.1
        );
        Ok(match (shifted, right, ntp.0) {
            (true, _, Some(true)) if !receipt.ntp.is_empty() => Observation::partial(format!(
                "{detail}: shifted, but an NTP service runs again and will correct it"
            )),
            (true, _, _) => Observation::in_effect(detail),
            (_, true, Some(false)) => Observation::partial(detail),
            (_, true, _) => Observation::clean(detail),
            _ => Observation::partial(format!("{detail}: someone else moved the clock")),
        })
    }

    fn revert(receipt: &TimeOffsetReceipt) -> Result<()> {
        let boot = fault_core::host::boot_id();
        if boot == receipt.anchor.boot_id {
            let now = clock::realtime_ns()?;
            let bt = clock::boottime_ns()?;
            let skew = receipt.anchor.skew(now, bt);
            // A receipt journaled before inject finished, whose NTP services all run: the
            // clock was never shifted (inject pauses them first) or NTP keeps it now; an
            // anchor from plan time must not undo what NTP corrected since.
            let ntp_keeps_it =
                !receipt.shifted && !receipt.ntp.is_empty() && ntp_state(receipt)?.0 == Some(true);
            if skew.abs() > TOLERANCE_NS && !ntp_keeps_it {
                if (skew - receipt.offset_ns).abs() > TOLERANCE_NS {
                    tracing::warn!(
                        "time.offset revert: the clock is {} off the true time, not the {} \
                         the fault set: someone else moved it during the fault; setting the \
                         true time anyway",
                        Span(skew),
                        Span(receipt.offset_ns)
                    );
                }
                // Recompute right before the step: the arithmetic above took microseconds.
                let truth = receipt.anchor.true_time_at(clock::boottime_ns()?);
                clock::set_realtime(truth).map_err(|e| e.context("putting the true time back"))?;
            }
        } else if let Some(rtc) = Rtc::read() {
            let now = clock::realtime_ns()?;
            let rtc_ns = rtc.secs.saturating_mul(SEC);
            if rtc.local {
                tracing::warn!(
                    "time.offset revert after a reboot: the RTC keeps local time (/etc/adjtime), \
                     so the clock is left to the NTP service"
                );
            } else if (now - rtc_ns).abs() > RTC_TOLERANCE_NS {
                clock::check_wall(rtc_ns, "the RTC")?;
                tracing::warn!(
                    "time.offset revert after a reboot: the clock reads {} and the RTC {}; \
                     setting the clock from the RTC",
                    Wall(now),
                    Wall(rtc_ns)
                );
                // To the RTC's tick, not its whole second (which would be up to 1 s behind).
                let precise = clock::rtc_now_ns().unwrap_or(rtc_ns);
                clock::check_wall(precise, "the RTC")?;
                clock::set_realtime(precise)
                    .map_err(|e| e.context("setting the clock from the RTC"))?;
            }
        }
        let mut first_err = None;
        for s in &receipt.ntp {
            if let Err(e) = s.resume() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn manual_undo(receipt: &TimeOffsetReceipt) -> Vec<String> {
        let mut lines = vec![format!(
            "date -u -s \"@$(( {} + $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - {} ))\"  # the \
             true time from the anchor (same boot {} only; /proc/uptime is CLOCK_BOOTTIME to \
             the second); after a reboot: hwclock --hctosys --utc",
            receipt.anchor.realtime_ns / SEC,
            receipt.anchor.boottime_ns / SEC,
            receipt.anchor.boot_id
        )];
        lines.extend(receipt.ntp.iter().map(NtpService::manual_resume));
        lines
    }

    /// The clock, and the NTP services it pauses under the names `service.stop` and
    /// `process.stop` use, so that one step cannot also stop or resume them.
    fn targets(receipt: &TimeOffsetReceipt) -> Vec<String> {
        std::iter::once("clock:realtime".to_string())
            .chain(receipt.ntp.iter().map(|s| match &s.process {
                None => format!("unit:{}", s.name),
                Some(p) => format!("pid:{}:{}", p.pid, p.start_ticks),
            }))
            .collect()
    }

    fn touches(receipt: &TimeOffsetReceipt) -> Vec<String> {
        let mut lines = vec![format!(
            "the wall clock of the whole host: {} -> about {} ({}), put back on revert",
            Wall(receipt.anchor.realtime_ns),
            Wall(receipt.anchor.realtime_ns.saturating_add(receipt.offset_ns)),
            Span(receipt.offset_ns)
        )];
        if receipt.ntp.is_empty() {
            lines.push("no NTP service runs: none is stopped or started".to_string());
        } else {
            lines.extend(receipt.ntp.iter().map(|s| {
                format!(
                    "{}: {} now, {} on revert",
                    s.human(),
                    if s.process.is_some() {
                        "SIGSTOP"
                    } else {
                        "systemctl stop"
                    },
                    if s.process.is_some() {
                        "SIGCONT"
                    } else {
                        "systemctl start"
                    }
                )
            }));
        }
        lines
    }

    fn check_receipt(fault_id: &str, r: &TimeOffsetReceipt) -> Result<()> {
        let abs = r.offset_ns.unsigned_abs();
        if !(MIN_OFFSET_NS as u64..=MAX_OFFSET_NS as u64).contains(&abs) {
            return Err(drifted(
                fault_id,
                format!("its offset {} is outside 1s..3653d", Span(r.offset_ns)),
            ));
        }
        if !is_boot_id(&r.anchor.boot_id) {
            return Err(drifted(
                fault_id,
                format!(
                    "its anchor's boot id {:?} is not a boot id",
                    r.anchor.boot_id
                ),
            ));
        }
        if clock::check_wall(r.anchor.realtime_ns, "the anchor").is_err()
            || r.anchor.boottime_ns < 0
        {
            return Err(drifted(
                fault_id,
                format!(
                    "its anchor ({}, boot time {} ns) is not a time plan could have read",
                    Wall(r.anchor.realtime_ns),
                    r.anchor.boottime_ns
                ),
            ));
        }
        for s in &r.ntp {
            s.check().map_err(|p| drifted(fault_id, p))?;
        }
        Ok(())
    }
}

/// Whether the receipt's NTP services run: `Some(true)` when all that can be told run
/// again, `Some(false)` when one is still paused, `None` when there are none (or none can
/// be told, e.g. processes of an earlier boot); with a sentence.
fn ntp_state(receipt: &TimeOffsetReceipt) -> Result<(Option<bool>, String)> {
    if receipt.ntp.is_empty() {
        return Ok((None, "no NTP service ran before the fault".to_string()));
    }
    let mut all: Option<bool> = None;
    let mut words = Vec::new();
    for s in &receipt.ntp {
        let r = s.running()?;
        words.push(format!(
            "{} {}",
            s.human(),
            match r {
                Some(true) => "runs",
                Some(false) => "is stopped",
                None => "is gone",
            }
        ));
        if let Some(r) = r {
            all = Some(all.unwrap_or(true) && r);
        }
    }
    Ok((all, words.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOOT: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    #[test]
    fn offsets() {
        let cases: [(&str, std::result::Result<i64, &str>); 14] = [
            ("+2h", Ok(7200 * SEC)),
            ("-90s", Ok(-90 * SEC)),
            ("+1m30s", Ok(90 * SEC)),
            (" -1d ", Ok(-86_400 * SEC)),
            ("+3653d", Ok(MAX_OFFSET_NS)),
            ("2h", Err("needs a sign")),
            ("", Err("needs a sign")),
            ("+", Err("empty duration")),
            ("--2h", Err("not a signed duration")),
            ("+ 2h", Err("not a signed duration")),
            ("+3654d", Err("more than 3653 days")),
            ("+99999999999999999999d", Err("too large")),
            ("+500ms", Err("less than 1s")),
            ("+2x", Err("unknown unit")),
        ];
        for (raw, want) in cases {
            match (parse_offset(raw), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{raw:?}"),
                (Err(e), Err(want)) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{raw:?}");
                    assert!(e.to_string().contains(want), "{raw:?}: {e}");
                }
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn spec_through_serde() {
        let build = |v: serde_json::Value| {
            serde_json::from_value::<TimeOffsetSpec>(v)
                .map_err(|e| Error::invalid(e.to_string()))
                .and_then(TimeOffset::new)
        };
        assert_eq!(
            build(json!({"offset": "-2h"})).unwrap().offset_ns,
            -7200 * SEC
        );
        assert!(build(json!({})).unwrap_err().to_string().contains("offset"));
        assert!(build(json!({"offset": 3600})).is_err());
        assert!(build(json!({"offset": null})).is_err());
        assert!(build(json!({"offset": "+1h", "ntp": false}))
            .unwrap_err()
            .to_string()
            .contains("unknown field `ntp`"));
    }

    fn receipt() -> TimeOffsetReceipt {
        TimeOffsetReceipt {
            offset_ns: 3600 * SEC,
            anchor: Anchor {
                realtime_ns: 1_796_523_231 * SEC,
                boottime_ns: 1234 * SEC,
                boot_id: BOOT.into(),
            },
            ntp: vec![NtpService {
                name: "systemd-timesyncd.service".into(),
                process: None,
            }],
            shifted: true,
            set_unsync: false,
            moved_by_others_ns: None,
        }
    }

    #[test]
    fn check_receipt_table() {
        TimeOffset::check_receipt("f", &receipt()).unwrap();
        type Edit = fn(&mut TimeOffsetReceipt);
        let cases: [(&str, Edit); 7] = [
            ("outside 1s..3653d", |r| r.offset_ns = 0),
            ("outside 1s..3653d", |r| r.offset_ns = i64::MIN),
            ("outside 1s..3653d", |r| r.offset_ns = MAX_OFFSET_NS + 1),
            ("not a boot id", |r| r.anchor.boot_id = "x".into()),
            ("not a time plan could have read", |r| {
                r.anchor.realtime_ns = 0
            }),
            ("not a time plan could have read", |r| {
                r.anchor.boottime_ns = -1
            }),
            ("is not one of", |r| {
                r.ntp[0].name = "systemd-reboot.service".into()
            }),
        ];
        for (want, edit) in cases {
            let mut r = receipt();
            edit(&mut r);
            let e = TimeOffset::check_receipt("f-1", &r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Drifted, "{want}");
            let e = e.to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.starts_with("time.offset receipt of f-1: "), "{e}");
        }
    }

    #[test]
    fn receipt_round_trips_and_refuses_unknown_fields() {
        let r = receipt();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            serde_json::from_value::<TimeOffsetReceipt>(v.clone()).unwrap(),
            r
        );
        let mut bad = v;
        bad["anchor"]["extra"] = json!(1);
        assert!(serde_json::from_value::<TimeOffsetReceipt>(bad).is_err());
    }

    #[test]
    fn manual_undo_and_touches() {
        let r = receipt();
        let lines = TimeOffset::manual_undo(&r);
        assert!(
            lines[0].starts_with(
                "date -u -s \"@$(( 1796523231 + $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - \
                 1234 ))\""
            ),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "systemctl start -- systemd-timesyncd.service  # it was active before the fault"
        );
        assert_eq!(
            TimeOffset::targets(&r),
            ["clock:realtime", "unit:systemd-timesyncd.service"]
        );
        let t = TimeOffset::touches(&r);
        assert_eq!(
            t[0],
            "the wall clock of the whole host: 2026-12-06T02:13:51Z -> about \
             2026-12-06T03:13:51Z (+1h), put back on revert"
        );
        assert_eq!(
            t[1],
            "unit systemd-timesyncd.service: systemctl stop now, systemctl start on revert"
        );
    }

    /// maintain records a move by someone else from the clocks alone (the anchor is made
    /// up so that this host's true clock looks moved: nothing is set).
    #[test]
    fn maintain_records_a_move_by_someone_else() {
        let mut cx = Context::new("t-move", "run");
        cx.boot_id = BOOT.into();
        let f = TimeOffset::new(TimeOffsetSpec {
            offset: "+1h".into(),
        })
        .unwrap();
        let mut r = receipt();
        let now = Anchor::now(BOOT).unwrap();
        // As if the fault had shifted the clock by +1h and someone moved it 10 min further.
        r.anchor.realtime_ns = now.realtime_ns - 3600 * SEC - 600 * SEC;
        r.anchor.boottime_ns = now.boottime_ns;
        assert_eq!(f.maintain(&cx, &mut r).unwrap(), Some(WATCH_INTERVAL));
        let moved = r.moved_by_others_ns.expect("a move is recorded");
        assert!((moved - 600 * SEC).abs() < 5 * SEC, "{moved}");
        // Not shifted, or another boot: nothing to watch.
        for edit in [
            (|r: &mut TimeOffsetReceipt| r.shifted = false) as fn(&mut TimeOffsetReceipt),
            |r| r.anchor.boot_id = "00000000-0000-0000-0000-000000000000".into(),
        ] {
            let mut r2 = r.clone();
            r2.moved_by_others_ns = None;
            edit(&mut r2);
            f.maintain(&cx, &mut r2).unwrap();
            assert_eq!(r2.moved_by_others_ns, None);
        }
    }

    /// Plan reads the clocks and the NTP services only; it never sets the clock.
    #[test]
    fn plan_reads_only() {
        let cx = Context::new("t-time", "run");
        if !is_boot_id(&cx.boot_id) {
            eprintln!("SKIPPED plan_reads_only: no boot id");
            return;
        }
        let f = TimeOffset::new(TimeOffsetSpec {
            offset: "-2h".into(),
        })
        .unwrap();
        let r = f.plan(&cx).unwrap();
        assert_eq!(r.offset_ns, -7200 * SEC);
        assert!(!r.shifted);
        assert_eq!(r.anchor.boot_id, cx.boot_id);
        TimeOffset::check_receipt("t-time", &r).unwrap();
        // Not injected: verify sees the true time (NTP, if any, still runs).
        let seen = TimeOffset::verify(&r).unwrap();
        assert_ne!(seen.effect, fault_core::Effect::InEffect, "{seen:?}");
        // A shift past 2100 is refused at plan.
        let far = TimeOffset::new(TimeOffsetSpec {
            offset: "+3653d".into(),
        })
        .unwrap();
        let mut late = cx.clone();
        late.boot_id = cx.boot_id.clone();
        if clock::realtime_ns().unwrap() + MAX_OFFSET_NS > clock::MAX_WALL_NS {
            let e = far.plan(&late).unwrap_err();
            assert!(
                e.to_string().contains("outside 1970-01-02..2100-01-01"),
                "{e}"
            );
        }
    }
}
