//! Unit types used in specs: [`Duration`] (`"250ms"`, `"1m30s"`), [`Bytes`] (`"512MiB"`)
//! and [`Percent`] (`"40%"`). Each parses from a string (and `Bytes`/`Percent` also from a
//! number), serializes back to its canonical string, and rejects anything ambiguous.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A length of time written with units: `"250ms"`, `"30s"`, `"1m30s"`, `"2h"`.
///
/// Accepted units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`. A bare number is refused because
/// `30` could mean seconds or milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// From whole seconds.
    pub const fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }
    /// From whole milliseconds.
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }
    /// The std duration.
    pub const fn std(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration (write e.g. \"30s\" or \"250ms\")".into());
        }
        if t.starts_with('-') {
            return Err(format!("duration \"{s}\" is negative"));
        }
        let mut total: u128 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "invalid duration \"{s}\": expected a number at \"{rest}\""
                ));
            }
            let n: u128 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration \"{s}\": number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                "" => {
                    return Err(format!(
                        "duration \"{s}\" needs a unit (ns, us, ms, s, m, h, d), e.g. \"{n}s\""
                    ))
                }
                other => {
                    return Err(format!(
                        "invalid duration \"{s}\": unknown unit \"{other}\" (use ns, us, ms, s, m, h, d)"
                    ))
                }
            };
            total = n
                .checked_mul(nanos)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("duration \"{s}\" is too large"))?;
            rest = &rest[unit_len..];
        }
        let secs = u64::try_from(total / 1_000_000_000)
            .map_err(|_| format!("duration \"{s}\" is too large"))?;
        Ok(Duration(std::time::Duration::new(
            secs,
            (total % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos % 1_000_000_000 != 0 {
            if nanos % 1_000_000 == 0 {
                return write!(f, "{}ms", nanos / 1_000_000);
            }
            if nanos % 1_000 == 0 {
                return write!(f, "{}us", nanos / 1_000);
            }
            return write!(f, "{nanos}ns");
        }
        let mut secs = d.as_secs();
        let h = secs / 3600;
        secs %= 3600;
        let m = secs / 60;
        secs %= 60;
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
        f.write_str(&out)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"30s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit, e.g. \"{v}s\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit, e.g. \"{v}s\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit, e.g. \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// An amount of bytes: `"512MiB"`, `"2GiB"`, `"100MB"`, `"4096"` or the number `4096`.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal units (`KB`, `MB`,
/// `GB`, `TB`) powers of 1000; `K`/`M`/`G`/`T` alone are read as binary, as `fallocate -l`
/// does. Fractions are allowed with a unit (`"1.5GiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!("size \"{s}\" is negative"));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        if num.is_empty() {
            return Err(format!(
                "invalid size \"{s}\": expected a number, e.g. \"512MiB\""
            ));
        }
        let mult: u64 = match unit {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "invalid size \"{s}\": unknown unit \"{other}\" (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ))
            }
        };
        if let Ok(n) = num.parse::<u64>() {
            return n
                .checked_mul(mult)
                .map(Bytes)
                .ok_or_else(|| format!("size \"{s}\" is too large"));
        }
        let f: f64 = num.parse().map_err(|_| format!("invalid size \"{s}\""))?;
        if mult == 1 {
            return Err(format!("invalid size \"{s}\": a fraction of a byte"));
        }
        let v = f * mult as f64;
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(format!("size \"{s}\" is too large"));
        }
        Ok(Bytes(v.round() as u64))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Bytes {
    /// A human rendering rounded to one decimal ("1.5 GiB"), for messages.
    pub fn human(self) -> String {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size {
                return format!("{:.1} {name}", self.0 as f64 / size as f64);
            }
        }
        format!("{} B", self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size, e.g. \"512MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bytes, E> {
                Err(E::custom(format!(
                    "size {v} is not a whole number of bytes; use a unit, e.g. \"1.5GiB\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A percentage from 0 to 100 inclusive: `"40%"`, `"12.5%"`, `40` or `12.5`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    /// A checked percentage.
    pub fn new(v: f64) -> Result<Percent, String> {
        if !v.is_finite() || !(0.0..=100.0).contains(&v) {
            return Err(format!(
                "{v}% is out of range: a percentage is between 0 and 100"
            ));
        }
        Ok(Percent(v))
    }
    /// The value, 0..=100.
    pub fn get(self) -> f64 {
        self.0
    }
    /// The value as a fraction, 0..=1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let n = t.strip_suffix('%').unwrap_or(t).trim();
        let v: f64 = n
            .parse()
            .map_err(|_| format!("invalid percentage \"{s}\" (write e.g. \"40%\")"))?;
        Percent::new(v)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage from 0 to 100, e.g. 40 or \"40%\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Percent::new(v as f64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Percent::new(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Percent::new(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let ms = |v| std::time::Duration::from_millis(v);
        for (s, want) in [
            ("250ms", ms(250)),
            ("30s", ms(30_000)),
            ("1m", ms(60_000)),
            ("1m30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("1d", ms(86_400_000)),
            ("5us", std::time::Duration::from_micros(5)),
            (" 10s ", ms(10_000)),
        ] {
            assert_eq!(s.parse::<Duration>().unwrap().0, want, "{s}");
        }
    }

    #[test]
    fn durations_refuse_ambiguous_or_bad_input() {
        for s in [
            "",
            "30",
            "-5s",
            "5x",
            "s",
            "1.5s",
            "99999999999999999999999d",
        ] {
            assert!(s.parse::<Duration>().is_err(), "{s} should fail");
        }
        let e = "30".parse::<Duration>().unwrap_err();
        assert!(e.contains("needs a unit"), "{e}");
    }

    #[test]
    fn durations_round_trip() {
        for s in ["250ms", "30s", "1m30s", "2h", "1h1m1s", "5us", "7ns"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bytes_parse() {
        for (s, want) in [
            ("512MiB", 512u64 << 20),
            ("2GiB", 2 << 30),
            ("100MB", 100_000_000),
            ("4096", 4096),
            ("1.5GiB", 3 << 29),
            ("64K", 64 << 10),
            ("10 MiB", 10 << 20),
        ] {
            assert_eq!(s.parse::<Bytes>().unwrap().0, want, "{s}");
        }
        for s in ["", "-1MiB", "5XB", "1.5", "MiB", "99999999999TiB"] {
            assert!(s.parse::<Bytes>().is_err(), "{s} should fail");
        }
        assert_eq!(Bytes(512 << 20).to_string(), "512MiB");
        assert_eq!(Bytes(1000).to_string(), "1000B");
    }

    #[test]
    fn percent_parse_and_bounds() {
        assert_eq!("40%".parse::<Percent>().unwrap().get(), 40.0);
        assert_eq!("12.5".parse::<Percent>().unwrap().get(), 12.5);
        for s in ["101%", "-1%", "abc", "NaN", "inf"] {
            assert!(s.parse::<Percent>().is_err(), "{s} should fail");
        }
    }

    #[test]
    fn serde_accepts_numbers_where_unambiguous() {
        #[derive(Deserialize)]
        struct T {
            b: Bytes,
            p: Percent,
            d: Duration,
        }
        let t: T = serde_json::from_str(r#"{"b": 1024, "p": 40, "d": "1s"}"#).unwrap();
        assert_eq!((t.b.0, t.p.get(), t.d.0.as_secs()), (1024, 40.0, 1));
        assert!(serde_json::from_str::<T>(r#"{"b": -1, "p": 40, "d": "1s"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"b": 1, "p": 140, "d": "1s"}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"b": 1, "p": 40, "d": 5}"#).is_err());
    }
}
