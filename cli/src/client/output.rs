//! What the client commands print: aligned tables and `key: value` blocks
//! for people, or the server's JSON for scripts (`--json`).
//!
//! Everything goes to standard output through [`emit`], which treats a
//! closed pipe (`corral request list | head`) as success.

use std::fmt::Display;
use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::Context;

/// Writes `text` to standard output.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

/// Prints an answer as pretty JSON (`--json`): the wire type, field for
/// field.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("formatting JSON")?;
    text.push('\n');
    emit(&text)
}

/// Columns padded to their widest cell; the last column is not padded.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    pub fn print(&self) -> anyhow::Result<()> {
        emit(&self.render())
    }
}

/// `key: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in pairs {
        let pad = width - key.len();
        text.push_str(&format!("{key}:{:pad$} {value}\n", "", pad = pad));
    }
    text
}

/// A timestamp for people: RFC 3339 UTC to the second.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A timestamp and how far it is from now: `2026-01-02T03:04:05Z (in 29m 59s)`.
pub fn time_and_distance(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(ahead) => format!("{} (in {})", time(t), duration(ahead)),
        Err(past) => format!("{} ({} ago)", time(t), duration(past.duration())),
    }
}

/// A duration for people, to the second: `2h 30m`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return "0s".to_string();
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The value, or `-`.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).filter(|v| !v.is_empty()).unwrap_or_else(|| "-".to_string())
}

/// A list of names, or `-`.
pub fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let joined = items.collect::<Vec<_>>().join(",");
    if joined.is_empty() { "-".to_string() } else { joined }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_all_but_the_last_column() {
        let mut table = Table::new(&["ID", "STATE", "CAPS"]);
        table.row(vec!["1".into(), "in_progress".into(), "a=b".into()]);
        table.row(vec!["12".into(), "done".into(), "-".into()]);
        assert_eq!(table.render(), "ID  STATE        CAPS\n1   in_progress  a=b\n12  done         -\n");
    }

    #[test]
    fn fields_align_values() {
        assert_eq!(fields(&[("id", "3".into()), ("state", "done".into())]), "id:    3\nstate: done\n");
    }

    #[test]
    fn times_for_people() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(duration(Duration::from_millis(9_000_900)), "2h 30m");
        assert!(time_and_distance(now + Duration::from_secs(90), now).ends_with("(in 1m 30s)"));
        assert!(time_and_distance(now - Duration::from_secs(5), now).ends_with("(5s ago)"));
    }
}
