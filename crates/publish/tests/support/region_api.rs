//! A stand-in for the Nscale region API on 127.0.0.1 (real HTTP/1.1 via hyper), speaking the
//! wire format of NSCALE-API.md:
//! - `POST /api/v1/organizations/{org}/regions/{region}/images` checks the bearer token,
//!   validates the body against the `imageCreate` schema (400), reads the first 512 bytes of
//!   `spec.uri` itself with a ranged GET and answers 422 unless they end in 55 AA, then records
//!   the image and answers 200 with an `image`;
//! - `GET` of the same path lists the images; every listing moves each image one step along
//!   the state progression (`pending` → `creating` → `ready` by default);
//! - `DELETE …/images/{id}` answers 202;
//! - unknown organization or region: 404; missing or wrong token: 401.
//!
//! It also serves image objects under `/objects/{name}` (anonymous, honouring `Range`), or 403
//! for objects marked private. Faults are injected per request kind, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use serde_json::{Value, json};

pub const ORG: &str = "org-42";
pub const REGION: &str = "eu-west-1";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the next POST does instead of the normal path.
#[derive(Debug, Clone)]
pub enum PostFault {
    /// Answer this status and body; nothing is created.
    Answer(u16, String),
    /// Create the image, then answer this status (the server failed after the record existed).
    CreateThenAnswer(u16),
    /// Create the image, then close the connection without an answer.
    CreateThenHangUp,
}

#[derive(Debug, Clone)]
pub struct StoredImage {
    pub id: String,
    pub name: String,
    pub body: Value,
    /// States still to show; the last one stays.
    pub states: VecDeque<&'static str>,
}

impl StoredImage {
    fn state(&self) -> &'static str {
        self.states.front().copied().unwrap_or("pending")
    }

    fn to_json(&self) -> Value {
        let spec = &self.body["spec"];
        json!({
            "metadata": {
                "id": self.id,
                "name": self.name,
                "creationTime": "2026-12-01T10:00:00Z",
                "provisioningStatus": "provisioned",
            },
            "spec": {
                "sizeGiB": 20,
                "virtualization": spec["virtualization"],
                "os": spec["os"],
                "softwareVersions": spec.get("softwareVersions").cloned().unwrap_or(json!({})),
                "gpu": spec.get("gpu").cloned().unwrap_or(Value::Null),
            },
            "status": {"state": self.state()},
        })
    }
}

struct State {
    token: String,
    requests: Vec<Recorded>,
    images: Vec<StoredImage>,
    next_id: u32,
    progression: Vec<&'static str>,
    post_faults: VecDeque<PostFault>,
    list_faults: VecDeque<(u16, String)>,
    objects: HashMap<String, Vec<u8>>,
    private_objects: Vec<String>,
}

pub struct RegionApi {
    pub url: String,
    state: Arc<Mutex<State>>,
    post_seen: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RegionApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegionApi {
    /// Starts the API accepting `token`.
    pub async fn start(token: &str) -> RegionApi {
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            requests: Vec::new(),
            images: Vec::new(),
            next_id: 1,
            progression: vec!["pending", "creating", "ready"],
            post_faults: VecDeque::new(),
            list_faults: VecDeque::new(),
            objects: HashMap::new(),
            private_objects: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let post_seen = Arc::new(tokio::sync::Notify::new());
        let (shared, notify) = (Arc::clone(&state), Arc::clone(&post_seen));
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, notify) = (Arc::clone(&shared), Arc::clone(&notify));
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (shared, notify) = (Arc::clone(&shared), Arc::clone(&notify));
                    async move { handle(req, &shared, &notify).await }
                });
                let conn = http
                    .serve_connection(TokioIo::new(socket), service)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        RegionApi {
            url,
            state,
            post_seen,
            task,
        }
    }

    /// Serves `bytes` at `/objects/{name}` and returns its URL.
    pub fn put_object(&self, name: &str, bytes: Vec<u8>) -> String {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(name.to_owned(), bytes);
        format!("{}/objects/{name}", self.url)
    }

    /// A RAW disk's first sectors: an MBR signature at 510.
    pub fn put_raw_disk(&self, name: &str) -> String {
        let mut disk = vec![0u8; 4096];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        self.put_object(name, disk)
    }

    /// Answers 403 to anonymous reads of `name`.
    pub fn make_private(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .private_objects
            .push(name.to_owned());
    }

    pub fn fail_post(&self, fault: PostFault) {
        self.state.lock().unwrap().post_faults.push_back(fault);
    }

    pub fn fail_list(&self, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .list_faults
            .push_back((status, body.to_owned()));
    }

    /// The states a new image shows on successive listings (the last one stays).
    pub fn set_progression(&self, states: &[&'static str]) {
        self.state.lock().unwrap().progression = states.to_vec();
    }

    /// Adds an image as if registered earlier.
    pub fn add_image(&self, name: &str) -> String {
        let mut s = self.state.lock().unwrap();
        let id = format!("img-{:04}", s.next_id);
        s.next_id += 1;
        s.images.push(StoredImage {
            id: id.clone(),
            name: name.to_owned(),
            body: json!({"spec": {}}),
            states: VecDeque::from(["ready"]),
        });
        id
    }

    /// Notified at each POST (a permit is kept if nobody waits yet).
    pub fn post_seen(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.post_seen)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests to the API itself (not to the objects).
    pub fn api_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/"))
            .collect()
    }

    pub fn posts(&self) -> Vec<Recorded> {
        self.api_requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }

    pub fn images(&self) -> Vec<StoredImage> {
        self.state.lock().unwrap().images.clone()
    }
}

/// A 127.0.0.1 URL nothing listens on.
pub async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

fn answer(status: u16, body: impl Into<Bytes>) -> Answer {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap())
}

fn error(status: u16, code: &str, description: &str) -> Answer {
    answer(
        status,
        json!({"error": code, "error_description": description}).to_string(),
    )
}

async fn handle(
    req: Request<Incoming>,
    shared: &Mutex<State>,
    post_seen: &tokio::sync::Notify,
) -> Answer {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let recorded = Recorded {
        method: method.clone(),
        path: path.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    shared.lock().unwrap().requests.push(recorded.clone());
    if let Some(name) = path.strip_prefix("/objects/") {
        return object(shared, name, recorded.header("range"));
    }
    let images_path = format!("/api/v1/organizations/{ORG}/regions/{REGION}/images");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_images = segments.len() >= 7
        && segments[..3] == ["api", "v1", "organizations"]
        && segments[4] == "regions"
        && segments[6] == "images";
    if !is_images {
        return error(404, "not_found", "no such route");
    }
    let expected = format!("Bearer {}", shared.lock().unwrap().token);
    if recorded.header("authorization") != Some(expected.as_str()) {
        return error(401, "access_denied", "token validation failed");
    }
    if !path.starts_with(&images_path) {
        return error(404, "not_found", "organization or region not found");
    }
    match (method.as_str(), segments.len()) {
        ("POST", 7) => {
            post_seen.notify_one();
            create(shared, &recorded.body).await
        }
        ("GET", 7) => list(shared),
        ("DELETE", 8) => {
            let id = segments[7];
            let mut s = shared.lock().unwrap();
            let before = s.images.len();
            s.images.retain(|i| i.id != id);
            if s.images.len() == before {
                return error(404, "not_found", "image not found");
            }
            answer(202, "")
        }
        _ => error(405, "method_not_allowed", "method not allowed"),
    }
}

fn object(shared: &Mutex<State>, name: &str, range: Option<&str>) -> Answer {
    let s = shared.lock().unwrap();
    if s.private_objects.iter().any(|p| p == name) {
        return answer(403, "<Error><Code>AccessDenied</Code></Error>");
    }
    let Some(bytes) = s.objects.get(name) else {
        return answer(404, "<Error><Code>NoSuchKey</Code></Error>");
    };
    let total = bytes.len();
    let wanted = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match wanted {
        Some((start, _)) if start >= total => answer(416, ""),
        Some((start, end)) => {
            let end = end.min(total - 1);
            Ok(Response::builder()
                .status(206)
                .header("content-range", format!("bytes {start}-{end}/{total}"))
                .body(Full::new(Bytes::copy_from_slice(&bytes[start..=end])))
                .unwrap())
        }
        None => Ok(Response::builder()
            .status(200)
            .body(Full::new(Bytes::copy_from_slice(bytes)))
            .unwrap()),
    }
}

async fn create(shared: &Mutex<State>, body: &str) -> Answer {
    let fault = shared.lock().unwrap().post_faults.pop_front();
    if let Some(PostFault::Answer(status, body)) = &fault {
        return answer(*status, body.clone());
    }
    let Ok(json) = serde_json::from_str::<Value>(body) else {
        return error(400, "invalid_request", "request body is not JSON");
    };
    // The server's OpenAPI middleware: a body that does not match the schema gets 400.
    if let Some(v) = publish::violations(&json).first() {
        return error(
            400,
            "invalid_request",
            &format!("request body has an error: doesn't match schema: {v}"),
        );
    }
    // The server reads the first 512 bytes itself, without credentials.
    let uri = json["spec"]["uri"].as_str().unwrap_or_default().to_owned();
    let head = async {
        let response = reqwest::Client::new()
            .get(&uri)
            .header("range", "bytes=0-511")
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.bytes().await.ok()
    }
    .await;
    match head {
        Some(h) if h.len() >= 512 && h[510] == 0x55 && h[511] == 0xAA => {}
        _ => return error(422, "invalid_request", "image is not a readable raw disk"),
    }
    let image = {
        let mut s = shared.lock().unwrap();
        let id = format!("img-{:04}", s.next_id);
        s.next_id += 1;
        let image = StoredImage {
            id,
            name: json["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body: json.clone(),
            states: s.progression.iter().copied().collect(),
        };
        s.images.push(image.clone());
        image
    };
    match fault {
        Some(PostFault::CreateThenAnswer(status)) => {
            error(status, "server_error", "internal error after create")
        }
        Some(PostFault::CreateThenHangUp) => Err(std::io::Error::other("hang up")),
        _ => answer(200, image.to_json().to_string()),
    }
}

fn list(shared: &Mutex<State>) -> Answer {
    let mut s = shared.lock().unwrap();
    if let Some((status, body)) = s.list_faults.pop_front() {
        return answer(status, body);
    }
    let listed: Vec<Value> = s.images.iter().map(StoredImage::to_json).collect();
    for image in &mut s.images {
        if image.states.len() > 1 {
            image.states.pop_front();
        }
    }
    answer(200, Value::Array(listed).to_string())
}
