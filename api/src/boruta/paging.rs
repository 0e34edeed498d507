//! Boruta's sorting and paging of lists, done in memory as Boruta did:
//! sort the filtered items, then take up to `Limit` items after (forward)
//! or before (backward) the border item, or from the start (forward) or
//! the end (backward) when there is no border.

use std::cmp::Ordering;

use corral_proto::boruta::{ListDirection, MAX_PAGE_LIMIT, SortOrder};

use super::Headers;
use corral_proto::boruta::headers;

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
    /// `Boruta-List-*` headers, plus `count_header` (the Boruta
    /// `…-Count` header of this kind of item).
    pub fn headers(&self, count_header: &'static str) -> Headers {
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
