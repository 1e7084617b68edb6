//! File-service request datagrams as the server parses them: never a panic; a name
//! that passes is a valid file name (no `/`, no control characters, not `.` or
//! `..`); ranges are ordered, at most MAX_RANGES, and survive a round trip through
//! their text form; a GET's ranges are merged (no overlap, nothing twice).
#![no_main]

use forkserve::services::files::wire::{self, MAX_RANGES, Range, Request};
use libfuzzer_sys::fuzz_target;

/// The server's request parser: the one entry point this target fuzzes.
fn parse(datagram: &[u8]) -> Option<Request<'_>> {
    wire::parse_request(datagram)
}

fn check_ranges(ranges: &[Range]) {
    assert!(
        !ranges.is_empty() && ranges.len() <= MAX_RANGES,
        "{} ranges",
        ranges.len()
    );
    assert!(ranges.iter().all(|r| r.from <= r.to), "{ranges:?}");
    let text = wire::format_ranges(ranges);
    let again = wire::parse_ranges(text.as_bytes())
        .unwrap_or_else(|| panic!("ranges {ranges:?} print as {text:?}, which does not parse"));
    assert_eq!(again, ranges);
}

fn check_name(name: &[u8]) {
    assert!(wire::valid_name(name));
    assert!(
        !name.contains(&b'/') && name != b"." && name != b"..",
        "{name:?}"
    );
    assert!(name.iter().all(|&b| b > b' ' && b != 0x7f), "{name:?}");
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        None | Some(Request::Hello) | Some(Request::List(_, None)) => {}
        Some(Request::List(_, Some(r))) => check_ranges(&r),
        Some(Request::Stat(_, name)) => check_name(name),
        Some(Request::Get(g)) => {
            check_name(g.name);
            check_ranges(&g.ranges);
            // Merged: no chunk is asked for twice.
            assert!(
                g.ranges.windows(2).all(|w| w[0].to < w[1].from),
                "{:?}",
                g.ranges
            );
        }
    }
});
