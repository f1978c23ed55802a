//! The listings' text tables: each column as wide as its widest cell (a
//! long flow/task actor or namespace no longer pushes the columns after it
//! out of line), two spaces between columns, no trailing blanks, control
//! characters escaped.

use keyhole::output::one_line;
use std::io::Write;

/// How a column's cells sit in its width.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    /// Numbers and versions.
    Right,
}

/// A table filled row by row, then written at once (widths need every row).
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// Adds a row: one cell per column, in order. Control characters in a
    /// cell (plugin-chosen text can reach a listing) are shown escaped.
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let row: Vec<String> = cells.into_iter().map(|c| one_line(c.as_ref()).into_owned()).collect();
        debug_assert_eq!(row.len(), self.columns.len(), "a row has one cell per column");
        self.rows.push(row);
    }

    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let header: Vec<&str> = self.columns.iter().map(|(h, _)| *h).collect();
        for cells in std::iter::once(header).chain(self.rows.iter().map(|r| r.iter().map(String::as_str).collect())) {
            let mut line = String::new();
            let last = cells.len().saturating_sub(1);
            for (i, ((cell, (_, align)), w)) in cells.iter().zip(&self.columns).zip(&widths).enumerate() {
                let pad = " ".repeat(w - width(cell));
                match align {
                    Align::Right => line.extend([pad.as_str(), cell]),
                    Align::Left if i == last => line.push_str(cell),
                    Align::Left => line.extend([*cell, pad.as_str()]),
                }
                if i != last {
                    line.push_str("  ");
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&[("SEQ", Align::Right), ("ACTOR", Align::Left), ("REASON", Align::Left)]);
        t.row(["7", "nightly-sales-report/deliver", "found in namespace finance"]);
        t.row(["12", "a/b", ""]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SEQ  ACTOR                         REASON\n\
             \x20 7  nightly-sales-report/deliver  found in namespace finance\n\
             \x2012  a/b\n"
        );
    }

    #[test]
    fn a_cell_cannot_move_the_cursor_or_start_a_line() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        t.row(["x\u{1b}[2K\rok", "y\n  7  forged\tline\u{9b}"]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("x^[[2K^Mok  y^J  7  forged^Iline<U+009B>"), "{text}");
    }
}
