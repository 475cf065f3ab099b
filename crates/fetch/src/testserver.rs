//! A small real HTTP/1.1 server on 127.0.0.1 for tests and the throughput bench.
//!
//! Hand-written on `std::net` (threads, keep-alive, `GET`/`HEAD`) because the tests need
//! misbehaviour that ready-made servers do not offer: cutting a connection mid-body, ignoring
//! `Range`, failing the next N requests, and a log of every request's `Range`/`If-Range`.
//! File bodies go out through `std::io::copy`, which uses `sendfile` on Linux, so the bench
//! measures the client, not this server.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The body of a resource.
#[derive(Clone, Debug)]
pub enum Body {
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
    /// A file, read at each request.
    File(PathBuf),
}

/// A resource the server serves at one path.
#[derive(Clone, Debug)]
pub struct Resource {
    /// The body.
    pub body: Body,
    /// Its `ETag` header, if any (also checked against `If-Range`).
    pub etag: Option<String>,
    /// Its `Last-Modified` header, if any (also checked against `If-Range`).
    pub last_modified: Option<String>,
}

impl Resource {
    /// An in-memory resource with a strong ETag derived from its length.
    pub fn bytes(data: impl Into<Arc<[u8]>>) -> Self {
        let body: Arc<[u8]> = data.into();
        let etag = Some(format!("\"{:x}-v1\"", body.len()));
        Self {
            body: Body::Bytes(body),
            etag,
            last_modified: None,
        }
    }

    /// A file resource with a strong ETag.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            body: Body::File(path.into()),
            etag: Some("\"file-v1\"".to_owned()),
            last_modified: None,
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target's path.
    pub path: String,
    /// The `Range` header, if sent.
    pub range: Option<String>,
    /// The `If-Range` header, if sent.
    pub if_range: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Body bytes actually written (less than announced when the connection was cut).
    pub body_bytes: u64,
}

#[derive(Default)]
struct Behaviour {
    /// Honour `Range` (answer 206). Off: always 200 with the whole body.
    ranges: bool,
    /// Cut the next `count` body responses after `after` bytes.
    cut: Option<(u32, u64)>,
    /// Answer the next N requests with this status.
    fail: Option<(u32, u16)>,
    /// Sleep this long after each 64 KiB of body.
    throttle: Option<Duration>,
}

#[derive(Default)]
struct State {
    resources: HashMap<String, Resource>,
    behaviour: Behaviour,
    log: Vec<LoggedRequest>,
}

/// A running server; stops accepting when dropped.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TestServer {
    /// Starts a server on an ephemeral port of 127.0.0.1, honouring `Range`.
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        lock(&state).behaviour.ranges = true;
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let state = state2.clone();
                std::thread::spawn(move || {
                    let _ = serve_connection(conn, &state);
                });
            }
        });
        Ok(Self { addr, state, stop })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `resource` at `path` (replacing what was there).
    pub fn put(&self, path: &str, resource: Resource) {
        lock(&self.state)
            .resources
            .insert(path.to_owned(), resource);
    }

    /// Turns `Range` support on or off.
    pub fn set_ranges(&self, on: bool) {
        lock(&self.state).behaviour.ranges = on;
    }

    /// Cuts the next `count` body responses after `after` body bytes (closing the socket).
    pub fn cut_next(&self, count: u32, after: u64) {
        lock(&self.state).behaviour.cut = Some((count, after));
    }

    /// Answers the next `count` requests with `status` and no body.
    pub fn fail_next(&self, count: u32, status: u16) {
        lock(&self.state).behaviour.fail = Some((count, status));
    }

    /// Sleeps `per_64k` after each 64 KiB of body (to make downloads overlap in tests).
    pub fn throttle(&self, per_64k: Option<Duration>) {
        lock(&self.state).behaviour.throttle = per_64k;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state).log.clone()
    }

    /// Requests for `path` that got a body (200 or 206 to a GET).
    pub fn body_requests(&self, path: &str) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path && r.method == "GET" && matches!(r.status, 200 | 206))
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other("bad request line"));
    };
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let method = method.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
    }))
}

fn serve_connection(conn: TcpStream, state: &Mutex<State>) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    while let Some(request) = read_request(&mut reader)? {
        let keep_alive = !request
            .headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if !respond(&request, &mut out, state)? || !keep_alive {
            break;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

/// Answers one request. Returns false when the connection must be closed (it was cut).
fn respond(request: &Request, out: &mut TcpStream, state: &Mutex<State>) -> io::Result<bool> {
    let mut log = LoggedRequest {
        method: request.method.clone(),
        path: request.path.clone(),
        range: request.headers.get("range").cloned(),
        if_range: request.headers.get("if-range").cloned(),
        status: 0,
        body_bytes: 0,
    };
    let (resource, ranges, fail, throttle) = {
        let mut s = lock(state);
        let fail = match &mut s.behaviour.fail {
            Some((n, status)) if *n > 0 => {
                *n -= 1;
                Some(*status)
            }
            _ => None,
        };
        let resource = s.resources.get(&request.path).cloned();
        (resource, s.behaviour.ranges, fail, s.behaviour.throttle)
    };
    let finish = |log: LoggedRequest| lock(state).log.push(log);

    if let Some(status) = fail {
        log.status = status;
        finish(log);
        write!(
            out,
            "HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\n\r\n"
        )?;
        return Ok(true);
    }
    let Some(resource) = resource else {
        log.status = 404;
        finish(log);
        write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(true);
    };
    let len = match &resource.body {
        Body::Bytes(b) => b.len() as u64,
        Body::File(p) => std::fs::metadata(p)?.len(),
    };
    let validator_ok = match &log.if_range {
        None => true,
        Some(v) => Some(v) == resource.etag.as_ref() || Some(v) == resource.last_modified.as_ref(),
    };
    let range = log
        .range
        .as_deref()
        .filter(|_| ranges && validator_ok)
        .and_then(parse_range);
    let mut head = String::new();
    let (status, start, count) = match range {
        Some((first, _)) if first >= len => {
            log.status = 416;
            finish(log);
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n"
            )?;
            return Ok(true);
        }
        Some((first, last)) => {
            let last = last.unwrap_or(len - 1).min(len - 1);
            head.push_str(&format!("Content-Range: bytes {first}-{last}/{len}\r\n"));
            (206, first, last - first + 1)
        }
        None => (200, 0, len),
    };
    if ranges {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if let Some(etag) = &resource.etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    if let Some(modified) = &resource.last_modified {
        head.push_str(&format!("Last-Modified: {modified}\r\n"));
    }
    let reason = if status == 206 {
        "Partial Content"
    } else {
        "OK"
    };
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {count}\r\nContent-Type: application/octet-stream\r\n{head}\r\n"
    )?;
    log.status = status;
    if request.method == "HEAD" {
        finish(log);
        return Ok(true);
    }
    // Take one cut off the budget if this response is to be cut.
    let cut_after = {
        let mut s = lock(state);
        match &mut s.behaviour.cut {
            Some((n, after)) if *n > 0 => {
                *n -= 1;
                Some(*after)
            }
            _ => None,
        }
    };
    let send = cut_after.map_or(count, |after| after.min(count));
    let sent = send_body(&resource.body, start, send, out, throttle);
    log.body_bytes = *sent.as_ref().unwrap_or(&0);
    finish(log);
    sent?;
    if cut_after.is_some() {
        out.flush()?;
        let _ = out.shutdown(Shutdown::Both);
        return Ok(false);
    }
    Ok(true)
}

fn send_body(
    body: &Body,
    start: u64,
    count: u64,
    out: &mut TcpStream,
    throttle: Option<Duration>,
) -> io::Result<u64> {
    const SLICE: u64 = 64 * 1024;
    match (body, throttle) {
        (Body::File(path), None) => {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(start))?;
            io::copy(&mut file.take(count), out)
        }
        (body, throttle) => {
            let data: Vec<u8> = match body {
                Body::Bytes(b) => b[start as usize..(start + count) as usize].to_vec(),
                Body::File(path) => {
                    let mut file = File::open(path)?;
                    file.seek(SeekFrom::Start(start))?;
                    let mut buf = Vec::new();
                    file.take(count).read_to_end(&mut buf)?;
                    buf
                }
            };
            let mut sent = 0u64;
            for slice in data.chunks(SLICE as usize) {
                out.write_all(slice)?;
                sent += slice.len() as u64;
                if let Some(pause) = throttle {
                    std::thread::sleep(pause);
                }
            }
            Ok(sent)
        }
    }
}

/// Parses a single `bytes=first-[last]` range.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => None,
        l => Some(l.parse().ok()?),
    };
    Some((first, last))
}
