//! The page frame, the login page and small HTML helpers.

use std::fmt::Write;

use axum::response::Html;

use crate::UiError;
use crate::pages::Page;
use crate::session::Session;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn head(title: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{} · bosun</title><link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>"#,
        esc(title)
    )
}

/// A whole page: header with navigation, a flash message or error, and the page's body
/// in `<main>`, which the script keeps current over `/live` when the page is live.
pub fn document(
    s: &Session,
    p: &Page,
    path: &str,
    query: &str,
    flash: Option<&String>,
    error: Option<&UiError>,
) -> Html<String> {
    let mut out = head(&p.title);
    let _ = write!(
        out,
        r#"<body><header><a class="brand" href="/">bosun</a><nav><a href="/">Namespaces</a><a href="/nodes">Nodes</a><a href="/traces">Traces</a><a href="/alerts">Alerts</a></nav><form method="post" action="/logout" class="who"><span id="user">{}</span><input type="hidden" name="csrf" value="{}"><button>Sign out</button></form></header>"#,
        esc(&s.user),
        esc(&s.csrf)
    );
    if let Some(f) = flash {
        let _ = write!(out, r#"<p class="flash" id="flash">{}</p>"#, esc(f));
    }
    if let Some(e) = error {
        let _ = write!(
            out,
            r#"<p class="error" id="error"><b>{} {}</b> {}</p>"#,
            e.code.as_u16(),
            esc(e.code.canonical_reason().unwrap_or("")),
            esc(&e.message)
        );
    }
    let live = if p.live {
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        format!(r#" data-live="/live?path={}""#, enc(&target))
    } else {
        String::new()
    };
    let _ = write!(
        out,
        r#"<main id="main"{live}>{}</main></body></html>"#,
        p.body
    );
    Html(out)
}

pub fn login_page(next: &str, error: Option<&str>) -> Html<String> {
    let mut out = head("Sign in");
    out.push_str(r#"<body class="login"><main><h1>bosun</h1>"#);
    if let Some(e) = error {
        let _ = write!(out, r#"<p class="error" id="error">{}</p>"#, esc(e));
    }
    let _ = write!(
        out,
        r#"<form method="post" action="/login" id="login"><input type="hidden" name="next" value="{}">
<label for="token">Bearer token</label><textarea id="token" name="token" rows="3" autocomplete="off" spellcheck="false"></textarea>
<p>or a kubeconfig (its current user's token or client certificate is used):</p>
<input type="file" id="kubeconfig-file" accept=".yaml,.yml,.conf,*"><textarea id="kubeconfig" name="kubeconfig" rows="4" spellcheck="false" placeholder="paste a kubeconfig"></textarea>
<button type="submit" id="signin">Sign in</button></form></main></body></html>"#,
        esc(next)
    );
    Html(out)
}

/// A table with a header row; cells are HTML already.
pub fn table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return r#"<p class="muted">None.</p>"#.into();
    }
    let mut s = format!(r#"<table id="{id}"><thead><tr>"#);
    for h in headers {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

pub fn link(href: &str, text: &str) -> String {
    format!(r#"<a href="{}">{}</a>"#, esc(href), esc(text))
}

/// A progress bar of `done` out of `total`.
pub fn progress(done: i32, total: i32) -> String {
    let pct = if total > 0 {
        (done.max(0) as f64 / total as f64 * 100.0).min(100.0)
    } else {
        100.0
    };
    format!(r#"<span class="bar"><span style="width:{pct:.0}%"></span></span>"#)
}

/// How long ago `t` was, as kubectl prints ages.
pub fn age(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = (jiff::Timestamp::now().as_second() - t.0.as_second()).max(0);
    human_duration(secs)
}

pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(enc("/ns/a b?x=1"), "%2Fns%2Fa+b%3Fx%3D1");
    }

    #[test]
    fn tables_and_bars() {
        assert!(table("t", &["A"], &[]).contains("None."));
        let t = table("t", &["A<"], &[vec!["<b>x</b>".into()]]);
        assert!(t.contains("<th>A&lt;</th>") && t.contains("<td><b>x</b></td>"));
        assert!(progress(1, 4).contains("width:25%"));
        assert!(progress(5, 0).contains("width:100%"));
        assert_eq!(human_duration(90), "90s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn login_page_has_the_form() {
        let h = login_page("/ns/\"x", Some("bad <token>")).0;
        assert!(h.contains(r#"value="/ns/&quot;x""#));
        assert!(h.contains("bad &lt;token&gt;"));
        assert!(h.contains(r#"name="token""#) && h.contains(r#"name="kubeconfig""#));
    }
}
