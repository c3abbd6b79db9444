//! The config file as a spanned TOML document, read table by table: every typed getter knows
//! the dotted key and the line it stands on, every problem is collected (a file's problems
//! are all reported in one run), and every key nobody asked for is reported as unknown.

use std::cell::RefCell;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::ConfigError;

/// A parsed file and the problems found in it so far.
pub(super) struct Document<'a> {
    file: &'a str,
    text: &'a str,
    problems: RefCell<Vec<ConfigError>>,
}

impl<'a> Document<'a> {
    pub(super) fn new(file: &'a str, text: &'a str) -> Self {
        Document {
            file,
            text,
            problems: RefCell::new(Vec::new()),
        }
    }

    /// Parses the text: the root table, or the syntax error (with its line).
    pub(super) fn parse(&self) -> Result<ImDocument<&'a str>, ConfigError> {
        ImDocument::parse(self.text).map_err(|e| ConfigError {
            file: self.file.to_string(),
            key: String::new(),
            line: e.span().map(|s| self.line_of(s.start)),
            reason: format!("invalid TOML: {}", e.message().trim()),
        })
    }

    /// The 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Records a problem of `key` (at `span`, when known).
    pub(super) fn problem(&self, key: &str, span: Option<Range<usize>>, reason: String) {
        let line = span.map(|s| self.line_of(s.start));
        self.problems.borrow_mut().push(ConfigError {
            file: self.file.to_string(),
            key: key.to_string(),
            line,
            reason,
        });
    }

    /// Whether nothing is wrong so far.
    pub(super) fn is_clean(&self) -> bool {
        self.problems.borrow().is_empty()
    }

    /// Every problem found, in file order (problems without a line last).
    pub(super) fn into_problems(self) -> Vec<ConfigError> {
        let mut problems = self.problems.into_inner();
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        problems
    }

    /// The root table.
    pub(super) fn root<'d>(&'d self, table: &'d dyn TableLike) -> Section<'d, 'a> {
        Section {
            doc: self,
            path: String::new(),
            table,
            span: None,
            read: RefCell::new(Vec::new()),
        }
    }
}

/// One table (or inline table) of the file being read.
pub(super) struct Section<'d, 'a> {
    doc: &'d Document<'a>,
    /// Dotted path of the table (`regions.eu1`), empty at the root.
    path: String,
    table: &'d dyn TableLike,
    /// Where the table starts (its header, or its key for inline tables).
    span: Option<Range<usize>>,
    /// Keys asked for: everything else is unknown.
    read: RefCell<Vec<String>>,
}

impl<'d, 'a> Section<'d, 'a> {
    /// The dotted key of `name` in this table.
    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Records a problem of this table's `name` (its own line, or the table's when absent).
    pub(super) fn problem(&self, name: &str, reason: impl Into<String>) {
        let span = self.key_span(name).or_else(|| self.span.clone());
        self.doc.problem(&self.key(name), span, reason.into());
    }

    /// Records a problem of the table itself.
    pub(super) fn table_problem(&self, reason: impl Into<String>) {
        self.doc
            .problem(&self.path, self.span.clone(), reason.into());
    }

    fn key_span(&self, name: &str) -> Option<Range<usize>> {
        let (key, item) = self.table.get_key_value(name)?;
        key.span().or_else(|| item.span())
    }

    /// The item of `name`, marking the key as known.
    fn item(&self, name: &str) -> Option<&'d Item> {
        self.read.borrow_mut().push(name.to_string());
        self.table.get(name).filter(|item| !item.is_none())
    }

    /// A value of `name`, or a problem saying what was expected.
    fn value(&self, name: &str, expected: &str) -> Option<&'d Value> {
        let item = self.item(name)?;
        match item.as_value() {
            Some(value) => Some(value),
            None => {
                self.problem(
                    name,
                    format!("expected {expected}, found {}", item.type_name()),
                );
                None
            }
        }
    }

    /// Reports a missing required key at the table's line.
    pub(super) fn missing(&self, name: &str) {
        self.doc.problem(
            &self.key(name),
            self.span.clone(),
            "missing: this key is required".into(),
        );
    }

    /// A string.
    pub(super) fn string(&self, name: &str) -> Option<String> {
        let value = self.value(name, "a string")?;
        match value.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.problem(
                    name,
                    format!("expected a string, found {}", value.type_name()),
                );
                None
            }
        }
    }

    /// A required string.
    pub(super) fn required_string(&self, name: &str) -> Option<String> {
        let present = self.table.contains_key(name);
        let value = self.string(name);
        if !present {
            self.missing(name);
        }
        value
    }

    /// A boolean.
    pub(super) fn bool(&self, name: &str) -> Option<bool> {
        let value = self.value(name, "true or false")?;
        let b = value.as_bool();
        if b.is_none() {
            self.problem(
                name,
                format!("expected true or false, found {}", value.type_name()),
            );
        }
        b
    }

    /// A whole number in `range`.
    pub(super) fn number(&self, name: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
        let value = self.value(name, "a number")?;
        let n = value.as_integer().and_then(|n| u64::try_from(n).ok());
        match n {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                self.problem(
                    name,
                    format!(
                        "{} is not a number from {} to {}",
                        value_text(value),
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// A duration written like `"3s"` or `"500ms"`.
    pub(super) fn duration(&self, name: &str) -> Option<Duration> {
        let value = self.value(name, "a duration")?;
        match value.as_str().map(humantime::parse_duration) {
            Some(Ok(d)) => Some(d),
            _ => {
                self.problem(
                    name,
                    format!(
                        "{} is not a duration; write e.g. \"3s\" or \"500ms\"",
                        value_text(value)
                    ),
                );
                None
            }
        }
    }

    /// A duration that must be longer than zero.
    pub(super) fn positive_duration(&self, name: &str) -> Option<Duration> {
        let d = self.duration(name)?;
        if d.is_zero() {
            self.problem(name, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// A size written like `"512 MiB"`, or a number of bytes.
    pub(super) fn size(&self, name: &str) -> Option<u64> {
        let value = self.value(name, "a size")?;
        let parsed = match (value.as_integer(), value.as_str()) {
            (Some(n), _) => u64::try_from(n).ok(),
            (None, Some(s)) => s.trim().parse::<bytesize::ByteSize>().ok().map(|b| b.0),
            _ => None,
        };
        if parsed.is_none() {
            self.problem(
                name,
                format!(
                    "{} is not a size; write e.g. \"512 MiB\"",
                    value_text(value)
                ),
            );
        }
        parsed
    }

    /// One of a fixed set of words.
    pub(super) fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> Option<T> {
        let value = self.value(name, "a string")?;
        let found = value
            .as_str()
            .and_then(|s| choices.iter().find(|(word, _)| *word == s));
        if found.is_none() {
            let words: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
            self.problem(
                name,
                format!("{} is not one of {}", value_text(value), words.join(", ")),
            );
        }
        found.map(|(_, v)| *v)
    }

    /// A list of strings (absent: empty).
    pub(super) fn strings(&self, name: &str) -> Vec<String> {
        let Some(value) = self.value(name, "a list of strings") else {
            return Vec::new();
        };
        let Some(array) = value.as_array() else {
            self.problem(
                name,
                format!("expected a list of strings, found {}", value.type_name()),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(array.len());
        for (i, item) in array.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.problem(
                    name,
                    format!("item {i}: expected a string, found {}", item.type_name()),
                ),
            }
        }
        out
    }

    /// A sub-table, `[name]` or `name = { … }`.
    pub(super) fn table(&self, name: &str) -> Option<Section<'d, 'a>> {
        let item = self.item(name)?;
        match item.as_table_like() {
            Some(table) => Some(Section {
                doc: self.doc,
                path: self.key(name),
                table,
                span: table_span(item).or_else(|| self.key_span(name)),
                read: RefCell::new(Vec::new()),
            }),
            None => {
                self.problem(
                    name,
                    format!("expected a table, found {}", item.type_name()),
                );
                None
            }
        }
    }

    /// Every entry of this table as a sub-table (`[regions.NAME]`), in file order.
    pub(super) fn entries(&self) -> Vec<(String, Section<'d, 'a>)> {
        let names: Vec<String> = self.table.iter().map(|(k, _)| k.to_string()).collect();
        names
            .into_iter()
            .filter_map(|name| self.table(&name).map(|t| (name, t)))
            .collect()
    }

    /// An array of tables, `[[name]]`.
    pub(super) fn array_of_tables(&self, name: &str) -> Vec<Section<'d, 'a>> {
        let Some(item) = self.item(name) else {
            return Vec::new();
        };
        let Some(array) = item.as_array_of_tables() else {
            self.problem(
                name,
                format!(
                    "expected [[{}]] tables, found {}",
                    self.key(name),
                    item.type_name()
                ),
            );
            return Vec::new();
        };
        array
            .iter()
            .enumerate()
            .map(|(i, table)| Section {
                doc: self.doc,
                path: format!("{}[{i}]", self.key(name)),
                table,
                span: table.span(),
                read: RefCell::new(Vec::new()),
            })
            .collect()
    }

    /// A list of inline tables, `name = [{ … }, { … }]`.
    pub(super) fn inline_tables(&self, name: &str) -> Vec<Section<'d, 'a>> {
        let Some(value) = self.value(name, "a list of tables") else {
            return Vec::new();
        };
        let Some(array) = value.as_array() else {
            self.problem(
                name,
                format!("expected a list of tables, found {}", value.type_name()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in array.iter().enumerate() {
            match item.as_inline_table() {
                Some(table) => out.push(Section {
                    doc: self.doc,
                    path: format!("{}[{i}]", self.key(name)),
                    table,
                    span: item.span().or_else(|| self.key_span(name)),
                    read: RefCell::new(Vec::new()),
                }),
                None => self.problem(
                    name,
                    format!("item {i}: expected a table, found {}", item.type_name()),
                ),
            }
        }
        out
    }

    /// Whether `name` is set.
    pub(super) fn has(&self, name: &str) -> bool {
        self.table.contains_key(name)
    }

    /// Reports every key of this table that no getter asked for.
    pub(super) fn finish(&self) {
        let read = self.read.borrow();
        for (name, _) in self.table.iter() {
            if !read.iter().any(|r| r == name) {
                let known = if read.is_empty() {
                    String::new()
                } else {
                    format!(" (known: {})", read.join(", "))
                };
                self.problem(name, format!("unknown key{known}"));
            }
        }
    }
}

/// Where a table begins: its header, or the inline table's braces.
fn table_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Table(t) => t.span(),
        Item::Value(v) => v.span(),
        _ => None,
    }
}

/// A value as the file wrote it, for messages.
fn value_text(value: &Value) -> String {
    match value.as_str() {
        Some(s) => format!("{s:?}"),
        None => value.to_string().trim().to_string(),
    }
}
