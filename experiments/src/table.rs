//! One table writer for every report: a markdown table built from rows, so that every
//! experiment's `report.md` tables look alike (the same numbers go to `summary.json`).

use std::fmt;

/// A markdown table: a header and rows of cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<S: ToString>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Append a row; it must have a cell per column.
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        let cells: Vec<String> = cells.into_iter().map(|s| s.to_string()).collect();
        assert_eq!(
            cells.len(),
            self.header.len(),
            "a row of {} cells in a table of {} columns ({:?})",
            cells.len(),
            self.header.len(),
            self.header
        );
        self.rows.push(cells);
        self
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| {} |", self.header.join(" | "))?;
        writeln!(f, "|{}", "---|".repeat(self.header.len()))?;
        for row in &self.rows {
            writeln!(f, "| {} |", row.join(" | "))?;
        }
        Ok(())
    }
}

/// A fraction as a percentage with one decimal.
pub fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// An optional value with three decimals, `–` when absent.
pub fn opt3(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_header_separator_and_rows() {
        let mut t = Table::new(["a", "b"]);
        t.row(["1", "2"]).row([3.5, 4.0]);
        assert_eq!(
            t.to_string(),
            "| a | b |\n|---|---|\n| 1 | 2 |\n| 3.5 | 4 |\n"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    #[should_panic(expected = "a row of 1 cells in a table of 2 columns")]
    fn a_short_row_is_a_bug() {
        Table::new(["a", "b"]).row(["1"]);
    }
}
