//! Event time: a strict RFC 3339 parser and the UTC instant it yields.
//!
//! The registry writes Go's `time.RFC3339Nano` (any number of fractional digits, `Z` or a
//! `±hh:mm` offset). chrono's own RFC 3339 parser is more lenient than the SPEC (it takes a space
//! for `T`, for one), so validation has its own small parser here.

use chrono::{DateTime, NaiveDate, Utc};

/// A UTC instant with nanosecond resolution, ordered by time.
///
/// Seconds are kept as `i64` beside the nanoseconds so that every year RFC 3339 can spell
/// (0000 to 9999) is representable, which an `i64` of nanoseconds is not.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// The UTC calendar date of this instant.
    pub fn date(self) -> NaiveDate {
        self.to_datetime().date_naive()
    }

    /// The instant as a chrono UTC date-time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        // Every value `parse_rfc3339` builds is inside chrono's range, so this never falls back.
        DateTime::from_timestamp(self.secs, self.nanos).unwrap_or_default()
    }

    /// RFC 3339 in UTC with as many fractional digits as needed (`2023-01-25T03:45:54.17327Z`).
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }
}

/// UTC dates of instants, remembered by day: chrono's calendar arithmetic cost more than the
/// rest of folding an event, and a run's events fall on a few hundred days.
#[derive(Clone, Debug)]
pub struct DateCache {
    /// By day since the epoch, modulo the table's size: the day and its date.
    days: Box<[(i64, NaiveDate)]>,
}

impl Default for DateCache {
    fn default() -> DateCache {
        DateCache {
            days: vec![(i64::MIN, NaiveDate::default()); 1024].into_boxed_slice(),
        }
    }
}

impl DateCache {
    /// The UTC calendar date of `t`, as [`Timestamp::date`].
    #[inline]
    pub fn date(&mut self, t: Timestamp) -> NaiveDate {
        let day = t.secs.div_euclid(86_400);
        let slot = &mut self.days[(day as usize) % 1024];
        if slot.0 != day {
            *slot = (day, t.date());
        }
        slot.1
    }
}

/// The times a registry can have written: a valid event stamped outside them counts as invalid
/// (README, "Times no registry wrote"). Go's zero time, the Unix epoch or a clock set years
/// ahead would otherwise stretch the outputs over every period in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    /// The first day a time may fall on.
    pub first_day: NaiveDate,
    /// The day after the last day a time may fall on.
    pub end_day: NaiveDate,
    first: i64,
    end: i64,
}

impl Default for TimeWindow {
    fn default() -> TimeWindow {
        TimeWindow::unbounded()
    }
}

impl TimeWindow {
    /// The first day of 2015: Docker Distribution 2.0, the first registry that sent
    /// notifications, came out in April 2015.
    pub const FIRST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(2015, 1, 1) {
        Some(d) => d,
        None => panic!("a valid date"),
    };

    /// From [`TimeWindow::FIRST_DAY`] to the end of the day after `today` (UTC): a registry's
    /// clock may run a little ahead of the machine that replays its logs, not more.
    pub fn until_day_after(today: NaiveDate) -> TimeWindow {
        TimeWindow::new(Self::FIRST_DAY, today + chrono::Days::new(2))
    }

    /// Days `first_day` (inclusive) to `end_day` (exclusive).
    pub fn new(first_day: NaiveDate, end_day: NaiveDate) -> TimeWindow {
        let secs = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp();
        TimeWindow {
            first_day,
            end_day,
            first: secs(first_day),
            end: secs(end_day),
        }
    }

    /// Every time RFC 3339 can spell (for tests of other rules).
    pub fn unbounded() -> TimeWindow {
        TimeWindow {
            first_day: NaiveDate::MIN,
            end_day: NaiveDate::MAX,
            first: i64::MIN,
            end: i64::MAX,
        }
    }

    /// Whether a registry can have written `t`.
    #[inline]
    pub fn contains(&self, t: Timestamp) -> bool {
        (self.first..self.end).contains(&t.secs)
    }

    /// Why `t`, outside the window, is refused: the reason `rejects.jsonl` gives.
    pub fn refusal(&self, t: Timestamp) -> String {
        if t.secs < self.first {
            format!(
                "timestamp {} is before {}: no registry sent notifications then",
                t.to_rfc3339(),
                self.first_day
            )
        } else {
            format!(
                "timestamp {} is on or after {}, later than the day after this run",
                t.to_rfc3339(),
                self.end_day
            )
        }
    }
}

/// Why a timestamp string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("timestamp is not of the form YYYY-MM-DDTHH:MM:SS[.fraction](Z|±hh:mm)")]
    Shape,
    #[error("timestamp names a date or time that does not exist")]
    OutOfRange,
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f+](Z|±hh:mm)` into a UTC instant.
///
/// `T` and `Z` may be lower case (RFC 3339 §5.6 allows it). Fractional digits beyond nine are
/// accepted and truncated: the SPEC allows any number, nanoseconds are what Go writes. A leap
/// second (`:60`) is accepted as RFC 3339 allows and ordered at the end of its minute.
pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampError> {
    let b = text.as_bytes();
    let Some(head) = b.get(..19).filter(|_| b.len() >= 20) else {
        return Err(TimestampError::Shape);
    };
    let Some([year, month, day, hour, minute, second]) = date_and_time(head) else {
        return Err(TimestampError::Shape);
    };

    let mut pos = 19;
    let mut nanos: u32 = 0;
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        // Go writes up to nine digits: the first eight are read in one step when they are all
        // digits, the loop below reading the rest (a digit loop was a third of this function).
        if let Some(eight) = b
            .get(pos..pos + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
        {
            if let Some(value) = eight_digits(eight) {
                nanos = value;
                pos += 8;
            }
        }
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 9 {
                nanos = nanos * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let n = pos - start;
        if n == 0 {
            return Err(TimestampError::Shape);
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }

    let offset_secs: i64 = match b.get(pos) {
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if pos + 6 == b.len() => {
            let oh = digits(b, pos + 1, 2)?;
            expect(b, pos + 3, b':')?;
            let om = digits(b, pos + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimestampError::OutOfRange);
            }
            let off = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return Err(TimestampError::Shape),
    };

    // Checked and counted here rather than through chrono's date and time types: this runs
    // once per event, and chrono's constructors were a few percent of a run.
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(TimestampError::OutOfRange);
    }
    let local = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second.min(59));
    // A leap second sorts after :59.999999999 of its minute and before the next minute.
    let nanos = if second == 60 { 999_999_999 } else { nanos };
    // Years 0000 to 9999, a day either side, lie well inside chrono's range (±262,000 years),
    // so every instant built here converts back (`Timestamp::to_datetime`).
    Ok(Timestamp {
        secs: local - offset_secs,
        nanos,
    })
}

/// `[year, month, day, hour, minute, second]` of the fixed head `YYYY-MM-DDTHH:MM:SS` (`T` or
/// `t`), or `None` when a byte is not the digit or the separator its place needs.
///
/// It runs once per event. Three overlapping words cover the 19 bytes and each is checked
/// and read in a few word operations; checking and combining the digits one byte at a time
/// cost about 26 instructions more per event (callgrind).
fn date_and_time(head: &[u8]) -> Option<[u32; 6]> {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(w)
    };
    // `T` is read as `t`: or-ing in 0x20 maps exactly `T` and `t` to `t`.
    const DATE: Pattern = Pattern::of(b"0000-00-");
    const MIDDLE: Pattern = Pattern::of(b"00t00:00");
    const TIME: Pattern = Pattern::of(b"00:00:00");
    let date = DATE.digits(word(0))?;
    let middle = MIDDLE.digits(word(8) | 0x20 << 16)?;
    let time = TIME.digits(word(11))?;
    // Byte j of `pairs(v)` is 10 times byte j of `v` plus byte j + 1: every byte of `v` is 9
    // or less, so no sum carries into the next byte.
    let pairs = |v: u64| v.wrapping_mul(10 << 8 | 1) >> 8;
    let byte = |w: u64, j: u32| (w >> (8 * j)) as u32 & 0xFF;
    let (date, middle, time) = (pairs(date), pairs(middle), pairs(time));
    Some([
        byte(date, 0) * 100 + byte(date, 2),
        byte(date, 5),
        byte(middle, 0),
        byte(middle, 3),
        byte(middle, 6),
        byte(time, 6),
    ])
}

/// Where a word of eight bytes must hold digits, and what the other bytes must be.
struct Pattern {
    /// 0xFF in each byte where a digit belongs.
    digits: u64,
    /// The separators in their bytes, zero where the digits are.
    separators: u64,
}

impl Pattern {
    /// From a pattern that writes `0` where any digit belongs.
    const fn of(pattern: &[u8; 8]) -> Pattern {
        let mut digits = 0;
        let mut i = 0;
        while i < 8 {
            if pattern[i] == b'0' {
                digits |= 0xFF << (8 * i);
            }
            i += 1;
        }
        Pattern {
            digits,
            separators: u64::from_le_bytes(*pattern) & !digits,
        }
    }

    /// The value of each digit in its byte (the separators' bytes zero), or `None` when a
    /// digit or a separator is wrong.
    #[inline(always)]
    fn digits(&self, word: u64) -> Option<u64> {
        if word & !self.digits != self.separators {
            return None;
        }
        // The separators' places read as `0`, whose value is 0.
        digit_values(word & self.digits | 0x3030_3030_3030_3030 & !self.digits)
    }
}

/// The value of each byte of `word` as an ASCII digit, in its byte, or `None` when a byte is
/// not one. A byte is a digit when its high nibble is 3 and adding 6 keeps it so.
#[inline(always)]
fn digit_values(word: u64) -> Option<u64> {
    let high = word & 0xF0F0_F0F0_F0F0_F0F0;
    let carried = (word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4;
    (high | carried == 0x3333_3333_3333_3333).then_some(word & 0x0F0F_0F0F_0F0F_0F0F)
}

/// The value of eight ASCII digits, or `None` when any byte is not a digit. Eight bytes are
/// tested and combined in a few word operations (the SWAR steps simdjson uses for numbers).
fn eight_digits(bytes: [u8; 8]) -> Option<u32> {
    let digits = digit_values(u64::from_le_bytes(bytes))?;
    // Pairs of digits, then fours, then all eight; the first digit is the lowest byte.
    let v = digits.wrapping_mul(2561) >> 8;
    let v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    Some(((v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32) as u32)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, TimestampError> {
    let mut v = 0u32;
    for &c in b.get(at..at + n).ok_or(TimestampError::Shape)? {
        if !c.is_ascii_digit() {
            return Err(TimestampError::Shape);
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), TimestampError> {
    if b.get(at) == Some(&c) {
        Ok(())
    } else {
        Err(TimestampError::Shape)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_window_holds_its_first_second_and_the_whole_day_after_the_run() {
        let t = |s: &str| parse_rfc3339(s).unwrap();
        let w = TimeWindow::until_day_after(NaiveDate::from_ymd_opt(2026, 11, 29).unwrap());
        assert!(w.contains(t("2015-01-01T00:00:00Z")));
        assert!(!w.contains(t("2014-12-31T23:59:59.999999999Z")));
        assert!(w.contains(t("2026-11-30T23:59:59.999999999Z")));
        assert!(!w.contains(t("2026-12-01T00:00:00Z")));
        assert!(!w.contains(t("0001-01-01T00:00:00Z")));
        assert!(!w.contains(t("1970-01-01T00:00:00Z")));
        assert!(!w.contains(t("0000-01-01T00:30:00+01:00")));
        assert!(TimeWindow::unbounded().contains(t("0000-01-01T00:30:00+01:00")));
        assert!(w
            .refusal(t("1970-01-01T00:00:00Z"))
            .contains("before 2015-01-01"));
        assert!(w
            .refusal(t("9999-12-31T23:59:59Z"))
            .contains("on or after 2026-12-01"));
    }

    use super::*;

    /// The cache gives `Timestamp::date`, across midnight, before the epoch, and for days
    /// that share a slot.
    #[test]
    fn date_cache_gives_the_date() {
        let mut cache = DateCache::default();
        let days = [
            0i64, 1, -1, 1024, -1024, 19_000, 20_024, -719_528, 2_932_896,
        ];
        for _ in 0..2 {
            for day in days {
                for secs in [day * 86_400, day * 86_400 + 86_399] {
                    let t = Timestamp { secs, nanos: 5 };
                    assert_eq!(cache.date(t), t.date(), "{secs}");
                }
            }
        }
    }

    fn utc(text: &str) -> String {
        parse_rfc3339(text).unwrap().to_rfc3339()
    }

    #[test]
    fn seed_example_converts_to_utc() {
        assert_eq!(
            utc("2023-01-25T14:45:54.17327+11:00"),
            "2023-01-25T03:45:54.173270Z"
        );
    }

    #[test]
    fn offsets_and_zulu() {
        assert_eq!(utc("2021-01-03T23:30:00-01:30"), "2021-01-04T01:00:00Z");
        assert_eq!(utc("2021-01-03t23:30:00z"), "2021-01-03T23:30:00Z");
        assert_eq!(utc("2021-01-03T23:30:00+00:00"), "2021-01-03T23:30:00Z");
    }

    #[test]
    fn fractions_of_any_length() {
        let a = parse_rfc3339("2021-01-03T00:00:00.1Z").unwrap();
        assert_eq!(a.nanos, 100_000_000);
        let b = parse_rfc3339("2021-01-03T00:00:00.123456789123Z").unwrap();
        assert_eq!(b.nanos, 123_456_789);
    }

    /// Every fraction length from 1 to 12 digits, and a non-digit at each of the first ten
    /// places: the fraction is its first nine digits, and a stray byte is refused.
    #[test]
    fn fractions_read_eight_digits_at_once_as_one_by_one() {
        let digits = "918273645091827364";
        for len in 1..=12 {
            let fraction = &digits[..len];
            let t = parse_rfc3339(&format!("2021-01-03T00:00:00.{fraction}Z")).unwrap();
            let nine = format!("{:0<9}", &fraction[..len.min(9)]);
            assert_eq!(t.nanos, nine.parse::<u32>().unwrap(), "{fraction}");
            for at in 0..len.min(10) {
                for stray in [b'/', b':', b'a', b' ', 0x80, b'0' - 16, b'9' + 16] {
                    let mut bytes = fraction.as_bytes().to_vec();
                    bytes[at] = stray;
                    let text = format!("2021-01-03T00:00:00.{}Z", String::from_utf8_lossy(&bytes));
                    assert!(parse_rfc3339(&text).is_err(), "{text:?} was accepted");
                }
            }
        }
    }

    /// The word-wise head against a byte loop, for every byte value at every place of the
    /// head, on heads with small, large and mixed digits.
    #[test]
    fn date_and_time_reads_the_head_as_a_byte_loop_does() {
        let naive = |h: &[u8]| -> Option<[u32; 6]> {
            for (i, &c) in h.iter().enumerate() {
                let fits = match i {
                    4 | 7 => c == b'-',
                    10 => c == b'T' || c == b't',
                    13 | 16 => c == b':',
                    _ => c.is_ascii_digit(),
                };
                if !fits {
                    return None;
                }
            }
            let n = |at: usize, len: usize| {
                h[at..at + len]
                    .iter()
                    .fold(0, |v, &c| v * 10 + u32::from(c - b'0'))
            };
            Some([n(0, 4), n(5, 2), n(8, 2), n(11, 2), n(14, 2), n(17, 2)])
        };
        for head in [
            *b"2023-07-25T20:43:37",
            *b"0000-00-00t00:00:00",
            *b"9999-99-99T99:99:99",
            *b"1908-27-36T45:54:63",
        ] {
            assert_eq!(date_and_time(&head), naive(&head));
            for at in 0..19 {
                for c in 0..=255u8 {
                    let mut h = head;
                    h[at] = c;
                    assert_eq!(
                        date_and_time(&h),
                        naive(&h),
                        "{:?}",
                        String::from_utf8_lossy(&h)
                    );
                }
            }
        }
    }

    /// The eight-digit step against a byte loop, for every byte value at every place.
    #[test]
    fn eight_digits_takes_exactly_eight_digits() {
        let naive = |b: [u8; 8]| {
            b.iter().try_fold(0u32, |v, &c| {
                c.is_ascii_digit().then(|| v * 10 + u32::from(c - b'0'))
            })
        };
        for at in 0..8 {
            for c in 0..=255u8 {
                let mut b = *b"73915028";
                b[at] = c;
                assert_eq!(eight_digits(b), naive(b), "{b:?}");
            }
        }
        assert_eq!(eight_digits(*b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(*b"00000000"), Some(0));
    }

    #[test]
    fn leap_second_sorts_inside_its_minute() {
        let leap = parse_rfc3339("2016-12-31T23:59:60.5Z").unwrap();
        let before = parse_rfc3339("2016-12-31T23:59:59.9Z").unwrap();
        let after = parse_rfc3339("2017-01-01T00:00:00Z").unwrap();
        assert!(before < leap && leap < after);
    }

    /// The calendar arithmetic against chrono's, over every day of the years RFC 3339 spells
    /// (a day in 29, and every day near the ends and around the end of February).
    #[test]
    fn counts_days_and_seconds_as_chrono_does() {
        let first = NaiveDate::from_ymd_opt(0, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        let mut date = first;
        let mut n = 0u64;
        while date <= last {
            use chrono::Datelike;
            let (y, m, d) = (date.year(), date.month(), date.day());
            for (clock, offset) in [
                ("00:00:00", "Z"),
                ("23:59:60.25", "-23:59"),
                ("12:34:56.5", "+01:30"),
            ] {
                let text = format!("{y:04}-{m:02}-{d:02}T{clock}{offset}");
                let ours = parse_rfc3339(&text).unwrap();
                let theirs = chrono::DateTime::parse_from_rfc3339(&text.replace(":60", ":59"))
                    .unwrap()
                    .with_timezone(&Utc);
                let want_nanos = if clock.contains(":60") {
                    999_999_999
                } else {
                    theirs.timestamp_subsec_nanos()
                };
                assert_eq!(
                    (ours.secs, ours.nanos),
                    (theirs.timestamp(), want_nanos),
                    "{text}"
                );
            }
            assert!(days_in_month(y as u32, m) >= d);
            let step = if n < 800
                || date > last - chrono::Days::new(800)
                || (m == 2 && d >= 27)
                || (m == 3 && d == 1)
            {
                1
            } else {
                29
            };
            date = date + chrono::Days::new(step);
            n += 1;
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2023-04-31T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-00-01T00:00:00Z",
            "2023-01-00T00:00:00Z",
            "2023-01-01T00:60:00Z",
            "2023-01-01T00:00:61Z",
        ] {
            assert_eq!(parse_rfc3339(bad), Err(TimestampError::OutOfRange), "{bad}");
        }
        for good in [
            "2024-02-29T00:00:00Z",
            "2000-02-29T00:00:00Z",
            "0000-02-29T00:00:00Z",
        ] {
            assert!(parse_rfc3339(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn rejects_what_rfc3339_does_not_allow() {
        for bad in [
            "",
            "2023-01-25",
            "2023-01-25 14:45:54Z",
            "2023-01-25T14:45:54",
            "2023-01-25T14:45:54.Z",
            "2023-01-25T14:45:54+1100",
            "2023-01-25T14:45:54+11:00 ",
            "2023-02-30T14:45:54Z",
            "2023-01-25T24:00:00Z",
            "2023-01-25T14:45:54+24:00",
            "２023-01-25T14:45:54Z",
            "1e3",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
