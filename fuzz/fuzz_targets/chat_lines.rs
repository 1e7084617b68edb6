//! A chat client's input, split into lines as the worker does: however the bytes
//! are cut into reads, the same lines come out; no line holds a newline or exceeds
//! MAX_LINE; the buffer for an unfinished line stays bounded; cleaned text has no
//! control characters but tabs.
#![no_main]

use forkserve::services::chat::MAX_LINE;
use forkserve::services::chat::lines::{Input, Lines, clean};
use libfuzzer_sys::fuzz_target;

fn drain(lines: &mut Lines, out: &mut Vec<Input>) {
    while let Some(l) = lines.next_line() {
        out.push(l);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the read sizes; the rest is the client's stream.
    if data.len() < 2 {
        return;
    }
    let (sizes, stream) = data.split_at(2);
    let mut pieces = Lines::default();
    let mut got = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(sizes[i % 2]) * 37 + 1).min(rest.len());
        pieces.push(&rest[..n]);
        assert!(pieces.pending() <= MAX_LINE + 1, "unbounded partial line");
        drain(&mut pieces, &mut got);
        rest = &rest[n..];
        i += 1;
    }
    got.extend(pieces.take_last());

    let mut whole = Lines::default();
    whole.push(stream);
    let mut want = Vec::new();
    drain(&mut whole, &mut want);
    want.extend(whole.take_last());
    assert_eq!(got, want, "the lines depend on how the bytes were read");

    for input in &got {
        let Input::Line(raw) = input else { continue };
        assert!(
            raw.len() <= MAX_LINE,
            "a line of {} bytes got through",
            raw.len()
        );
        assert!(!raw.contains(&b'\n'));
        if let Some(text) = clean(raw) {
            assert!(text.chars().all(|c| c == '\t' || !c.is_control()));
            assert!(text.len() <= raw.len());
        } else {
            assert!(std::str::from_utf8(raw).is_err());
        }
    }
});
