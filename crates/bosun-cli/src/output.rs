//! Terminal output: aligned tables, and colour only when writing to a terminal.

use std::io::IsTerminal;

use owo_colors::OwoColorize;

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

pub fn error_label() -> String {
    if std::io::stderr().is_terminal() {
        "error:".red().bold().to_string()
    } else {
        "error:".to_string()
    }
}

/// Prints rows under headers with columns padded to line up (3 spaces apart, as kubectl).
pub fn print_table(headers: &[String], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

pub fn render_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i != last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(headers);
    for row in rows {
        line(row);
    }
    out
}

/// Colours for log prefixes, cycled per stream.
pub fn paint(text: &str, index: usize) -> String {
    if !stdout_is_tty() {
        return text.to_string();
    }
    match index % 6 {
        0 => text.cyan().to_string(),
        1 => text.green().to_string(),
        2 => text.yellow().to_string(),
        3 => text.magenta().to_string(),
        4 => text.blue().to_string(),
        _ => text.red().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let out = render_table(
            &["NAME".into(), "READY".into()],
            &[
                vec!["web-1".into(), "1/1".into()],
                vec!["a".into(), "0/1".into()],
            ],
        );
        assert_eq!(out, "NAME    READY\nweb-1   1/1\na       0/1\n");
    }
}
