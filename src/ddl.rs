//! SQL text generated from the resource registry: foreign tables, their comments,
//! and identifier/literal quoting.

use stripe_core::resources::{ColType, RESOURCES, Resource};

/// `"name"` with inner quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled (standard_conforming_strings is on since 9.1).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The columns of a resource's tables: (name, SQL type, comment), in order.
pub fn columns(r: &Resource) -> Vec<(&'static str, &'static str, String)> {
    let mut cols = vec![
        ("id", "text", format!("Stripe id of the {} (prefix {}).", r.object.replace('_', " "), r.id_prefix)),
        ("created", ColType::Timestamp.sql(), format!("When the object was created (Stripe's {}).", r.created_field)),
    ];
    cols.extend(r.columns.iter().map(|c| (c.name, c.ty.sql(), c.comment.to_string())));
    cols.push(("attrs", "jsonb", "The whole Stripe object as the API returns it.".to_string()));
    cols
}

/// The planner's cost of starting a foreign scan: at least one Stripe request
/// (about 100 ms), like postgres_fdw's `fdw_startup_cost`. It makes a nested loop
/// with one request per outer row lose to one scan when the outer side is large.
pub const SCAN_STARTUP_COST: &str = "100";

/// The Connect column every foreign table has after `attrs`.
pub const FOREIGN_ACCOUNT_COLUMN: (&str, &str, &str) = (
    crate::fdw::ACCOUNT_COLUMN,
    "text",
    "Connect: the account the row was read from. account = 'acct_...' or account IN (...) reads those connected accounts (sent as Stripe-Account, one scan each); without it the scan reads the server's account option, or the key's own account (account NULL).",
);

/// `CREATE FOREIGN TABLE` for one resource.
pub fn foreign_table(r: &Resource, schema: &str, table: &str, server: &str) -> String {
    let mut cols: Vec<String> = columns(r).iter().map(|(n, t, _)| format!("{} {t}", ident(n))).collect();
    let (name, ty, _) = FOREIGN_ACCOUNT_COLUMN;
    cols.push(format!("{} {ty}", ident(name)));
    format!(
        "CREATE FOREIGN TABLE IF NOT EXISTS {}.{} ({}) SERVER {} OPTIONS (resource {}, startup_cost {})",
        ident(schema),
        ident(table),
        cols.join(", "),
        ident(server),
        literal(r.name),
        literal(SCAN_STARTUP_COST)
    )
}

/// `COMMENT` statements for a resource's foreign or materialized table.
pub fn comments(r: &Resource, kind: &str, schema: &str, table: &str, what: &str) -> Vec<String> {
    let q = format!("{}.{}", ident(schema), ident(table));
    let mut out = vec![format!("COMMENT ON {kind} {q} IS {}", literal(&format!("{} {what}", r.comment)))];
    for (name, _, comment) in columns(r) {
        out.push(format!("COMMENT ON COLUMN {q}.{} IS {}", ident(name), literal(&comment)));
    }
    out
}

/// `COMMENT` statements for a resource's foreign table.
pub fn foreign_table_comments(r: &Resource, schema: &str, table: &str) -> Vec<String> {
    let mut out = comments(r, "FOREIGN TABLE", schema, table, "Live from the Stripe API (stripe_sync).");
    let (name, _, comment) = FOREIGN_ACCOUNT_COLUMN;
    out.push(format!("COMMENT ON COLUMN {}.{}.{} IS {}", ident(schema), ident(table), ident(name), literal(comment)));
    out
}

/// The sync columns every materialized table has after the resource's columns.
pub const SYNC_COLUMNS: &[(&str, &str, &str)] = &[
    ("_synced_at", "timestamptz NOT NULL DEFAULT now()", "When stripe_sync last wrote this row."),
    ("_synced_by", "text NOT NULL", "What wrote it: refresh:full, refresh:incremental, or event:<event id>."),
    (
        "_stamp",
        "bigint NOT NULL",
        "Stripe's clock (unix seconds) of the version held: the event's created time, or when the page was read. Older versions never overwrite newer ones.",
    ),
    (
        "_api_version",
        "text",
        "The Stripe API version the row's attrs are rendered in: the source's (an event rendered in another version is fetched again in it). NULL for rows written before stripe_sync 0.3.0.",
    ),
];

/// The Connect column every materialized table has last, and its comment. The
/// key is `(id, account)`: Stripe ids are unique in practice, but a connected
/// account's cloned objects and test data may reuse one, so only the pair is
/// safe; id first, so that lookups by id alone use the key's index. No index
/// leads with `account`: the webhook worker keeps generic plans, and one made
/// while a table was small took such an index for its lookups by key (every
/// row of the account scanned per event: 23,756 events/s fell to about 145).
pub const ACCOUNT_COLUMN: (&str, &str, &str) = (
    crate::fdw::ACCOUNT_COLUMN,
    "text NOT NULL",
    "The Stripe account the object is in: the source's own account id, or a connected account of a Connect source. The key is (id, account).",
);

/// `CREATE TABLE`, indexes and comments of a resource's materialized table.
pub fn materialized_table(r: &Resource, schema: &str, table: &str) -> Vec<String> {
    let q = format!("{}.{}", ident(schema), ident(table));
    let mut cols: Vec<String> = columns(r)
        .iter()
        .map(|(n, t, _)| match *n {
            "id" => "\"id\" text NOT NULL".to_string(),
            "attrs" => "\"attrs\" jsonb NOT NULL".to_string(),
            _ => format!("{} {t}", ident(n)),
        })
        .collect();
    cols.extend(SYNC_COLUMNS.iter().map(|(n, t, _)| format!("{} {t}", ident(n))));
    let (account, account_type, account_comment) = ACCOUNT_COLUMN;
    cols.push(format!("{} {account_type}", ident(account)));
    cols.push(format!("PRIMARY KEY (\"id\", {})", ident(account)));
    let mut out = vec![format!("CREATE TABLE IF NOT EXISTS {q} ({})", cols.join(", "))];
    for (col, index) in indexed_columns(r).into_iter().zip(index_names(r, table)) {
        out.push(format!("CREATE INDEX IF NOT EXISTS {} ON {q} ({})", ident(&index), ident(col)));
    }
    out.extend(comments(r, "TABLE", schema, table, "Kept in sync by stripe_sync (refresh and webhooks)."));
    for (n, _, c) in SYNC_COLUMNS {
        out.push(format!("COMMENT ON COLUMN {q}.{} IS {}", ident(n), literal(c)));
    }
    out.push(format!("COMMENT ON COLUMN {q}.{} IS {}", ident(account), literal(account_comment)));
    out
}

/// The columns a materialized table indexes: `created` and the references joins use.
fn indexed_columns(r: &Resource) -> Vec<&'static str> {
    let mut cols = vec!["created"];
    cols.extend(r.columns.iter().filter(|c| c.reference).map(|c| c.name));
    cols
}

/// Names of the indexes of a materialized table, as [`indexed_columns`].
pub fn index_names(r: &Resource, table: &str) -> Vec<String> {
    indexed_columns(r).into_iter().map(|c| format!("{table}_{c}_idx")).collect()
}

/// Table name of a resource under a prefix.
pub fn table_name(prefix: &str, r: &Resource) -> String {
    format!("{prefix}{}", r.name)
}

/// Every resource's foreign table, filtered by IMPORT FOREIGN SCHEMA's lists by Postgres.
pub fn import_statements(schema: &str, server: &str, prefix: &str) -> Vec<String> {
    RESOURCES.iter().map(|r| foreign_table(r, schema, &table_name(prefix, r), server)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stripe_core::lookup;

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn foreign_table_has_id_first_typed_columns_then_attrs_and_account() {
        let sql = foreign_table(lookup("price").unwrap(), "stripe_api", "price", "stripe_default");
        assert!(sql.starts_with("CREATE FOREIGN TABLE IF NOT EXISTS \"stripe_api\".\"price\" (\"id\" text, \"created\" timestamptz, \"product\" text, \"active\" boolean"), "{sql}");
        assert!(sql.contains("\"unit_amount\" bigint"));
        assert!(
            sql.ends_with(
                "\"attrs\" jsonb, \"account\" text) SERVER \"stripe_default\" OPTIONS (resource 'price', startup_cost '100')"
            ),
            "{sql}"
        );
        assert_eq!(import_statements("s", "srv", "x_").len(), 15);
    }

    #[test]
    fn materialized_tables_have_a_primary_key_sync_columns_and_join_indexes() {
        let stmts = materialized_table(lookup("invoice").unwrap(), "stripe", "invoice");
        assert!(stmts[0].contains("\"account\" text NOT NULL, PRIMARY KEY (\"id\", \"account\")"), "{}", stmts[0]);
        assert!(stmts[0].contains("\"_stamp\" bigint NOT NULL"));
        let idx: Vec<&String> = stmts.iter().filter(|s| s.starts_with("CREATE INDEX")).collect();
        assert!(idx.iter().any(|s| s.contains("(\"customer\")")));
        assert!(idx.iter().any(|s| s.contains("(\"subscription\")")));
        assert!(idx.iter().any(|s| s.contains("(\"created\")")));
    }
}
