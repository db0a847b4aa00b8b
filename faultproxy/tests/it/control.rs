//! The control API, called through its router (the binary test calls it over HTTP).

use bytes::Bytes;
use faultproxy::Stats;
use faultproxy::control::{Proxies, route};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Response};

use crate::{client, proxy_to_echo, send};

async fn body_json(response: Response<Full<Bytes>>) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("full body").to_bytes();
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

#[tokio::test]
async fn control_api_round_trip() {
    let mut proxies = Proxies::new();
    proxies.insert("dynamodb".to_owned(), proxy_to_echo().await);
    let rules = br#"[{"operation": "GetItem", "fault": {"kind": "throttle"}}]"#;
    let (status, body) = body_json(route(&proxies, &Method::PUT, "/proxies/dynamodb/rules", rules)).await;
    assert_eq!((status, body["rules"].as_u64()), (200, Some(1)));

    let (status, _, _) = send(&client(), &proxies["dynamodb"], Some("DynamoDB_20120810.GetItem"), "{}").await.expect("answer");
    assert_eq!(status, 400);
    let (status, body) = body_json(route(&proxies, &Method::GET, "/proxies/dynamodb/stats", b"")).await;
    let stats: Stats = serde_json::from_value(body).expect("stats JSON");
    assert_eq!((status, stats.operations["GetItem"].throttle), (200, 1));
    let (_, all) = body_json(route(&proxies, &Method::GET, "/stats", b"")).await;
    assert_eq!(all["dynamodb"]["total"]["throttle"], 1);

    let (status, _) = body_json(route(&proxies, &Method::DELETE, "/proxies/dynamodb/rules", b"")).await;
    assert_eq!(status, 200);
    let (_, listed) = body_json(route(&proxies, &Method::GET, "/proxies/dynamodb/rules", b"")).await;
    assert_eq!(listed, serde_json::json!([]));
    let (status, _, _) = send(&client(), &proxies["dynamodb"], Some("DynamoDB_20120810.GetItem"), "{}").await.expect("answer");
    assert_eq!(status, 201);
}

#[tokio::test]
async fn control_api_rejects_what_it_cannot_do() {
    let mut proxies = Proxies::new();
    proxies.insert("sqs".to_owned(), proxy_to_echo().await);
    let cases: [(&Method, &str, &[u8], u16, &str); 6] = [
        (&Method::GET, "/proxies/kinesis/stats", b"", 404, "no proxy named \"kinesis\""),
        (&Method::PUT, "/proxies/sqs/rules", b"{not json", 400, "not a JSON array of rules"),
        (&Method::PUT, "/proxies/sqs/rules", br#"[{"fault": {"kind": "explode"}}]"#, 400, "unknown variant `explode`"),
        (
            &Method::PUT,
            "/proxies/sqs/rules",
            br#"[{"probability": 2, "fault": {"kind": "reset"}}]"#,
            400,
            "rule 0: probability 2",
        ),
        (&Method::POST, "/proxies/sqs/stats", b"", 405, "POST is not allowed"),
        (&Method::GET, "/nowhere", b"", 404, "no route /nowhere"),
    ];
    for (method, path, body, want_status, want_error) in cases {
        let (status, body) = body_json(route(&proxies, method, path, body)).await;
        assert_eq!(status, want_status, "{method} {path}: {body}");
        let error = body["error"].as_str().expect("an error message");
        assert!(error.contains(want_error), "{method} {path}: {error}");
    }
    assert!(proxies["sqs"].rules().is_empty(), "a rejected rule set changes nothing");
}
