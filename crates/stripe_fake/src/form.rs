//! Stripe's request encoding: `application/x-www-form-urlencoded` (and query
//! strings) with bracket nesting: `metadata[plan]=pro`, `items[0][price]=price_x`,
//! `expand[]=a`, `types[]=a&types[]=b`, repeated keys.

use serde_json::{Map, Value};

/// Decodes a form or query string into nested JSON. Scalars stay strings, as
/// Stripe receives them; `[]` and numeric indexes build arrays.
pub fn decode(input: &str) -> Value {
    let mut root = Value::Object(Map::new());
    for (k, v) in url::form_urlencoded::parse(input.as_bytes()) {
        let path = split_key(&k);
        insert(&mut root, &path, Value::String(v.into_owned()));
    }
    root
}

fn split_key(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    parts.push(head.to_string());
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(end) => {
                parts.push(stripped[..end].to_string());
                rest = &stripped[end + 1..];
            }
            None => break,
        }
    }
    parts
}

fn insert(node: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match node {
            Value::Object(m) => match m.get_mut(first) {
                // a repeated key becomes an array
                Some(Value::Array(a)) => a.push(value),
                Some(existing) => {
                    let old = existing.take();
                    *existing = Value::Array(vec![old, value]);
                }
                None => {
                    m.insert(first.clone(), value);
                }
            },
            Value::Array(a) => a.push(value),
            _ => {}
        }
        return;
    }
    let next_is_array = rest[0].is_empty() || rest[0].parse::<usize>().is_ok();
    let child = match node {
        Value::Object(m) => m
            .entry(first.clone())
            .or_insert_with(|| if next_is_array { Value::Array(Vec::new()) } else { Value::Object(Map::new()) }),
        Value::Array(a) => {
            // `items[0][price]`: the index picks (or creates) the element
            let idx = first.parse::<usize>().unwrap_or(a.len());
            while a.len() <= idx {
                a.push(Value::Object(Map::new()));
            }
            &mut a[idx]
        }
        _ => return,
    };
    if rest.len() == 1 && rest[0].is_empty() {
        // `key[]=v`
        if let Value::Array(a) = child {
            a.push(value);
        }
        return;
    }
    if let Value::Array(a) = child
        && rest.len() == 1
        && let Ok(idx) = rest[0].parse::<usize>()
    {
        while a.len() <= idx {
            a.push(Value::Null);
        }
        a[idx] = value;
        return;
    }
    insert(child, rest, value);
}

/// A string parameter, if present.
pub fn str_param<'a>(params: &'a Value, key: &str) -> Option<&'a str> {
    params.get(key).and_then(Value::as_str)
}

/// A list parameter given as `key[]=a&key[]=b`, `key[0]=a` or a single `key=a`.
pub fn list_param(params: &Value, key: &str) -> Vec<String> {
    match params.get(key) {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_nesting_arrays_and_repeats() {
        let v = decode(
            "email=a%40b.c&metadata[plan]=pro&items[0][price]=price_1&items[0][quantity]=2&items[1][price]=price_2&expand[]=x&expand[]=y&created[gte]=5",
        );
        assert_eq!(
            v,
            json!({"email":"a@b.c","metadata":{"plan":"pro"},
                   "items":[{"price":"price_1","quantity":"2"},{"price":"price_2"}],
                   "expand":["x","y"],"created":{"gte":"5"}})
        );
        assert_eq!(decode("types[0]=a&types[1]=b")["types"], json!(["a", "b"]));
        assert_eq!(decode("t=a&t=b")["t"], json!(["a", "b"]));
        assert_eq!(list_param(&decode("enabled_events[]=a&enabled_events[]=b"), "enabled_events"), vec!["a", "b"]);
        assert_eq!(list_param(&decode("enabled_events[0]=*"), "enabled_events"), vec!["*"]);
        assert_eq!(decode(""), json!({}));
        // malformed keys never panic
        let _ = decode("a[=1&[]=2&a]]=3&b[0][=4&c[x][]=5");
    }
}
