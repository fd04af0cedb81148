//! bosun's web console: server-rendered HTML pages mounted on the console listener next to
//! the Prometheus API.
//!
//! Every read and every action goes to the Kubernetes API with the signed-in user's own
//! credentials (a bearer token, or the token or client certificate of an uploaded
//! kubeconfig), so RBAC decides what each person sees and may do; the console itself
//! holds no privileges. Sessions live in memory (`session`), actions carry a CSRF token,
//! charts are SVG drawn on the server from PromQL answers (`chart`, `prom`), and pages
//! refresh themselves over server-sent events (`live`) with one small script
//! (`static/console.js`).

mod actions;
mod chart;
mod html;
mod live;
mod pages;
mod prom;
mod session;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

pub use axum::Router;
pub use prom::Prom;
use session::{Session, Sessions};

/// Where the console finds the API server and the metrics.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// The API server's URL, e.g. `https://127.0.0.1:6443`.
    pub api_url: String,
    /// PEM of the CA that signed the API server's certificate.
    pub ca_pem: String,
    /// Base URL of the Prometheus API (`/api/v1/...`), e.g. `http://127.0.0.1:9090`.
    pub prometheus_url: String,
}

pub(crate) struct Console {
    cfg: ConsoleConfig,
    sessions: Sessions,
    prom: Prom,
}

pub(crate) type AppState = Arc<Console>;

/// The console's routes; merge them into the router that serves the Prometheus API.
pub fn router(cfg: ConsoleConfig) -> Router {
    let prom = Prom::new(&cfg.prometheus_url);
    let state = Arc::new(Console {
        cfg,
        sessions: Sessions::default(),
        prom,
    });
    Router::new()
        .route("/", get(page))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/static/console.js", get(script))
        .route("/static/console.css", get(style))
        .route("/live", get(live::fragments))
        .route("/ns/{ns}/pods/{name}/logs", get(live::logs))
        .route("/ns/{ns}/deployments/{name}/scale", post(actions::scale))
        .route("/ns/{ns}/deployments/{name}/undo", post(actions::undo))
        .route("/ns/{ns}", get(page))
        .route("/ns/{ns}/deployments/{name}", get(page))
        .route("/ns/{ns}/pods/{name}", get(page))
        .route("/ns/{ns}/services/{name}", get(page))
        .route("/ns/{ns}/httproutes/{name}", get(page))
        .route("/nodes", get(page))
        .route("/traces", get(page))
        .route("/traces/{id}", get(page))
        .route("/alerts", get(page))
        .with_state(state)
}

const SCRIPT: &str = include_str!("../static/console.js");
const STYLE: &str = include_str!("../static/console.css");

async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    static_file("text/css; charset=utf-8", STYLE)
}

fn static_file(ty: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// An error to show the user: the API's own status code and message where there is one.
#[derive(Debug)]
pub(crate) struct UiError {
    pub code: StatusCode,
    pub message: String,
}

impl UiError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(what: impl Into<String>) -> UiError {
        UiError::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<kube::Error> for UiError {
    fn from(e: kube::Error) -> UiError {
        match e {
            kube::Error::Api(s) => UiError {
                code: StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
                message: if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                },
            },
            other => UiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the API server did not answer: {other}"),
            ),
        }
    }
}

impl From<anyhow::Error> for UiError {
    fn from(e: anyhow::Error) -> UiError {
        UiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}"))
    }
}

pub(crate) type UiResult<T> = Result<T, UiError>;

/// Pages: GET of a path the `pages` module knows, for a signed-in user.
async fn page(State(app): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(s) = app.sessions.from_headers(&headers) else {
        return to_login(&uri);
    };
    let query = uri.query().unwrap_or("");
    let flash = pages::flash(query);
    match pages::render(&app, &s, uri.path(), query).await {
        Ok(p) => html::document(&s, &p, uri.path(), query, flash.as_ref(), None).into_response(),
        Err(e) if e.code == StatusCode::UNAUTHORIZED => {
            app.sessions.remove(&s.id);
            to_login(&uri)
        }
        Err(e) => {
            let p = pages::Page::new("Error", String::new());
            (
                e.code,
                html::document(&s, &p, uri.path(), query, None, Some(&e)),
            )
                .into_response()
        }
    }
}

fn to_login(uri: &Uri) -> Response {
    let next: String = form_urlencoded::byte_serialize(
        uri.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    )
    .collect();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

#[derive(Deserialize, Default)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(Query(q): Query<NextQuery>) -> Response {
    html::login_page(q.next.as_deref().unwrap_or("/"), None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    kubeconfig: String,
    #[serde(default)]
    next: String,
}

async fn login(State(app): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(&f.next);
    let creds = if !f.token.trim().is_empty() {
        session::Credentials::Token(f.token.trim().to_string())
    } else if !f.kubeconfig.trim().is_empty() {
        match session::credentials_from_kubeconfig(&f.kubeconfig) {
            Ok(c) => c,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    html::login_page(next, Some(&format!("kubeconfig: {e}"))),
                )
                    .into_response();
            }
        }
    } else {
        return (
            StatusCode::BAD_REQUEST,
            html::login_page(next, Some("token: paste a bearer token or a kubeconfig")),
        )
            .into_response();
    };
    match session::sign_in(&app.cfg, creds).await {
        Ok((client, user)) => {
            let s = app.sessions.create(client, user);
            let mut r = Redirect::to(next).into_response();
            if let Ok(v) = HeaderValue::from_str(&session::cookie(&s.id)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => (
            if e.code == StatusCode::UNAUTHORIZED {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_GATEWAY
            },
            html::login_page(next, Some(&e.message)),
        )
            .into_response(),
    }
}

/// Only local absolute paths are followed after login (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(s) = app.sessions.from_headers(&headers)
        && s.csrf_ok(&f.csrf, &headers)
    {
        app.sessions.remove(&s.id);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(session::CLEAR_COOKIE),
    );
    r
}

/// The signed-in session or a redirect to the login page.
pub(crate) fn require(
    app: &Console,
    headers: &HeaderMap,
    back: &str,
) -> Result<Arc<Session>, Response> {
    app.sessions.from_headers(headers).ok_or_else(|| {
        Redirect::to(&format!(
            "/login?next={}",
            form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
        ))
        .into_response()
    })
}

pub(crate) type NsName = Path<(String, String)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_console() {
        assert_eq!(safe_next("/ns/default"), "/ns/default");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil"), "/");
    }

    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> Router {
        router(ConsoleConfig {
            // Nothing listens on port 1: sign-in cannot reach an API server.
            api_url: "https://127.0.0.1:1".into(),
            ca_pem: String::new(),
            prometheus_url: "http://127.0.0.1:1".into(),
        })
    }

    async fn call(req: http::Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = app().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn form(path: &str, body: &str) -> http::Request<Body> {
        http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn pages_without_a_session_go_to_sign_in() {
        for path in [
            "/",
            "/ns/default/deployments/web?range=1h",
            "/nodes",
            "/live?path=/",
        ] {
            let (code, h, _) = call(http::Request::get(path).body(Body::empty()).unwrap()).await;
            assert_eq!(code, StatusCode::SEE_OTHER, "{path}");
            let to = h[header::LOCATION].to_str().unwrap();
            assert!(to.starts_with("/login?next=%2F"), "{path}: {to}");
        }
        let (code, h, _) = call(form(
            "/ns/default/deployments/web/scale",
            "replicas=3&csrf=x",
        ))
        .await;
        assert_eq!(code, StatusCode::SEE_OTHER);
        assert!(h[header::LOCATION].to_str().unwrap().starts_with("/login"));
        // A cookie of no known session is no session.
        let req = http::Request::get("/")
            .header(header::COOKIE, "bosun_console=forged")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(req).await.0, StatusCode::SEE_OTHER);
    }

    #[tokio::test]
    async fn sign_in_form_and_its_errors() {
        let (code, _, body) = call(
            http::Request::get("/login?next=/nodes")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains(r#"value="/nodes""#) && body.contains(r#"id="signin""#));
        let (code, _, body) = call(form("/login", "token=&kubeconfig=")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("token: paste a bearer token"), "{body}");
        let (code, _, body) = call(form(
            "/login",
            "kubeconfig=apiVersion%3A+v1%0Akind%3A+Config%0A",
        ))
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("kubeconfig: current-context is not set"),
            "{body}"
        );
        let (code, h, body) = call(form("/login", "token=abc")).await;
        assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
        assert!(h.get(header::SET_COOKIE).is_none());
        assert!(body.contains(r#"id="error""#));
    }

    #[tokio::test]
    async fn script_and_style_are_served_small() {
        let (code, h, js) = call(
            http::Request::get("/static/console.js")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(
            js.contains("EventSource") && js.len() < 4096,
            "{}",
            js.len()
        );
        let (_, _, css) = call(
            http::Request::get("/static/console.css")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(css.len() < 4096);
    }

    #[test]
    fn api_errors_keep_code_and_message() {
        let st: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": 403, "message": "deployments.apps \"web\" is forbidden", "reason": "Forbidden"
        }))
        .unwrap();
        let e = UiError::from(kube::Error::Api(Box::new(st)));
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert!(e.message.contains("forbidden"));
    }
}
