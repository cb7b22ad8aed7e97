//! The dashboards (issue 8; design `docs/dashboards.md`), embedded at build time by `build.rs`:
//! `/` is the app's page, `/assets/<file>` its scripts, styles and uPlot. They need no
//! credentials (the app logs in against the API); every API call they make does.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

/// One embedded file.
pub struct Asset {
    /// Path under `/assets/`.
    pub name: &'static str,
    /// Content type.
    pub mime: &'static str,
    /// Hash of the content.
    pub etag: &'static str,
    /// The content.
    pub body: &'static [u8],
    /// The content, gzipped.
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The embedded file `name`.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

fn serve(req: &HttpRequest, a: &Asset, cache: &str) -> HttpResponse {
    let etag = format!("\"{}\"", a.etag);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    r.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache.to_string()))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header(("x-content-type-options", "nosniff"));
    if fresh {
        return r.finish();
    }
    r.insert_header((header::CONTENT_TYPE, a.mime));
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if gzip_ok {
        r.insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(a.gzip)
    } else {
        r.body(a.body)
    }
}

/// `GET /`: the app.
pub async fn index(req: HttpRequest) -> HttpResponse {
    match asset("index.html") {
        Some(a) => {
            let mut r = serve(&req, a, "no-cache");
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
                ),
            );
            r
        }
        None => HttpResponse::NotFound().finish(),
    }
}

/// `GET /assets/{name}`.
pub async fn file(req: HttpRequest) -> Result<HttpResponse, crate::error::ApiError> {
    let name = req.match_info().get("name").unwrap_or_default();
    let a = asset(name)
        .ok_or_else(|| crate::error::ApiError::NotFound(format!("no dashboard file {name:?}")))?;
    // Vendored files change only with the lockfile; the app's own files with each build.
    Ok(serve(&req, a, "no-cache"))
}
