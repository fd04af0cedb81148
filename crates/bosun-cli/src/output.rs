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

/// The line kubectl prints for a failed command: `Error from server (NotFound): ...`
/// for a Kubernetes `Status` (with the context added on the way, outermost first),
/// `error: ...` for everything else.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut context = Vec::new();
    for cause in e.chain() {
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            return status_message(&context, status);
        }
        context.push(cause.to_string());
    }
    format!("{} {e:#}", error_label())
}

fn status_message(context: &[String], s: &kube::core::Status) -> String {
    // kube builds a Status of its own when the body was not one (a proxy's text page).
    let not_status = s.reason == "Failed to parse error data";
    let reason = if not_status {
        reason_for_code(s.code).unwrap_or_default()
    } else {
        s.reason.as_str()
    };
    let mut message = s.message.clone();
    if message.is_empty() || not_status && message.starts_with('<') {
        message = generic_message(s.code);
    }
    if reason == "Unauthorized" {
        return format!(
            "{} You must be logged in to the server ({message})",
            error_label()
        );
    }
    let mut text = context.to_vec();
    text.push(message);
    let text = text.join(": ");
    if reason.is_empty() {
        format!("Error from server: {text}")
    } else {
        format!("Error from server ({reason}): {text}")
    }
}

/// The reason Kubernetes gives to a bare HTTP code (apimachinery's `NewGenericServerResponse`).
fn reason_for_code(code: u16) -> Option<&'static str> {
    Some(match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => return None,
    })
}

fn generic_message(code: u16) -> String {
    match code {
        404 => "the server could not find the requested resource".into(),
        401 => "Unauthorized".into(),
        403 => "forbidden".into(),
        _ => format!(
            "an error on the server has prevented the request from succeeding (code {code})"
        ),
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

    fn api_error(code: u16, reason: &str, message: &str) -> anyhow::Error {
        let s = kube::core::Status::failure(message, reason).with_code(code);
        kube::Error::Api(s.boxed()).into()
    }

    #[test]
    fn server_errors_read_like_kubectl() {
        let e = api_error(404, "NotFound", r#"deployments.apps "x" not found"#);
        assert_eq!(
            error_message(&e),
            r#"Error from server (NotFound): deployments.apps "x" not found"#
        );
        let e = api_error(
            422,
            "Invalid",
            "Deployment.apps \"x\" is invalid: spec.replicas: Invalid value: -1",
        )
        .context("error when applying \"web.yaml\"");
        assert_eq!(
            error_message(&e),
            "Error from server (Invalid): error when applying \"web.yaml\": Deployment.apps \"x\" is invalid: spec.replicas: Invalid value: -1"
        );
        let e = api_error(500, "", "boom");
        assert_eq!(error_message(&e), "Error from server: boom");
        let e = api_error(404, "Failed to parse error data", "");
        assert_eq!(
            error_message(&e),
            "Error from server (NotFound): the server could not find the requested resource"
        );
        assert!(!error_message(&e).contains("Status {"));
        let e = api_error(401, "Unauthorized", "Unauthorized");
        assert_eq!(
            error_message(&e),
            "error: You must be logged in to the server (Unauthorized)"
        );
        let e = anyhow::anyhow!("no objects found").context("reading x.yaml");
        assert_eq!(error_message(&e), "error: reading x.yaml: no objects found");
    }

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
