//! Parser for the Prometheus text exposition format (0.0.4) and OpenMetrics text, as
//! scraped from `/metrics` endpoints: `name{label="value",...} value [timestamp]` lines,
//! `#` comments, `# EOF`.

/// One sample line: the metric name, its labels (unsorted) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses a whole exposition; lines that do not parse are skipped and counted.
pub fn parse(text: &str) -> (Vec<Sample>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(s) => out.push(s),
            None => bad += 1,
        }
    }
    (out, bad)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = *chars.peek()?;
            if c == '}' {
                rest = &r[start + 1..];
                break;
            }
            let eq = r[start..].find('=')? + start;
            let lname = r[start..eq].trim().to_string();
            let after = r[eq + 1..].trim_start();
            let off = r.len() - after.len();
            if !after.starts_with('"') {
                return None;
            }
            let mut value = String::new();
            let mut it = r[off + 1..].char_indices();
            let mut end = None;
            while let Some((i, c)) = it.next() {
                match c {
                    '\\' => match it.next()?.1 {
                        'n' => value.push('\n'),
                        '"' => value.push('"'),
                        '\\' => value.push('\\'),
                        o => {
                            value.push('\\');
                            value.push(o)
                        }
                    },
                    '"' => {
                        end = Some(off + 1 + i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end?;
            labels.push((lname, value));
            chars = r.char_indices().peekable();
            while chars.peek().is_some_and(|(i, _)| *i < end) {
                chars.next();
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_and_openmetrics() {
        let text = r#"# HELP http_requests_total The total.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9
metric_without_labels 12.47
bosun_gateway_request_duration_seconds_bucket{route="",service="",le="+Inf"} 4
weird{ a = "x" , } NaN
# EOF
"#;
        let (s, bad) = parse(text);
        assert_eq!(bad, 0);
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "http_requests_total");
        assert_eq!(
            s[0].labels,
            vec![
                ("method".into(), "post".into()),
                ("code".into(), "200".into())
            ]
        );
        assert_eq!(s[0].value, 1027.0);
        assert_eq!(s[2].labels[0].1, r"C:\DIR\FILE.TXT");
        assert_eq!(s[2].labels[1].1, "Cannot find file:\n\"FILE.TXT\"");
        assert_eq!(s[3].labels, vec![]);
        assert_eq!(s[4].labels[2], ("le".into(), "+Inf".into()));
        assert!(s[5].value.is_nan());
        assert_eq!(s[5].labels, vec![("a".into(), "x".into())]);
        let (_, bad) = parse("broken{a=\"x\" 1\nok 1\n");
        assert_eq!(bad, 1);
    }
}
