//! Query strings: repeated keys (`cap=a=b&cap=c=d`), unknown keys refused.

use actix_web::HttpRequest;

use crate::error::ApiError;

pub struct Query(Vec<(String, String)>);

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

impl Query {
    pub fn parse(req: &HttpRequest) -> Result<Query, ApiError> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .map(Query)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }

    /// Refuses parameters not in `allowed`, so typos do not pass silently.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => {
                Err(ApiError::bad_request(format!("unknown query parameter {k:?}; known: {}", allowed.join(", "))))
            }
            None => Ok(()),
        }
    }

    pub fn one(&self, key: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!("query parameter {key:?} given more than once")));
        }
        Ok(first)
    }

    /// The `cap=key=value` filters, each checked like the caps of a
    /// request (see `corral_core::caps`).
    pub fn caps(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.all("cap")
            .map(|cap| {
                let (key, value) = cap
                    .split_once('=')
                    .ok_or_else(|| ApiError::bad_request(format!("cap must be key=value, got {cap:?}")))?;
                corral_core::caps::check_cap(key, value).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok((key.to_string(), value.to_string()))
            })
            .collect()
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

pub fn parse_limit(query: &Query) -> Result<u32, ApiError> {
    match query.one("limit")? {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
    }
}

/// The `cursor` of a listing paged by row id, newest first: `None` for the
/// first page, else the id the next page stays below. Cursors are opaque
/// to clients: `prefix` and the id in hex ([`id_cursor`] makes them).
pub fn parse_id_cursor(query: &Query, prefix: char) -> Result<Option<i64>, ApiError> {
    match query.one("cursor")? {
        None => Ok(None),
        Some(cursor) => cursor
            .strip_prefix(prefix)
            .and_then(|hex| i64::from_str_radix(hex, 16).ok())
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("invalid cursor; pass back the next_cursor of a previous page")),
    }
}

/// The cursor of the page after the one that ended with row `id`.
pub fn id_cursor(prefix: char, id: i64) -> String {
    format!("{prefix}{id:x}")
}

/// The paging parameters of a list, as the document describes them (the
/// handlers read them with [`Query`] and [`parse_limit`]; the test of the
/// document checks that both name the same parameters).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct PageParams {
    /// At most this many items (1 to 1000; 100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}
