//! File-service reply datagrams as `files-get` parses them (the client reads
//! whatever arrives on its socket): never a panic; a DATA reply's index is within
//! the file and its payload has exactly the length the header promises.
#![no_main]

use forkserve::services::files::wire::{self, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match wire::parse_reply(data) {
        Some(Reply::Data {
            index,
            meta,
            payload,
        }) => {
            assert!(index < meta.total, "chunk {index} of {}", meta.total);
            assert_eq!(payload.len(), meta.len_of(index));
            assert!(data.ends_with(payload));
        }
        Some(Reply::List { page, pages, .. }) => assert!(page < pages),
        _ => {}
    }
});
