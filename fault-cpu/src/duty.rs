//! The duty cycle a `cpu.stress` worker runs: spin until the CPU time received reaches the
//! load integrated over wall time, then sleep to the end of a period of random length.

use fault_core::host::stressor::{self, Work};

/// Mean length of one duty-cycle period; each period's length is drawn at random from half
/// to one and a half of it (10 to 30 ms).
///
/// Random, so that busy and idle phases fall at random points of the scheduler tick. With
/// a fixed period the schedule beats against the tick (the former 10 ms is 2.5 ticks at
/// `HZ=250`, and a worker started right after a tick stays in that phase): the kernel's
/// tick-sampled CPU accounting (`/proc/stat`, what `top`, `vmstat`, `sar` and node_exporter
/// read) then reports a load off by a fixed amount for as long as the worker runs (measured:
/// 42% for 50% requested, 60% for 70%), although the worker receives exactly the requested
/// CPU time. With random phases each tick finds the worker busy with probability `load`, so
/// the tick accounting is right on average; the spread (20 ms) covers a whole tick at every
/// `HZ` Linux offers, whatever the tick's phase.
///
/// Why 20 ms: a tick-sampled observer sees a random error whose spread shrinks with longer
/// periods (fewer busy/idle edges per second: about 0.4 points over 10 s at 20 ms and
/// `HZ=250`, 0.5 at 10 ms), while an observation window cut mid-period is off by up to one
/// period's busy time (so longer periods hurt short windows); 20 ms balances the two for
/// 1 s windows and keeps the worker at 50 wake-ups a second. See docs/benchmarks.md.
pub(crate) const PERIOD_NS: u64 = 20_000_000;

/// CPU time a worker may owe and make up in later periods: time lost to preemption within
/// a period is made up in that period (it spins longer in wall time); beyond that, 25 ms is
/// carried (a few scheduler time slices), so a measurement window of whole seconds sees
/// at most 25 ms of catch-up.
const MAX_DEBT_NS: u64 = 25_000_000;

/// The duty cycle a worker runs. Only async-signal-safe calls (see [`Work`]).
#[derive(Debug)]
pub(crate) struct DutyCycle {
    /// Load as a fraction of one CPU, (0, 1].
    load: f64,
    /// Ramp time; 0 for none.
    ramp_ns: u64,
    /// Mean period length (the periods drawn range from half to one and a half of it).
    period_ns: u64,
}

impl DutyCycle {
    /// A duty cycle holding `load` (a fraction of one CPU, (0, 1]) after a ramp of
    /// `ramp_ns` (0: none), in periods of `period_ns` on average.
    pub(crate) fn new(load: f64, ramp_ns: u64, period_ns: u64) -> DutyCycle {
        DutyCycle {
            load,
            ramp_ns,
            period_ns,
        }
    }

    /// CPU time (ns) the worker should have used `t` ns after start: the integral of the
    /// (ramped) load.
    fn target_cpu(&self, t: u64) -> f64 {
        let t = t as f64;
        let r = self.ramp_ns as f64;
        if self.ramp_ns == 0 {
            self.load * t
        } else if t <= r {
            self.load * t * t / (2.0 * r)
        } else {
            self.load * (r / 2.0 + (t - r))
        }
    }

    /// The length of the next period: uniform in `[period/2, 3*period/2)`, from `rng`.
    fn next_period(&self, rng: &mut Rng) -> u64 {
        let spread = self.period_ns.max(2);
        self.period_ns - self.period_ns / 2 + rng.next() % spread
    }
}

/// A small pseudo-random generator (splitmix64): arithmetic only, so usable in a stressor.
/// Statistical quality is all the duty cycle needs; nothing here is secret.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Some arithmetic the optimizer cannot remove: the "busy" of the duty cycle (~10 µs).
#[inline(never)]
fn spin(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

// SAFETY: `run` only calls prctl, getpid, clock_gettime, clock_nanosleep and getppid, on
// stack values.
unsafe impl Work for DutyCycle {
    fn run(&self) -> i32 {
        // Wake exactly when asked: with the default 50 µs timer slack the kernel may defer
        // a wake-up onto the next tick, and a busy phase that starts right after a tick is
        // under-sampled by the tick accounting (a bias of up to slack/period). Failure
        // leaves the default slack, which only costs that bias.
        // SAFETY: PR_SET_TIMERSLACK takes an integer; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let start = stressor::monotonic_ns();
        // SAFETY: getpid cannot fail.
        let mut rng = Rng(start ^ ((unsafe { libc::getpid() } as u64) << 32));
        // CPU time received is counted from `cpu_base`. When the worker falls behind by more
        // than MAX_DEBT_NS (it was stopped, or starved by other tasks), the excess is written
        // off by moving `cpu_base` back, rather than burned later as a long 100% burst.
        let mut cpu_base = stressor::own_cpu_ns() as f64;
        let mut period_start = start;
        let mut x = start;
        loop {
            if stressor::orphaned() {
                return 0;
            }
            let period_end = period_start + self.next_period(&mut rng);
            let owed =
                self.target_cpu(period_start - start) - (stressor::own_cpu_ns() as f64 - cpu_base);
            if owed > MAX_DEBT_NS as f64 {
                cpu_base -= owed - MAX_DEBT_NS as f64;
            }
            // Spin until the CPU time received reaches what is due at the end of this
            // period, or the period is over.
            let want = self.target_cpu(period_end - start);
            loop {
                let used = stressor::own_cpu_ns() as f64 - cpu_base;
                if used >= want || stressor::monotonic_ns() >= period_end {
                    break;
                }
                x = spin(x);
            }
            let now = stressor::monotonic_ns();
            if now < period_end {
                stressor::sleep_until_ns(period_end);
                period_start = period_end;
            } else if now - period_end > self.period_ns {
                // Far behind the schedule (the worker was stopped): start afresh from now.
                period_start = now;
            } else {
                period_start = period_end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_integral_is_continuous() {
        let d = DutyCycle {
            load: 0.5,
            ramp_ns: 1000,
            period_ns: PERIOD_NS,
        };
        assert_eq!(d.target_cpu(0), 0.0);
        assert_eq!(d.target_cpu(1000), 250.0); // half the load, averaged over the ramp
        assert_eq!(d.target_cpu(2000), 750.0);
        let flat = DutyCycle {
            load: 0.25,
            ramp_ns: 0,
            period_ns: PERIOD_NS,
        };
        assert_eq!(flat.target_cpu(400), 100.0);
    }

    #[test]
    fn periods_are_spread_over_half_to_one_and_a_half_of_the_mean() {
        let d = DutyCycle {
            load: 0.5,
            ramp_ns: 0,
            period_ns: PERIOD_NS,
        };
        let mut rng = Rng(42);
        let n = 20_000u64;
        let periods: Vec<u64> = (0..n).map(|_| d.next_period(&mut rng)).collect();
        assert!(periods
            .iter()
            .all(|&p| (PERIOD_NS / 2..PERIOD_NS * 3 / 2).contains(&p)));
        let mean = periods.iter().sum::<u64>() as f64 / n as f64;
        assert!((mean / PERIOD_NS as f64 - 1.0).abs() < 0.01, "mean {mean}");
        // Phases against a 4 ms tick (HZ=250) are spread evenly: each quarter of the tick
        // gets about a quarter of the period starts.
        let tick = 4_000_000u64;
        let mut t = 0u64;
        let mut quarters = [0u64; 4];
        for p in &periods {
            t += p;
            quarters[((t % tick) * 4 / tick) as usize] += 1;
        }
        for q in quarters {
            assert!((q as f64 / n as f64 - 0.25).abs() < 0.02, "{quarters:?}");
        }
        // A fixed seed gives a fixed sequence; workers seed from their start time and pid.
        assert_eq!(Rng(7).next(), Rng(7).next());
        assert_ne!(Rng(7).next(), Rng(8).next());
    }
}
