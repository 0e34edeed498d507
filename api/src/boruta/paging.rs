//! Boruta's two lists (requests and workers): the three handlers each
//! has (`POST …/list` with a list specification, `GET` and `HEAD` of the
//! collection with the default one), and their sorting and paging, done in
//! memory as Boruta did: sort the filtered items, then take up to `Limit`
//! items after (forward) or before (backward) the border item, or from the
//! start (forward) or the end (backward) when there is no border.

use std::cmp::Ordering;

use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::Caller;
use corral_proto::boruta::{ListDirection, MAX_PAGE_LIMIT, SortOrder};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BorutaError, Headers, answer, caller, read_body};
use crate::AppState;
use corral_proto::boruta::headers;

/// One of Boruta's lists.
pub trait List {
    /// The body of `POST …/list` (`RequestsListSpec`, `WorkersListSpec`).
    type Spec: DeserializeOwned + Default;
    /// Its filter, which Boruta's first list API sent bare, as the body.
    type Filter: DeserializeOwned;
    /// The filter's keys: a body object with one of them and none of
    /// `Filter`, `Sorter` and `Paginator` is a bare filter.
    const FILTER_KEYS: &'static [&'static str];

    fn with_filter(filter: Self::Filter) -> Self::Spec;

    /// Answers one page (for `HEAD`, its headers only).
    fn answer(
        state: &AppState,
        caller: &Caller,
        spec: Self::Spec,
        head: bool,
    ) -> impl Future<Output = Result<HttpResponse, BorutaError>>;
}

/// `POST …/list`.
pub async fn list<L: List>(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, BorutaError> {
    // Authenticate before reading what the caller sent.
    let caller = caller(&req, &state).await?;
    let body = read_body(payload, state.config.max_body).await?;
    let spec = parse_spec::<L>(&body)?;
    L::answer(&state, &caller, spec, false).await
}

/// `GET` of the collection: the first page of everything.
pub async fn list_all<L: List>(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    L::answer(&state, &caller, L::Spec::default(), false).await
}

/// `HEAD` of the collection: the headers of `GET`.
pub async fn list_all_head<L: List>(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    L::answer(&state, &caller, L::Spec::default(), true).await
}

/// The body of `POST …/list`: a list specification, a bare filter
/// (Boruta's first list API), or nothing.
pub fn parse_spec<L: List>(body: &[u8]) -> Result<L::Spec, BorutaError> {
    const SPEC_KEYS: [&str; 3] = ["Filter", "Sorter", "Paginator"];
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(L::Spec::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| BorutaError::invalid(format!("invalid JSON body: {e}")))?;
    let bad = |e: serde_json::Error| BorutaError::invalid(format!("invalid list specification: {e}"));
    match &value {
        serde_json::Value::Null => Ok(L::Spec::default()),
        serde_json::Value::Object(map)
            if !map.keys().any(|k| SPEC_KEYS.contains(&k.as_str()))
                && map.keys().any(|k| L::FILTER_KEYS.contains(&k.as_str())) =>
        {
            Ok(L::with_filter(serde_json::from_value(value).map_err(bad)?))
        }
        serde_json::Value::Object(_) => serde_json::from_value(value).map_err(bad),
        _ => Err(BorutaError::invalid("the body must be a JSON object with Filter, Sorter and Paginator")),
    }
}

/// One page of a sorted, filtered list.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items that matched the filter.
    pub total: usize,
    /// Items past this page, in the paging direction.
    pub remaining: usize,
}

impl<T> Page<T> {
    /// The page's items as Boruta's `info` shows them, with the
    /// `Boruta-List-*` headers and `count_header` (the `…-Count` header of
    /// this kind of item); for `HEAD`, the headers only.
    pub fn answer<I: Serialize>(&self, head: bool, count_header: &'static str, info: impl Fn(&T) -> I) -> HttpResponse {
        let infos: Vec<I> = self.items.iter().map(info).collect();
        answer(head, self.headers(count_header), &infos)
    }

    fn headers(&self, count_header: &'static str) -> Headers {
        vec![
            (count_header, self.items.len().to_string()),
            (headers::LIST_TOTAL, self.total.to_string()),
            (headers::LIST_REMAINING, self.remaining.to_string()),
            (headers::LIST_BATCH_SIZE, self.items.len().to_string()),
        ]
    }
}

/// Applies the order to an ascending comparison.
pub fn ordered(order: SortOrder, ascending: Ordering) -> Ordering {
    match order {
        SortOrder::Ascending => ascending,
        SortOrder::Descending => ascending.reverse(),
    }
}

/// Sorts `items` by `cmp` (a total order) and cuts the page. `border` is
/// the paginator's item; it need not be among `items`.
pub fn page<T>(
    mut items: Vec<T>,
    cmp: impl Fn(&T, &T) -> Ordering,
    border: Option<&T>,
    direction: ListDirection,
    limit: u16,
) -> Page<T> {
    let limit = if limit == 0 { MAX_PAGE_LIMIT } else { usize::from(limit) };
    items.sort_by(&cmp);
    let total = items.len();
    if let Some(border) = border {
        let side = match direction {
            ListDirection::Forward => Ordering::Greater,
            ListDirection::Backward => Ordering::Less,
        };
        items.retain(|item| cmp(item, border) == side);
    }
    let candidates = items.len();
    let taken = candidates.min(limit);
    let items: Vec<T> = match direction {
        ListDirection::Forward => items.into_iter().take(taken).collect(),
        ListDirection::Backward => items.into_iter().skip(candidates - taken).collect(),
    };
    Page { items, total, remaining: candidates - taken }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(items: &[u32], border: Option<u32>, direction: ListDirection, limit: u16) -> (Vec<u32>, usize, usize) {
        let page = page(items.to_vec(), |a, b| a.cmp(b), border.as_ref(), direction, limit);
        (page.items, page.total, page.remaining)
    }

    #[test]
    fn pages_follow_borutas_paginator() {
        use ListDirection::{Backward, Forward};
        let all = [5, 1, 4, 2, 3];
        assert_eq!(cut(&all, None, Forward, 0), (vec![1, 2, 3, 4, 5], 5, 0));
        assert_eq!(cut(&all, None, Forward, 2), (vec![1, 2], 5, 3));
        assert_eq!(cut(&all, Some(2), Forward, 2), (vec![3, 4], 5, 1));
        assert_eq!(cut(&all, Some(5), Forward, 2), (vec![], 5, 0));
        assert_eq!(cut(&all, None, Backward, 2), (vec![4, 5], 5, 3));
        assert_eq!(cut(&all, Some(4), Backward, 2), (vec![2, 3], 5, 1));
        assert_eq!(cut(&all, Some(1), Backward, 2), (vec![], 5, 0));
        assert_eq!(cut(&all, Some(3), Backward, 9), (vec![1, 2], 5, 0));
        // A border that did not match the filter still places the page.
        assert_eq!(cut(&[1, 2, 4, 5], Some(3), Forward, 1), (vec![4], 4, 1));
        assert_eq!(cut(&[1, 2, 4, 5], Some(3), Backward, 1), (vec![2], 4, 1));
    }

    #[test]
    fn descending_reverses_the_whole_order() {
        assert_eq!(ordered(SortOrder::Descending, 1.cmp(&2)), Ordering::Greater);
        assert_eq!(ordered(SortOrder::Ascending, 1.cmp(&2)), Ordering::Less);
    }
}
