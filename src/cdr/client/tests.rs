//! The client against a small axum server on a loopback port, started per test.

use std::sync::Mutex;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode as Code};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::*;
use crate::domain::cdr::CdrStatus;

/// What the server saw: each request's path and query, and its headers.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

const STATUS_PATH: &str = "/cds-au/v1/discovery/status";
const OUTAGES_PATH: &str = "/cds-au/v1/discovery/outages";
const REGISTER_ROUTE: &str = "/cdr-register/v1/banking/data-holders/brands/summary";

/// Serves `router` on `127.0.0.1:0`; its base URL and what it saw.
async fn start(router: Router) -> (Url, Seen) {
    let seen = Seen::default();
    let kept = seen.clone();
    let router = router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let kept = kept.clone();
        async move {
            kept.lock()
                .unwrap()
                .push((request.uri().to_string(), request.headers().clone()));
            next.run(request).await
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (Url::parse(&format!("http://{addr}/")).unwrap(), seen)
}

fn options(register_url: &Url) -> CdrOptions {
    CdrOptions {
        register_url: register_url.join("cdr-register/v1").unwrap(),
        timeout: Duration::from_secs(5),
        max_requests_per_second: NonZeroU32::new(1_000).unwrap(),
    }
}

fn client(base: &Url) -> CdrClient {
    CdrClient::new(options(base)).unwrap()
}

fn json_response(body: serde_json::Value) -> Response {
    axum::Json(body).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn register_body() -> serde_json::Value {
    json!({
        "data": [
            {"dataHolderBrandId": "b-1", "brandName": "Big Bank", "publicBaseUri": "https://api.big.example",
             "abn": "12 345 678 901", "lastUpdated": "2026-03-01T10:00:00+10:00", "industries": ["banking"]},
            {"brandName": "Nameless"},
            {"dataHolderBrandId": "b-2", "brandName": "Small Bank", "publicBaseUri": null}
        ],
        "links": {"self": "x"}, "meta": {}
    })
}

#[tokio::test]
async fn the_register_is_asked_with_x_v_2_and_the_user_agent_and_brands_without_an_id_are_skipped()
{
    let router = Router::new().route(
        REGISTER_ROUTE,
        get(|| async { ([(header::ETAG, "\"v1\"")], json_response(register_body())) }),
    );
    let (base, seen) = start(router).await;
    let read = client(&base).register(None).await.unwrap();
    let RegisterRead::Fresh {
        brands,
        etag,
        skipped,
    } = read
    else {
        panic!("expected fresh brands, got {read:?}");
    };
    assert_eq!(skipped, 1);
    assert_eq!(etag.as_deref(), Some("\"v1\""));
    let ids: Vec<&str> = brands.iter().map(|b| b.brand_id.as_str()).collect();
    assert_eq!(ids, ["b-1", "b-2"]);
    assert_eq!(brands[0].abn.as_deref(), Some("12345678901"));

    let seen = seen.lock().unwrap();
    let (path, headers) = &seen[0];
    assert_eq!(path, REGISTER_ROUTE);
    assert_eq!(header(headers, "x-v"), Some("2"));
    assert_eq!(header(headers, "accept"), Some("application/json"));
    assert_eq!(header(headers, "if-none-match"), None);
    let agent = header(headers, "user-agent").unwrap();
    assert!(
        agent.starts_with(&format!("basiq-health/{}", env!("CARGO_PKG_VERSION"))),
        "{agent}"
    );
}

#[tokio::test]
async fn the_register_answers_not_modified_when_the_etag_matches() {
    let router = Router::new().route(
        REGISTER_ROUTE,
        get(|headers: HeaderMap| async move {
            if header(&headers, "if-none-match") == Some("\"v2\"") {
                Code::NOT_MODIFIED.into_response()
            } else {
                ([(header::ETAG, "\"v2\"")], json_response(register_body())).into_response()
            }
        }),
    );
    let (base, seen) = start(router).await;
    let client = client(&base);
    assert_eq!(
        client.register(Some("\"v2\"")).await.unwrap(),
        RegisterRead::NotModified
    );
    let stale = client.register(Some("\"v1\"")).await.unwrap();
    assert!(
        matches!(&stale, RegisterRead::Fresh { etag: Some(tag), .. } if tag == "\"v2\""),
        "{stale:?}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(header(&seen[0].1, "if-none-match"), Some("\"v2\""));
    assert_eq!(header(&seen[1].1, "if-none-match"), Some("\"v1\""));
}

#[tokio::test]
async fn a_304_the_client_did_not_ask_for_is_a_status_error() {
    let router = Router::new().route(REGISTER_ROUTE, get(|| async { Code::NOT_MODIFIED }));
    let (base, _) = start(router).await;
    assert_eq!(
        client(&base).register(None).await.unwrap_err(),
        CdrError::Status(304)
    );
}

#[tokio::test]
async fn discovery_urls_keep_the_base_path_and_send_x_v_1() {
    let router = Router::new()
        .route(
            &format!("/cdr/abc{STATUS_PATH}"),
            get(|| async {
                json_response(
                    json!({"data": {"status": "OK", "updateTime": "2026-03-01T10:00:00+11:00"}}),
                )
            }),
        )
        .route(
            &format!("/cdr/abc{OUTAGES_PATH}"),
            get(|| async { json_response(json!({"data": {"outages": []}})) }),
        );
    let (root, seen) = start(router).await;
    let client = client(&root);
    for base in ["cdr/abc", "cdr/abc/", "cdr/abc?token=t#frag"] {
        let base = root.join(base).unwrap();
        let status = client.status(&base).await.unwrap();
        assert_eq!(status.status, CdrStatus::Ok);
        assert_eq!(
            status.update_time,
            Some("2026-02-28T23:00:00Z".parse().unwrap())
        );
        assert_eq!(client.outages(&base).await.unwrap(), vec![]);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6);
    for (i, (path, headers)) in seen.iter().enumerate() {
        let expected = if i % 2 == 0 {
            STATUS_PATH
        } else {
            OUTAGES_PATH
        };
        assert_eq!(path, &format!("/cdr/abc{expected}"));
        assert_eq!(header(headers, "x-v"), Some("1"));
        assert_eq!(header(headers, "accept"), Some("application/json"));
    }
}

#[tokio::test]
async fn a_status_without_an_explanation_reads_as_none() {
    let router = Router::new().route(
        STATUS_PATH,
        get(|| async { json_response(json!({"data": {"status": "UNAVAILABLE"}})) }),
    );
    let (base, _) = start(router).await;
    let status = client(&base).status(&base).await.unwrap();
    assert_eq!(status.status, CdrStatus::Unavailable);
    assert_eq!(status.explanation, None);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_error() {
    let router = Router::new().route(
        STATUS_PATH,
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            json_response(json!({"data": {"status": "OK"}}))
        }),
    );
    let (base, _) = start(router).await;
    let client = CdrClient::new(CdrOptions {
        timeout: Duration::from_millis(200),
        ..options(&base)
    })
    .unwrap();
    let err = client.status(&base).await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    assert!(err.is_timeout());
}

#[tokio::test]
async fn refusals_and_html_error_pages_are_status_errors() {
    let router = Router::new()
        .route(
            STATUS_PATH,
            get(|| async { (Code::NOT_ACCEPTABLE, json_response(json!({"errors": [{"code": "urn:au-cds:error:cds-all:Header/UnsupportedVersion"}]}))) }),
        )
        .route(
            OUTAGES_PATH,
            get(|| async { (Code::SERVICE_UNAVAILABLE, "busy") }),
        )
        .fallback(|| async {
            (
                Code::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Not Found</body></html>",
            )
        });
    let (base, _) = start(router).await;
    let client = client(&base);
    assert_eq!(
        client.status(&base).await.unwrap_err(),
        CdrError::Status(406)
    );
    assert_eq!(
        client.outages(&base).await.unwrap_err(),
        CdrError::Status(503)
    );
    let elsewhere = base.join("moved/").unwrap();
    let err = client.status(&elsewhere).await.unwrap_err();
    assert_eq!(err, CdrError::Status(404));
    assert_eq!(err.kind(), "status");
}

#[tokio::test]
async fn malformed_json_and_html_with_a_200_are_decode_errors() {
    let router = Router::new()
        .route(
            STATUS_PATH,
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"data\": {\"status\": ",
                )
            }),
        )
        .route(
            OUTAGES_PATH,
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html>maintenance</html>",
                )
            }),
        )
        .route(
            REGISTER_ROUTE,
            get(|| async { json_response(json!({"data": {}})) }),
        );
    let (base, _) = start(router).await;
    let client = client(&base);
    for err in [
        client.status(&base).await.unwrap_err(),
        client.outages(&base).await.unwrap_err(),
        client.register(None).await.unwrap_err(),
    ] {
        assert!(matches!(err, CdrError::Decode(_)), "{err:?}");
        assert_eq!(err.kind(), "decode");
    }
}

#[tokio::test]
async fn a_body_over_the_cap_is_too_large_whether_announced_or_streamed() {
    let padded = |size: usize| {
        let mut body = String::from("{\"data\": {\"status\": \"OK\"}}");
        body.push_str(&" ".repeat(size - body.len()));
        body
    };
    let at_cap = padded(DISCOVERY_BODY_LIMIT);
    let over_cap = padded(DISCOVERY_BODY_LIMIT + 1);
    let router = Router::new()
        .route(STATUS_PATH, get(move || async move { over_cap }))
        .route(
            OUTAGES_PATH,
            get(|| async {
                // Chunked, no Content-Length: the cap is found while reading.
                let chunks =
                    (0..100).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 4096])));
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        .route(
            "/at-cap/cds-au/v1/discovery/status",
            get(move || async move { at_cap }),
        );
    let (base, _) = start(router).await;
    let client = client(&base);
    assert_eq!(client.status(&base).await.unwrap_err(), CdrError::TooLarge);
    assert_eq!(client.outages(&base).await.unwrap_err(), CdrError::TooLarge);
    let at_cap = client.status(&base.join("at-cap").unwrap()).await.unwrap();
    assert_eq!(at_cap.status, CdrStatus::Ok);
}

#[tokio::test]
async fn a_plain_http_base_off_loopback_is_not_pollable_and_takes_no_permit() {
    let (base, _) = start(Router::new()).await;
    let client = CdrClient::new(CdrOptions {
        max_requests_per_second: NonZeroU32::new(1).unwrap(),
        ..options(&base)
    })
    .unwrap();
    for off in [
        "http://example.com",
        "http://10.0.0.1/cdr",
        "ftp://127.0.0.1/",
    ] {
        let off = Url::parse(off).unwrap();
        assert_eq!(
            client.status(&off).await.unwrap_err(),
            CdrError::NotPollable
        );
        assert_eq!(
            client.outages(&off).await.unwrap_err(),
            CdrError::NotPollable
        );
    }
    let insecure_register = CdrClient::new(CdrOptions {
        register_url: Url::parse("http://register.example/cdr-register/v1").unwrap(),
        ..options(&base)
    })
    .unwrap();
    assert_eq!(
        insecure_register.register(None).await.unwrap_err().kind(),
        "not-pollable"
    );
    // Nothing was sent: the one permit of this second is still there.
    assert!(client.inner.limiter.check().is_ok());
}

#[test]
fn only_https_or_plain_http_to_loopback_is_pollable() {
    for (url, ok) in [
        ("https://api.bank.example/cds", true),
        ("https://127.0.0.1/", true),
        ("http://127.0.0.1:8080/cdr", true),
        ("http://127.9.8.7/", true),
        ("http://localhost:3000/", true),
        ("http://LOCALHOST/", true),
        ("http://[::1]:8080/", true),
        ("http://example.com/", false),
        ("http://10.0.0.1/", false),
        ("http://192.168.1.10/", false),
        ("http://localhost.example.com/", false),
        ("http://[::ffff:127.0.0.1]/", false),
        ("ftp://127.0.0.1/", false),
        ("file:///etc/passwd", false),
        ("data:text/plain,hello", false),
    ] {
        assert_eq!(pollable(&Url::parse(url).unwrap()), ok, "{url}");
        assert_eq!(CdrClient::pollable(&Url::parse(url).unwrap()), ok, "{url}");
    }
}

#[tokio::test]
async fn unreadable_outages_are_skipped_and_counted() {
    let router = Router::new().route(
        OUTAGES_PATH,
        get(|| async {
            json_response(json!({"data": {"outages": [
                {"outageTime": "2026-03-01T01:00:00+10:00", "duration": "PT2H", "isPartial": false, "explanation": "core upgrade"},
                {"outageTime": "2026-03-01T01:00:00+10:00", "duration": "two hours", "explanation": "?"},
                {"outageTime": "tonight", "duration": "PT1H", "explanation": "?"}
            ]}}))
        }),
    );
    let (base, _) = start(router).await;
    let client = client(&base);
    let outages = client.outages(&base).await.unwrap();
    assert_eq!(
        outages,
        vec![Maintenance {
            starts_at: "2026-02-28T15:00:00Z".parse().unwrap(),
            ends_at: "2026-02-28T17:00:00Z".parse().unwrap(),
            partial: false,
            explanation: "core upgrade".into(),
        }]
    );
    assert_eq!(client.unreadable_outages(), 2);
    client.outages(&base).await.unwrap();
    assert_eq!(client.clone().unreadable_outages(), 4);
}

#[tokio::test]
async fn redirects_are_followed_on_loopback_but_never_off_to_plain_http_and_at_most_three_times() {
    let router = Router::new()
        .route(
            "/old/cds-au/v1/discovery/status",
            get(|| async { axum::response::Redirect::temporary("/cds-au/v1/discovery/status") }),
        )
        .route(
            STATUS_PATH,
            get(|| async { json_response(json!({"data": {"status": "OK"}})) }),
        )
        .route(
            "/away/cds-au/v1/discovery/status",
            get(|| async {
                axum::response::Redirect::temporary("http://example.com/cds-au/v1/discovery/status")
            }),
        )
        .route(
            "/loop/cds-au/v1/discovery/status",
            get(|| async {
                axum::response::Redirect::temporary("/loop/cds-au/v1/discovery/status")
            }),
        );
    let (base, seen) = start(router).await;
    let client = client(&base);
    let moved = client.status(&base.join("old").unwrap()).await.unwrap();
    assert_eq!(moved.status, CdrStatus::Ok);
    assert_eq!(
        client
            .status(&base.join("away").unwrap())
            .await
            .unwrap_err(),
        CdrError::Status(307)
    );
    let looped = client
        .status(&base.join("loop").unwrap())
        .await
        .unwrap_err();
    assert_eq!(looped.kind(), "transport", "{looped}");
    let loops = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/loop"))
        .count();
    assert_eq!(loops, MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn a_transport_error_names_neither_the_url_nor_its_query() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let base = Url::parse(&format!("http://{addr}/secret-path?token=hunter2")).unwrap();
    let client = client(&base);
    let err = client.status(&base).await.unwrap_err();
    assert_eq!(err.kind(), "transport", "{err}");
    let text = err.to_string();
    for leak in ["hunter2", "token", "secret-path"] {
        assert!(!text.contains(leak), "{text}");
    }
}

#[test]
fn the_pace_is_the_configured_quota_and_every_clone_shares_it() {
    // Governor's quota of n per second lets a burst of n through at once, then refuses
    // until a permit comes back (a second later for n = 1, a third of one for n = 3):
    // checked without waiting, so only a stall of a third of a second between two of these
    // lines could upset it; no elapsed time is measured.
    let base = Url::parse("https://register.example/").unwrap();
    let three = CdrClient::new(CdrOptions {
        max_requests_per_second: NonZeroU32::new(3).unwrap(),
        ..options(&base)
    })
    .unwrap();
    for _ in 0..3 {
        assert!(three.inner.limiter.check().is_ok());
    }
    assert!(three.inner.limiter.check().is_err());

    let one = CdrClient::new(CdrOptions {
        max_requests_per_second: NonZeroU32::new(1).unwrap(),
        ..options(&base)
    })
    .unwrap();
    let clone = one.clone();
    assert!(one.inner.limiter.check().is_ok());
    assert!(clone.inner.limiter.check().is_err());
}

#[test]
fn the_options_debug_hides_the_register_url_query() {
    let base = Url::parse("https://register.example/").unwrap();
    let mut options = options(&base);
    options.register_url = Url::parse("https://register.example/v1?key=hunter2").unwrap();
    let shown = format!("{:?}", CdrClient::new(options).unwrap());
    assert!(!shown.contains("hunter2"), "{shown}");
}
