//! Maps between dotted key paths (`sip.max_calls`) and positions in the TOML text, so every
//! config error can name both the key and its line and column.

use std::ops::Range;

use toml_edit::{Document, Item, TableLike};

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, col)
}

/// The span of the value at `path` (or, for a table, of its header key).
pub fn span_of_path(text: &str, path: &str) -> Option<Range<usize>> {
    let doc = Document::parse(text).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, item) = table.get_key_value(part)?;
        if let Item::ArrayOfTables(array) = item {
            // `sip.trunk.1`: the second [[sip.trunk]].
            let Some(index) = parts.next() else {
                return key.span();
            };
            let entry = array.get(index.parse().ok()?)?;
            if parts.peek().is_none() {
                return entry.span().or_else(|| key.span());
            }
            table = entry;
            continue;
        }
        if parts.peek().is_none() {
            return match item {
                Item::Value(v) => v.span().or_else(|| key.span()),
                _ => key.span(),
            };
        }
        table = item.as_table_like()?;
    }
    None
}

/// The dotted path of the key whose name or value covers `offset`, if any.
pub fn path_at(text: &str, offset: usize) -> Option<String> {
    let doc = Document::parse(text).ok()?;
    let mut found = None;
    walk(doc.as_table(), &mut Vec::new(), offset, &mut found);
    found
}

fn walk(
    table: &dyn TableLike,
    prefix: &mut Vec<String>,
    offset: usize,
    found: &mut Option<String>,
) {
    for (name, item) in table.iter() {
        prefix.push(name.to_owned());
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        let value_span = match item {
            Item::Value(v) => v.span(),
            _ => None,
        };
        let covers = |s: Option<Range<usize>>| s.is_some_and(|s| s.contains(&offset));
        if covers(key_span) || covers(value_span) {
            *found = Some(prefix.join("."));
        }
        if let Some(child) = item.as_table_like() {
            walk(child, prefix, offset, found);
        }
        if let Item::ArrayOfTables(array) = item {
            for (i, entry) in array.iter().enumerate() {
                prefix.push(i.to_string());
                walk(entry, prefix, offset, found);
                prefix.pop();
            }
        }
        prefix.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[daemon]\nlog_level = \"info\"\n\n[sip]\nmax_calls = 4\n";

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col(TEXT, 0), (1, 1));
        assert_eq!(line_col(TEXT, 9), (2, 1));
        assert_eq!(line_col(TEXT, 21), (2, 13));
    }

    #[test]
    fn span_of_path_finds_values_and_tables() {
        let span = span_of_path(TEXT, "sip.max_calls").unwrap();
        assert_eq!(&TEXT[span.clone()], "4");
        assert_eq!(line_col(TEXT, span.start), (5, 13));
        assert!(span_of_path(TEXT, "sip").is_some());
        assert!(span_of_path(TEXT, "sip.listen").is_none());
    }

    #[test]
    fn arrays_of_tables_are_addressed_by_index() {
        let text = "[[sip.trunk]]\nname = \"a\"\n\n[[sip.trunk]]\nname = \"b\"\nallow = [\"x\"]\n";
        let span = span_of_path(text, "sip.trunk.1").unwrap();
        assert_eq!(line_col(text, span.start).0, 4);
        let off = text.find("allow").unwrap();
        assert_eq!(path_at(text, off).as_deref(), Some("sip.trunk.1.allow"));
    }

    #[test]
    fn path_at_names_the_key_under_an_offset() {
        let off = TEXT.find("max_calls").unwrap();
        assert_eq!(path_at(TEXT, off).as_deref(), Some("sip.max_calls"));
        let off = TEXT.find("\"info\"").unwrap();
        assert_eq!(path_at(TEXT, off).as_deref(), Some("daemon.log_level"));
    }
}
