//! Validators, conditional requests and ranges (RFC 9110 §8.8, §13, §14) for
//! responses that carry an `ETag` and/or `Last-Modified`: `If-None-Match` and
//! `If-Modified-Since` answer 304, `If-Match` and `If-Unmodified-Since` 412, and a
//! single `Range` (with `If-Range`) 206 or 416. Several ranges in one request get
//! the whole representation (a server may ignore Range; a multipart reply for a
//! page this small would be larger than the page).

use super::request::Request;
use super::response::Response;

/// A strong entity tag for `body`: a 64-bit FNV-1a hash of its bytes, quoted.
pub fn strong_etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// Applies the request's preconditions, and its Range where `resp` says
/// `Accept-Ranges: bytes`, to `resp` (a 200 to a GET or HEAD whose validators are
/// already among its headers) and returns what to send: `resp` itself, a 304, a
/// 412, a 206 or a 416.
pub fn evaluate(req: &Request, resp: Response) -> Response {
    if resp.status != 200 || (req.method != "GET" && req.method != "HEAD") {
        return resp;
    }
    let etag = resp.get("ETag").map(str::to_owned);
    let modified = resp.get("Last-Modified").and_then(crate::parse_http_date);
    // RFC 9110 §13.2.2, in order.
    if let Some(im) = req.header("if-match") {
        if !matches_any(im, etag.as_deref(), true) {
            return precondition_failed(&resp);
        }
    } else if let (Some(ius), Some(lm)) = (
        req.header("if-unmodified-since")
            .and_then(crate::parse_http_date),
        modified,
    ) && lm > ius
    {
        return precondition_failed(&resp);
    }
    if let Some(inm) = req.header("if-none-match") {
        if matches_any(inm, etag.as_deref(), false) {
            return not_modified(&resp);
        }
    } else if let (Some(ims), Some(lm)) = (
        req.header("if-modified-since")
            .and_then(crate::parse_http_date),
        modified,
    ) && lm <= ims
    {
        return not_modified(&resp);
    }
    let ranges = resp.get("Accept-Ranges") == Some("bytes");
    match req.header("range") {
        Some(range) if ranges && if_range_holds(req, etag.as_deref(), modified) => {
            apply_range(range, resp)
        }
        _ => resp,
    }
}

/// Whether the comma-separated entity-tag list `list` (or `*`) matches `etag`,
/// by strong comparison (If-Match) or weak comparison (If-None-Match).
fn matches_any(list: &str, etag: Option<&str>, strong: bool) -> bool {
    let Some(etag) = etag else { return false };
    if list.trim() == "*" {
        return true;
    }
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    list.split(',').map(str::trim).any(|t| {
        if strong {
            !t.starts_with("W/") && !etag.starts_with("W/") && t == etag
        } else {
            bare(t) == bare(etag)
        }
    })
}

/// If-Range (§13.1.5): the range applies only when the validator still matches
/// (a strong entity tag, or a date equal to Last-Modified).
fn if_range_holds(req: &Request, etag: Option<&str>, modified: Option<i64>) -> bool {
    let Some(v) = req.header("if-range").map(str::trim) else {
        return true;
    };
    if v.starts_with('"') || v.starts_with("W/") {
        return !v.starts_with("W/") && etag == Some(v);
    }
    crate::parse_http_date(v).is_some_and(|d| Some(d) == modified)
}

/// Keeps the validators and caching headers a 304 or 412 must repeat.
fn stripped(resp: &Response, status: u16) -> Response {
    let mut out = Response::new(status, resp.content_type, Vec::new());
    for (name, value) in &resp.headers {
        if matches!(
            *name,
            "ETag" | "Last-Modified" | "Cache-Control" | "Expires" | "Vary"
        ) {
            out.headers.push((name, value.clone()));
        }
    }
    out
}

fn not_modified(resp: &Response) -> Response {
    stripped(resp, 304)
}

fn precondition_failed(resp: &Response) -> Response {
    let mut out = Response::error(412, "A precondition of this request does not hold.");
    out.headers.extend(
        stripped(resp, 412)
            .headers
            .into_iter()
            .filter(|(n, _)| *n != "Cache-Control"),
    );
    out
}

/// A single satisfiable `bytes=` range gives 206 with Content-Range; an
/// unsatisfiable one 416; anything else (other units, several ranges, a
/// malformed header) the whole representation.
fn apply_range(spec: &str, resp: Response) -> Response {
    let len = resp.body.len() as u64;
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return resp;
    };
    if set.contains(',') {
        return resp;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return resp;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))).filter(|_| a < len),
        (Ok(_), Ok(_)) => return resp,
        (Ok(a), Err(_)) if last.is_empty() => Some((a, len.saturating_sub(1))).filter(|_| a < len),
        (Err(_), Ok(n)) if first.is_empty() => {
            Some((len.saturating_sub(n), len.saturating_sub(1))).filter(|_| n > 0 && len > 0)
        }
        _ => return resp,
    };
    let Some((a, b)) = range else {
        let mut out = Response::error(416, "The requested range is outside the representation.");
        out.headers
            .push(("Content-Range", format!("bytes */{len}")));
        return out;
    };
    let mut out = Response::new(
        206,
        resp.content_type,
        resp.body[a as usize..=b as usize].to_vec(),
    );
    out.headers = resp.headers;
    out.headers
        .push(("Content-Range", format!("bytes {a}-{b}/{len}")));
    out
}

#[cfg(test)]
mod tests {
    use super::super::request::Body;
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            path: "/".into(),
            minor: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Body::None,
            must_close: false,
        }
    }

    fn page() -> Response {
        let body = b"0123456789".to_vec();
        let etag = strong_etag(&body);
        Response::html(String::from_utf8(body).unwrap())
            .header("Accept-Ranges", "bytes")
            .header("ETag", etag)
            .header("Last-Modified", crate::http_date(1_000_000_000))
    }

    #[test]
    fn if_none_match_gives_304_with_validators() {
        let tag = strong_etag(b"0123456789");
        let r = evaluate(
            &req(&[("If-None-Match", &format!("W/{tag}, \"x\""))]),
            page(),
        );
        assert_eq!(r.status, 304);
        assert!(r.body.is_empty() && r.get("ETag") == Some(tag.as_str()));
        assert_eq!(
            evaluate(&req(&[("If-None-Match", "\"x\"")]), page()).status,
            200
        );
    }

    #[test]
    fn if_modified_since_is_ignored_beside_if_none_match() {
        let later = crate::http_date(2_000_000_000);
        assert_eq!(
            evaluate(&req(&[("If-Modified-Since", &later)]), page()).status,
            304
        );
        let r = evaluate(
            &req(&[("If-Modified-Since", &later), ("If-None-Match", "\"x\"")]),
            page(),
        );
        assert_eq!(r.status, 200);
        let earlier = crate::http_date(10);
        assert_eq!(
            evaluate(&req(&[("If-Modified-Since", &earlier)]), page()).status,
            200
        );
    }

    #[test]
    fn if_match_failing_gives_412() {
        assert_eq!(
            evaluate(&req(&[("If-Match", "\"nope\"")]), page()).status,
            412
        );
        assert_eq!(evaluate(&req(&[("If-Match", "*")]), page()).status, 200);
    }

    #[test]
    fn ranges() {
        let r = evaluate(&req(&[("Range", "bytes=2-4")]), page());
        assert_eq!((r.status, r.body.as_slice()), (206, &b"234"[..]));
        assert_eq!(r.get("Content-Range"), Some("bytes 2-4/10"));
        let r = evaluate(&req(&[("Range", "bytes=-3")]), page());
        assert_eq!(r.body, b"789");
        let r = evaluate(&req(&[("Range", "bytes=7-")]), page());
        assert_eq!(r.body, b"789");
        let r = evaluate(&req(&[("Range", "bytes=8-100")]), page());
        assert_eq!(r.body, b"89");
        let r = evaluate(&req(&[("Range", "bytes=10-")]), page());
        assert_eq!(
            (r.status, r.get("Content-Range")),
            (416, Some("bytes */10"))
        );
        assert_eq!(
            evaluate(&req(&[("Range", "bytes=0-1,4-5")]), page()).status,
            200
        );
        assert_eq!(
            evaluate(&req(&[("Range", "items=0-1")]), page()).status,
            200
        );
        let stale = [("Range", "bytes=0-1"), ("If-Range", "\"old\"")];
        assert_eq!(evaluate(&req(&stale), page()).status, 200);
    }
}
