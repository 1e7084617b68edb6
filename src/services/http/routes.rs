//! The routes: `/` (home page), `/time` (JSON), `/info` (HTML or JSON by Accept),
//! `/echo/<text>` (the text percent-decoded, HTML-escaped, and its length).

use serde_json::json;

use super::conditional::{self, strong_etag};
use super::request::Request;
use super::response::{Response, SERVER, escape_html};
use super::texts::Texts;
use crate::handler::Context;
use crate::peer::Peer;

/// What a route needs to know beyond the request.
pub struct Env<'a> {
    pub context: &'a Context,
    pub peer: &'a Peer,
    /// The texts of the language the service was started with (`--lang`).
    pub texts: Texts,
}

/// The response to `req`: a page, or 404 / 405 / 400.
pub fn respond(req: &Request, env: &Env<'_>) -> Response {
    let texts = env.texts;
    if percent_decode(&req.path).is_none() {
        return texts.error(400, &texts.bad_percent());
    }
    let route = match req.path.as_str() {
        "/" => Route::Home,
        // OPTIONS * (the only request with this target): 405 below.
        "*" => Route::Server,
        "/time" => Route::Time,
        "/info" => Route::Info,
        p if p.starts_with("/echo/") => Route::Echo(&p["/echo/".len()..]),
        p => {
            let shown = percent_decode(p).map(|b| String::from_utf8_lossy(&b).into_owned());
            return texts.error(404, &texts.not_found(shown.as_deref().unwrap_or(p)));
        }
    };
    if req.method != "GET" && req.method != "HEAD" {
        return texts
            .error(405, &texts.method_not_allowed(&req.method))
            .header("Allow", "GET, HEAD");
    }
    let resp = match route {
        Route::Home | Route::Server => home(texts),
        // Changes every second and has no validator: stale at once, and never
        // served stale (must-revalidate), even by a cache cut off from us. This
        // is what no-cache means here; no-cache without a validator is flagged by
        // cache checkers as a request for revalidation that cannot happen.
        Route::Time => Response::json(&json!({ "timestamp": crate::local_datetime() }))
            .header("Cache-Control", "max-age=0, must-revalidate"),
        Route::Info => info(req, env),
        Route::Echo(raw) => echo(raw, texts),
    };
    conditional::evaluate(req, resp)
}

/// How long a cache may reuse the home page without asking.
const HOME_MAX_AGE: u32 = 60;

enum Route<'a> {
    Server,
    Home,
    Time,
    Info,
    Echo(&'a str),
}

/// The home page: the same bytes for the life of a binary, so it carries a
/// strong ETag, the executable's modification time as Last-Modified, a short
/// max-age, and serves byte ranges.
fn home(texts: Texts) -> Response {
    let page = texts.home();
    let etag = strong_etag(page.as_bytes());
    let mut resp = Response::html(page)
        .header("Cache-Control", format!("max-age={HOME_MAX_AGE}"))
        .header("Accept-Ranges", "bytes")
        .header("ETag", etag);
    if let Some(&Some(t)) = BINARY_MTIME.get() {
        resp = resp.header("Last-Modified", crate::http_date(t.min(crate::unix_now())));
    }
    resp
}

/// When the running binary was written: when the home page last changed. Read
/// once by [`note_binary_mtime`] before the first fork (a sandboxed worker may
/// not look at the executable); workers inherit it.
static BINARY_MTIME: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();

/// Records the executable's modification time for the home page's
/// Last-Modified (called where the service is built, in the master).
pub fn note_binary_mtime() {
    use std::os::unix::fs::MetadataExt;
    BINARY_MTIME.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        Some(std::fs::metadata(exe).ok()?.mtime())
    });
}

fn info(req: &Request, env: &Env<'_>) -> Response {
    let pid = std::process::id();
    let model = env.context.model.name();
    let client = env.peer.to_string();
    if prefers_json(req.header("accept")) {
        return Response::json(&json!({
            "server": "forkserve",
            "version": env!("CARGO_PKG_VERSION"),
            "service": env.context.service,
            "pid": pid,
            "model": model,
            "client": client,
            "local": env.context.local,
        }))
        .header("Vary", "Accept")
        .header("Cache-Control", "no-store");
    }
    let values = [
        SERVER.to_string(),
        env.context.service.clone(),
        pid.to_string(),
        model.to_string(),
        client,
        env.context.local.clone(),
    ];
    let rows = env.texts.info_labels().into_iter().zip(values);
    let mut table = String::new();
    for (k, v) in rows {
        table.push_str(&format!(
            "<tr><th>{k}</th><td>{}</td></tr>\n",
            escape_html(&v)
        ));
    }
    Response::html(env.texts.info_page(&table))
        .header("Vary", "Accept")
        // It names this client and this worker: no cache may keep it (no-store
        // alone: `private` beside it is overridden, and flagged as conflicting).
        .header("Cache-Control", "no-store")
}

fn echo(raw: &str, texts: Texts) -> Response {
    let Some(bytes) = percent_decode(raw) else {
        return texts.error(400, &texts.bad_percent());
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return texts.error(400, &texts.not_utf8());
    };
    let n = text.chars().count();
    let page = texts.echo_page(&escape_html(&text), n);
    // The same text always gives the same page, so an ETag makes a cache's
    // revalidation (no-cache: ask every time) a cheap 304.
    let etag = strong_etag(page.as_bytes());
    Response::html(page)
        .header("Cache-Control", "no-cache")
        .header("ETag", etag)
}

/// Decodes `%XX` escapes; None when a `%` is not followed by two hex digits.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = std::str::from_utf8(hex)
                .ok()
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(v, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// True when the Accept header ranks `application/json` above `text/html`.
fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    quality(accept, "application", "json") > quality(accept, "text", "html")
}

/// The q-value `accept` gives `type/sub`: that of the most specific matching range.
fn quality(accept: &str, ty: &str, sub: &str) -> f32 {
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let Some((t, s)) = media.split_once('/') else {
            continue;
        };
        let specificity = match (t, s) {
            (t, s) if t == ty && s == sub => 3,
            (t, "*") if t == ty => 2,
            ("*", "*") => 1,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(sp, _)| specificity > sp) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc+").unwrap(), b"a b/c+");
        assert_eq!(percent_decode("%e2%82%ac").unwrap(), "€".as_bytes());
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn negotiates_json_by_accept() {
        assert!(prefers_json(Some("application/json")));
        assert!(prefers_json(Some("text/html;q=0.5, application/json")));
        assert!(!prefers_json(Some("*/*")));
        assert!(!prefers_json(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!prefers_json(Some("application/json;q=0, */*")));
        assert!(!prefers_json(None));
    }
}
