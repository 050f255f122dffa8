//! Paging through Stripe lists: `limit`, `starting_after`, `has_more`, `created`
//! ranges and filters; page by page (bounded memory), and several `created` slices
//! at once.

use crate::client::Client;
use crate::error::StripeError;
use serde_json::Value;

/// A `created` range. Bounds are unix seconds; any combination may be set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedRange {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
}

impl CreatedRange {
    /// Smallest and largest second inside the range (inclusive).
    pub fn bounds(&self) -> (i64, i64) {
        let lo = [self.gt.map(|v| v.saturating_add(1)), self.gte].into_iter().flatten().max().unwrap_or(i64::MIN);
        let hi = [self.lt.map(|v| v.saturating_sub(1)), self.lte].into_iter().flatten().min().unwrap_or(i64::MAX);
        (lo, hi)
    }

    /// True when no second can satisfy the range.
    pub fn is_empty(&self) -> bool {
        let (lo, hi) = self.bounds();
        lo > hi
    }

    /// Both ranges at once.
    pub fn intersect(&self, other: &CreatedRange) -> CreatedRange {
        let (a_lo, a_hi) = self.bounds();
        let (b_lo, b_hi) = other.bounds();
        let lo = a_lo.max(b_lo);
        let hi = a_hi.min(b_hi);
        CreatedRange { gte: (lo != i64::MIN).then_some(lo), lte: (hi != i64::MAX).then_some(hi), ..Default::default() }
    }

    /// Query parameters (`created[gte]=...`), using `field` as the parameter name.
    pub fn params(&self, field: &str) -> Vec<(String, String)> {
        let mut p = Vec::new();
        for (op, v) in [("gt", self.gt), ("gte", self.gte), ("lt", self.lt), ("lte", self.lte)] {
            if let Some(v) = v {
                p.push((format!("{field}[{op}]"), v.to_string()));
            }
        }
        p
    }

    /// Splits `[lo, hi]` (inclusive) into at most `n` consecutive non-empty ranges
    /// that together cover it exactly.
    pub fn split(lo: i64, hi: i64, n: usize) -> Vec<CreatedRange> {
        if lo > hi || n == 0 {
            return Vec::new();
        }
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let n = (n as u128).min(span);
        let mut out = Vec::with_capacity(n as usize);
        let mut start = lo as i128;
        for i in 0..n {
            let size = span / n + u128::from(i < span % n);
            let end = start + size as i128 - 1;
            out.push(CreatedRange { gte: Some(start as i64), lte: Some(end as i64), ..Default::default() });
            start = end + 1;
        }
        out
    }
}

/// One list request, repeated with a cursor until `has_more` is false.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// `/v1/customers`
    pub path: String,
    /// Extra filters (`customer=cus_x`, `status=all`).
    pub filters: Vec<(String, String)>,
    pub created: CreatedRange,
    /// Page size, 1..=100.
    pub limit: u32,
    /// Start after this object id (resuming).
    pub starting_after: Option<String>,
}

impl ListQuery {
    pub fn new(path: impl Into<String>) -> ListQuery {
        ListQuery {
            path: path.into(),
            filters: Vec::new(),
            created: CreatedRange::default(),
            limit: 100,
            starting_after: None,
        }
    }

    pub fn filter(mut self, key: &str, value: &str) -> ListQuery {
        self.filters.push((key.to_string(), value.to_string()));
        self
    }

    pub fn created(mut self, range: CreatedRange) -> ListQuery {
        self.created = range;
        self
    }

    fn params(&self, cursor: Option<&str>) -> Vec<(String, String)> {
        let mut p = vec![("limit".to_string(), self.limit.clamp(1, 100).to_string())];
        p.extend(self.filters.iter().cloned());
        p.extend(self.created.params("created"));
        if let Some(c) = cursor {
            p.push(("starting_after".to_string(), c.to_string()));
        }
        p
    }
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    pub data: Vec<Value>,
    pub has_more: bool,
    /// Stripe's clock when the page was answered (unix seconds).
    pub fetched_at: i64,
}

/// Walks one list page by page; holds at most one page.
#[derive(Debug)]
pub struct Pager {
    client: Client,
    query: ListQuery,
    cursor: Option<String>,
    done: bool,
}

impl Pager {
    pub fn new(client: Client, query: ListQuery) -> Pager {
        let cursor = query.starting_after.clone();
        let done = query.created.is_empty();
        Pager { client, query, cursor, done }
    }

    /// The id of the last object returned (to resume with `starting_after`).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The next page, or `None` when the list is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Page>, StripeError> {
        if self.done {
            return Ok(None);
        }
        let params = self.query.params(self.cursor.as_deref());
        let (mut body, fetched_at) = self.client.get_dated(&self.query.path, &params).await?;
        let mut page = take_list(&mut body, &self.query.path)?;
        page.fetched_at = fetched_at;
        match page.data.last().and_then(|o| o.get("id")).and_then(Value::as_str) {
            Some(id) => self.cursor = Some(id.to_string()),
            // an empty page cannot be followed: stop even if has_more says otherwise
            None => self.done = true,
        }
        if !page.has_more {
            self.done = true;
        }
        Ok(Some(page))
    }

    /// Every object of the list (for small lists and tests).
    pub async fn collect_all(mut self) -> Result<Vec<Value>, StripeError> {
        let mut all = Vec::new();
        while let Some(p) = self.next_page().await? {
            all.extend(p.data);
        }
        Ok(all)
    }
}

/// Takes the `data` and `has_more` out of a list envelope.
pub fn take_list(body: &mut Value, path: &str) -> Result<Page, StripeError> {
    if body.get("object").and_then(Value::as_str) != Some("list") {
        return Err(StripeError::Decode { message: format!("{path} did not answer with a list") });
    }
    let has_more = body.get("has_more").and_then(Value::as_bool).unwrap_or(false);
    match body.get_mut("data").map(Value::take) {
        Some(Value::Array(data)) => Ok(Page { data, has_more, fetched_at: 0 }),
        _ => Err(StripeError::Decode { message: format!("{path} answered a list without data") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_range_exactly_once() {
        for (lo, hi, n) in [(0, 99, 4), (0, 0, 3), (5, 7, 10), (-10, 10, 3), (1_600_000_000, 1_700_000_000, 7)] {
            let parts = CreatedRange::split(lo, hi, n);
            assert!(parts.len() <= n);
            assert_eq!(parts.first().unwrap().bounds().0, lo);
            assert_eq!(parts.last().unwrap().bounds().1, hi);
            for w in parts.windows(2) {
                assert_eq!(w[0].bounds().1 + 1, w[1].bounds().0);
            }
            assert!(parts.iter().all(|p| !p.is_empty()));
        }
        assert!(CreatedRange::split(5, 4, 3).is_empty());
        assert_eq!(CreatedRange::split(i64::MIN, i64::MAX, 2).len(), 2);
    }

    #[test]
    fn ranges_intersect_and_render_as_stripe_parameters() {
        let a = CreatedRange { gt: Some(10), ..Default::default() };
        let b = CreatedRange { lte: Some(20), ..Default::default() };
        let c = a.intersect(&b);
        assert_eq!(c.bounds(), (11, 20));
        assert_eq!(
            c.params("created"),
            vec![("created[gte]".to_string(), "11".to_string()), ("created[lte]".to_string(), "20".to_string())]
        );
        assert!(CreatedRange { gt: Some(5), lt: Some(6), ..Default::default() }.is_empty());
        assert!(!CreatedRange::default().is_empty());
    }

    #[test]
    fn take_list_refuses_non_lists() {
        let mut v = serde_json::json!({"object": "customer"});
        assert!(take_list(&mut v, "/v1/x").is_err());
        let mut v = serde_json::json!({"object": "list", "has_more": true, "data": [{"id": "a"}]});
        let p = take_list(&mut v, "/v1/x").unwrap();
        assert!(p.has_more);
        assert_eq!(p.data.len(), 1);
    }
}
