//! The collector's input: one point per line, in the exercise's format
//! `name:value[:timestamp]` or statsd's `name:value|g`, `name:value|c[|@rate]`,
//! `name:value|ms`, several lines per datagram. Parsing and validation only; what
//! is done with a point is the collector's business.

/// Longest metric name, in bytes.
pub const MAX_NAME: usize = 200;

/// What kind of series a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A level: the exercise's lines and statsd `|g`.
    Gauge,
    /// An increment: statsd `|c` (already divided by its sample rate).
    Counter,
    /// A duration in milliseconds: statsd `|ms`.
    Timer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Timer => "timer",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "gauge" => Some(Kind::Gauge),
            "counter" => Some(Kind::Counter),
            "timer" => Some(Kind::Timer),
            _ => None,
        }
    }
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    pub name: &'a str,
    pub value: f64,
    /// Unix time in milliseconds.
    pub t_ms: i64,
    pub kind: Kind,
    /// A statsd gauge written with a sign (`+3|g`, `-3|g`): a change of the last
    /// value rather than a new one.
    pub delta: bool,
}

/// Why a line was refused; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not `name:value…` at all.
    Syntax,
    /// A name that is empty, too long, or has characters outside `[A-Za-z0-9_.-]`.
    Name,
    /// A value that is not a finite number.
    Value,
    /// A timestamp that is not a finite number of seconds.
    Timestamp,
    /// A timestamp further than `--max-skew` from now.
    Skew,
    /// A statsd type other than g, c, ms, or a bad sample rate.
    Type,
    /// A new name when `--max-metrics` names are already known (the collector
    /// decides this one; parsing never returns it).
    Limit,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Syntax,
        Reason::Name,
        Reason::Value,
        Reason::Timestamp,
        Reason::Skew,
        Reason::Type,
        Reason::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Syntax => "syntax",
            Reason::Name => "name",
            Reason::Value => "value",
            Reason::Timestamp => "timestamp",
            Reason::Skew => "skew",
            Reason::Type => "type",
            Reason::Limit => "limit",
        }
    }
}

/// True for a valid metric name: 1 to [`MAX_NAME`] bytes of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored). `now_ms` is the
/// time a missing timestamp stands for; `max_skew_ms` how far a given one may be.
pub fn parse(line: &str, now_ms: i64, max_skew_ms: i64) -> Result<Point<'_>, Reason> {
    let line = line.strip_suffix('\r').unwrap_or(line).trim();
    let (name, rest) = line.split_once(':').ok_or(Reason::Syntax)?;
    if !valid_name(name) {
        return Err(Reason::Name);
    }
    let point = match rest.split_once('|') {
        Some((value, spec)) => statsd(name, value, spec, now_ms)?,
        None => exercise(name, rest, now_ms)?,
    };
    if (point.t_ms - now_ms).abs() > max_skew_ms {
        return Err(Reason::Skew);
    }
    Ok(point)
}

/// `value[:timestamp]`, the timestamp in (fractional) Unix seconds.
fn exercise<'a>(name: &'a str, rest: &str, now_ms: i64) -> Result<Point<'a>, Reason> {
    let (value, ts) = match rest.split_once(':') {
        Some((v, t)) => (v, Some(t)),
        None => (rest, None),
    };
    let value = number(value).ok_or(Reason::Value)?;
    let t_ms = match ts.map(str::trim).filter(|t| !t.is_empty()) {
        None => now_ms,
        Some(t) => seconds_to_ms(t).ok_or(Reason::Timestamp)?,
    };
    Ok(Point {
        name,
        value,
        t_ms,
        kind: Kind::Gauge,
        delta: false,
    })
}

/// `value|type[|@rate][|#tags]`; tags (DogStatsD) are accepted and ignored.
fn statsd<'a>(name: &'a str, value: &str, spec: &str, now_ms: i64) -> Result<Point<'a>, Reason> {
    let mut fields = spec.split('|');
    let kind = match fields.next().map(str::trim) {
        Some("g") => Kind::Gauge,
        Some("c") => Kind::Counter,
        Some("ms") => Kind::Timer,
        _ => return Err(Reason::Type),
    };
    let mut rate = 1.0;
    for f in fields {
        if let Some(r) = f.trim().strip_prefix('@') {
            rate = number(r)
                .filter(|r| *r > 0.0 && *r <= 1.0)
                .ok_or(Reason::Type)?;
        } else if !f.trim_start().starts_with('#') {
            return Err(Reason::Type);
        }
    }
    let raw = number(value).ok_or(Reason::Value)?;
    let delta = kind == Kind::Gauge && value.trim_start().starts_with(['+', '-']);
    let value = if kind == Kind::Counter {
        raw / rate
    } else {
        raw
    };
    Ok(Point {
        name,
        value,
        t_ms: now_ms,
        kind,
        delta,
    })
}

fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    // Rust also reads "inf" and "NaN": refused below as not finite.
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn seconds_to_ms(s: &str) -> Option<i64> {
    let secs = number(s)?;
    let ms = (secs * 1000.0).round();
    (ms.abs() < 1e15).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const DAY: i64 = 86_400_000;

    fn p(line: &str) -> Result<Point<'_>, Reason> {
        parse(line, NOW, DAY)
    }

    #[test]
    fn reads_the_exercise_format() {
        let pt = p("cpu.user:12.5:1700000000.25").unwrap();
        assert_eq!(
            (pt.name, pt.value, pt.t_ms, pt.kind),
            ("cpu.user", 12.5, NOW + 250, Kind::Gauge)
        );
        assert_eq!(p("mem:3\r").unwrap().t_ms, NOW);
        assert_eq!(p("mem:3:").unwrap().t_ms, NOW);
    }

    #[test]
    fn reads_statsd() {
        let c = p("hits:2|c|@0.5").unwrap();
        assert_eq!((c.value, c.kind), (4.0, Kind::Counter));
        assert_eq!(p("lat:12|ms").unwrap().kind, Kind::Timer);
        let g = p("temp:-3|g").unwrap();
        assert!(g.delta && g.value == -3.0);
        assert!(!p("temp:3|g|#host:a").unwrap().delta);
    }

    #[test]
    fn refuses_bad_lines_with_a_reason() {
        assert_eq!(p("no colon"), Err(Reason::Syntax));
        assert_eq!(p("bad name:1"), Err(Reason::Name));
        assert_eq!(p(&format!("{}:1", "a".repeat(201))), Err(Reason::Name));
        assert_eq!(p("x:abc"), Err(Reason::Value));
        assert_eq!(p("x:NaN"), Err(Reason::Value));
        assert_eq!(p("x:inf|g"), Err(Reason::Value));
        assert_eq!(p("x:1:yesterday"), Err(Reason::Timestamp));
        assert_eq!(p("x:1:1500000000"), Err(Reason::Skew));
        assert_eq!(p("x:1|h"), Err(Reason::Type));
        assert_eq!(p("x:1|c|@2"), Err(Reason::Type));
    }
}
