//! CSV answers (`format=csv`, or `Accept: text/csv`): a header line naming the columns, then one
//! row per item, streamed page by page so that a year of data downloads without being held in
//! memory. The first page is read before the answer starts, so a bad request still gets its 4xx.

use crate::error::ApiError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

/// Whether the request asks for CSV: `format=csv|json` wins over the `Accept` header.
pub fn wanted(req: &HttpRequest, format: Option<&str>) -> Result<bool, ApiError> {
    match format.map(|f| f.trim().to_ascii_lowercase()) {
        Some(f) if f == "csv" => Ok(true),
        Some(f) if f == "json" => Ok(false),
        Some(f) => Err(ApiError::param(
            "format",
            format!("{f:?} is not json or csv"),
        )),
        None => Ok(req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv"))),
    }
}

/// Rows as CSV bytes (fields quoted where needed).
pub fn rows<I, R>(rows: I) -> Result<Bytes, ApiError>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.write_record(r)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    w.into_inner()
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A streamed CSV answer: `first` (header and first page) now, then `fetch(state)` for each
/// further page until it returns no next state.
pub fn stream<S, F>(first: Bytes, state: Option<S>, fetch: F) -> HttpResponse
where
    S: Send + 'static,
    F: Fn(S) -> Result<(Bytes, Option<S>), ApiError> + Send + Sync + Clone + 'static,
{
    let pages = futures_util::stream::unfold(Some((Some(first), state)), move |st| {
        let fetch = fetch.clone();
        async move {
            let (pending, state) = st?;
            if let Some(b) = pending {
                return Some((Ok::<Bytes, ApiError>(b), Some((None, state))));
            }
            let s = state?;
            match web::block(move || fetch(s)).await {
                Ok(Ok((b, next))) => Some((Ok(b), Some((None, next)))),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "CSV export stopped");
                    Some((Err(e), None))
                }
                Err(e) => Some((Err(ApiError::from(e)), None)),
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .streaming(pages)
}
