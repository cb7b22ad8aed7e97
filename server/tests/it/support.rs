//! A real server on 127.0.0.1:0 with a temporary store, run in-process, stopped on drop.

use meterstream_server::config::Config;
use meterstream_server::Background;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

/// The admin key every test server accepts (`METERSTREAM_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "msk_test_0123456789abcdefghijklmnopqrstuv";

/// A client that sends `Authorization: Bearer <key>` with every request.
pub fn client_with_key(key: &str) -> Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    Client::builder().default_headers(h).build().unwrap()
}

pub struct TestServer {
    pub url: String,
    pub client: Client,
    _server: Background,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Self::start_at(&tmp.path().join("data"), tweak);
        s._tmp = Some(tmp);
        s
    }

    /// A server on an existing (or new) data directory that the caller owns.
    pub fn start_at(data_dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = Config {
            data_dir: data_dir.to_path_buf(),
            workers: 2,
            admin_key: Some(ADMIN_KEY.into()),
            ..Config::default()
        };
        tweak(&mut cfg);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Background::start(listener, cfg).unwrap();
        TestServer {
            url: server.url.clone(),
            client: client_with_key(ADMIN_KEY),
            _server: server,
            _tmp: None,
        }
    }

    /// One request to `path` with client `c` (see [`call`]).
    pub fn send(&self, c: &Client, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        call(c, method, format!("{}{path}", self.url), body)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(format!("{}{path}", self.url))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .put(format!("{}{path}", self.url))
            .json(body)
            .send()
            .unwrap()
    }

    pub fn post_json(&self, body: &Value) -> Response {
        self.client
            .post(format!("{}/ws/v1/streams/history", self.url))
            .json(body)
            .send()
            .unwrap()
    }

    pub fn post_raw(&self, content_type: &str, body: Vec<u8>) -> Response {
        self.client
            .post(format!("{}/ws/v1/streams/history", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap()
    }

    /// GET returning (status, JSON body).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).send().unwrap();
        let s = r.status().as_u16();
        (s, json_of(r))
    }

    /// Every point of a stream's history (asc, all pages), as (timestamp ms, value).
    pub fn history_all(&self, stream: &str, extra: &str) -> Vec<(i64, Value)> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("/ws/v1/streams/history/{stream}?size=1000{extra}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (s, v) = self.get_json(&q);
            assert_eq!(s, 200, "{v}");
            for p in v["list"].as_array().unwrap() {
                out.push((ms(p["timestamp"].as_str().unwrap()), p["value"].clone()));
            }
            match v["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

/// Makes a credential through the API (`body` as `POST /ws/v1/credentials` takes it) and
/// returns its secret: the key, or the password of a user.
pub fn create_credential(s: &TestServer, body: Value) -> String {
    let r = s
        .client
        .post(format!("{}/ws/v1/credentials", s.url))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let v = json_of(r);
    v["key"]
        .as_str()
        .or(v["password"].as_str())
        .unwrap()
        .to_string()
}

pub fn json_of(r: Response) -> Value {
    let text = r.text().unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Epoch ms of an ISO 8601 timestamp.
pub fn ms(iso: &str) -> i64 {
    meterstream_storage::time::parse_absolute(iso).unwrap()
}

/// Asserts the standard error shape and returns its message.
pub fn error_message(v: &Value, status: u16) -> String {
    assert_eq!(v["error"]["status"], status, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

/// One request with `c`: (status, JSON body or the text as a JSON string).
pub fn call(c: &Client, method: &str, url: String, body: Option<&Value>) -> (u16, Value) {
    let req = match method {
        "POST" => c.post(url),
        "PUT" => c.put(url),
        "DELETE" => c.delete(url),
        _ => c.get(url),
    };
    let req = match body {
        Some(b) => req.json(b),
        None => req,
    };
    let r = req.send().unwrap();
    let st = r.status().as_u16();
    (st, json_of(r))
}
