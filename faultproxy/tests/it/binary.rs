//! The `cafe-faultproxy` binary: prints its addresses as JSON lines, serves the control
//! API over HTTP and exits cleanly on SIGTERM.

use std::process::Stdio;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::client;

#[tokio::test]
async fn binary_prints_addresses_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cafe-faultproxy"))
        .args(["--proxy", "dynamodb=127.0.0.1:0=http://127.0.0.1:9", "--control", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cafe-faultproxy");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next_line().await.expect("read").expect("a line")).expect("JSON");
    assert_eq!(first["name"], "dynamodb");
    assert!(first["listen"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:") && !a.ends_with(":0")), "{first}");
    let second: serde_json::Value = serde_json::from_str(&lines.next_line().await.expect("read").expect("a line")).expect("JSON");
    assert!(second["control"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{second}");

    let url = format!("http://{}/proxies/dynamodb/rules", second["control"].as_str().unwrap_or_default());
    let request = Request::put(url).body(Full::new(Bytes::from_static(br#"[{"fault": {"kind": "server_error"}}]"#)));
    let response = client().request(request.expect("valid request")).await.expect("control answer");
    assert_eq!(response.status(), 200);
    assert_eq!(&response.into_body().collect().await.expect("body").to_bytes()[..], br#"{"rules":1}"#);

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await.expect("exits").expect("wait");
    assert!(status.success(), "{status}");
}
