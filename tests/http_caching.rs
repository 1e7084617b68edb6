//! What the HTTP service tells caches, through the real binary: Cache-Control per
//! route, validators and 304s, ranges, and REDbot (the HTTP linter) run over every
//! route, failing on any note of warning or bad level.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn start() -> (Forkserve, String) {
    let fs = forkserve().args(["http", "-l", "tcp:127.0.0.1:0"]).start();
    let base = format!("http://{}", fs.addr(0).strip_prefix("tcp:").unwrap());
    (fs, base)
}

/// `curl -i` output split into status, headers (lower-case names) and body.
fn curl(args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn each_route_says_how_it_may_be_cached() {
    let (_fs, base) = start();
    let cc = |path: &str, extra: &[&str]| {
        let url = format!("{base}{path}");
        let mut args = extra.to_vec();
        args.push(&url);
        let (status, h, _) = curl(&args);
        (status, header(&h, "cache-control").map(str::to_owned))
    };
    assert_eq!(
        cc("/time", &[]).1.as_deref(),
        Some("max-age=0, must-revalidate")
    );
    assert_eq!(cc("/echo/hola", &[]).1.as_deref(), Some("no-cache"));
    assert_eq!(cc("/info", &[]).1.as_deref(), Some("no-store"));
    let json = ["-H", "Accept: application/json"];
    assert_eq!(cc("/info", &json).1.as_deref(), Some("no-store"));
    assert_eq!(cc("/", &[]).1.as_deref(), Some("max-age=60"));
    assert_eq!(cc("/missing", &[]), (404, Some("no-store".to_string())));
    assert_eq!(
        cc("/", &["-X", "POST", "-d", "x"]),
        (405, Some("no-store".to_string()))
    );
}

#[test]
fn home_page_revalidates_and_serves_ranges() {
    let (_fs, base) = start();
    let url = format!("{base}/");
    let (status, h, body) = curl(&[&url]);
    assert_eq!(status, 200);
    let etag = header(&h, "etag").expect("ETag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let modified = header(&h, "last-modified")
        .expect("Last-Modified")
        .to_string();
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));

    let inm = format!("If-None-Match: {etag}");
    let (status, h304, rest) = curl(&["-H", &inm, &url]);
    assert_eq!((status, rest.as_str()), (304, ""));
    assert_eq!(header(&h304, "etag"), Some(etag.as_str()));
    assert_eq!(header(&h304, "content-length"), None);

    let ims = format!("If-Modified-Since: {modified}");
    assert_eq!(curl(&["-H", &ims, &url]).0, 304);
    let old = "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT";
    assert_eq!(curl(&["-H", old, &url]).0, 200);
    assert_eq!(curl(&["-H", "If-None-Match: \"other\"", &url]).0, 200);

    let (status, h, part) = curl(&["-r", "0-14", &url]);
    assert_eq!((status, part.as_str()), (206, &body[..15]));
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes 0-14/{}", body.len()).as_str())
    );
    let (status, h, _) = curl(&["-r", "100000-", &url]);
    assert_eq!(status, 416);
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes */{}", body.len()).as_str())
    );
    // A range whose If-Range no longer matches gets the whole page.
    let (status, _, whole) = curl(&["-r", "0-14", "-H", "If-Range: \"stale\"", &url]);
    assert_eq!((status, whole.len()), (200, body.len()));
}

/// The redbot command: $REDBOT, else on PATH, else the virtual environment
/// `.ci/run` makes.
fn redbot() -> PathBuf {
    if let Some(p) = std::env::var_os("REDBOT") {
        return p.into();
    }
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/forkserve-ci/redbot/bin/redbot");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("redbot")
}

/// REDbot's notes for `url` as (level, id, summary), from its HAR output.
fn redbot_notes(url: &str) -> Vec<(String, String, String)> {
    let out = Command::new(redbot())
        .args(["-o", "har", url])
        .output()
        .expect("run redbot (bash .ci/run installs it: pip install redbot)");
    assert!(out.status.success(), "redbot {url}: {out:?}");
    let har: serde_json::Value = serde_json::from_slice(&out.stdout).expect("HAR JSON");
    let entries = har["log"]["entries"].as_array().expect("entries");
    assert!(!entries.is_empty(), "redbot checked nothing at {url}");
    entries
        .iter()
        .flat_map(|e| e["_red_messages"].as_array().cloned().unwrap_or_default())
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
            (s("level"), s("note_id"), s("summary"))
        })
        .collect()
}

#[test]
fn redbot_finds_nothing_to_warn_about_on_any_route() {
    let (_fs, base) = start();
    let mut bad = Vec::new();
    for path in ["/", "/time", "/info", "/echo/hola%20mundo", "/missing"] {
        let notes = redbot_notes(&format!("{base}{path}"));
        // REDbot made its own conditional and range requests where it could.
        if path == "/" {
            for id in ["INM_304", "IMS_304", "RANGE_CORRECT"] {
                assert!(
                    notes.iter().any(|n| n.1 == id),
                    "{path}: no {id}: {notes:?}"
                );
            }
        }
        bad.extend(
            notes
                .into_iter()
                .filter(|(level, _, _)| level == "BAD" || level == "WARN")
                .map(|n| (path, n)),
        );
    }
    assert!(bad.is_empty(), "REDbot complains: {bad:#?}");
}
