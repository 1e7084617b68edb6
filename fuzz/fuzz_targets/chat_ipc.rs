//! Chat IPC frames as the broker (requests) and the workers (events) read them:
//! decoding never panics, every decoded message encodes to a frame of at most
//! MAX_FRAME that decodes to the same message, and a stream cut into pieces
//! decodes as it does whole.
#![no_main]

use forkserve::services::chat::protocol::{Event, InBuf, MAX_FRAME, Request};
use libfuzzer_sys::fuzz_target;

/// Everything `next` yields until it needs more bytes or fails.
fn take_all<T>(
    buf: &mut InBuf,
    next: fn(&mut InBuf) -> std::io::Result<Option<T>>,
    out: &mut Vec<T>,
) -> bool {
    loop {
        match next(buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fn check<T: PartialEq + std::fmt::Debug>(
    data: &[u8],
    cut: usize,
    next: fn(&mut InBuf) -> std::io::Result<Option<T>>,
    encode: fn(&T, &mut Vec<u8>),
) {
    let mut whole = InBuf::default();
    whole.extend(data);
    let mut want = Vec::new();
    let whole_ok = take_all(&mut whole, next, &mut want);

    let mut pieces = InBuf::default();
    let mut got = Vec::new();
    let mut ok = true;
    for piece in data.chunks(cut) {
        pieces.extend(piece);
        if !take_all(&mut pieces, next, &mut got) {
            ok = false;
            break;
        }
    }
    assert_eq!(got, want, "messages depend on how the bytes were read");
    assert_eq!(ok, whole_ok);

    for msg in &want {
        let mut frame = Vec::new();
        encode(msg, &mut frame);
        assert!(
            frame.len() <= 4 + MAX_FRAME,
            "{msg:?} encodes to {} bytes",
            frame.len()
        );
        let mut again = InBuf::default();
        again.extend(&frame);
        let back = next(&mut again)
            .expect("a re-encoded frame decodes")
            .expect("whole");
        assert_eq!(&back, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(head >> 1) + 1;
    if head & 1 == 0 {
        check(stream, cut, InBuf::next_request, Request::encode);
    } else {
        check(stream, cut, InBuf::next_event, Event::encode);
    }
});
