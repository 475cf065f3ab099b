//! A small stand-in for the region API on 127.0.0.1 (real HTTP/1.1 via hyper). It records every
//! request and answers from a script; the last scripted answer repeats.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

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

pub struct ApiStub {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    seen: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiStub {
    /// Starts the stub answering `script` in order, `(status, body)`.
    pub async fn start(script: &[(u16, &str)]) -> ApiStub {
        let script: VecDeque<(u16, String)> =
            script.iter().map(|(s, b)| (*s, (*b).to_owned())).collect();
        let script = Arc::new(Mutex::new(script));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(tokio::sync::Notify::new());
        let (log, answers, notify) = (
            Arc::clone(&requests),
            Arc::clone(&script),
            Arc::clone(&seen),
        );
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (log, answers, notify) =
                    (Arc::clone(&log), Arc::clone(&answers), Arc::clone(&notify));
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, answers, notify) =
                        (Arc::clone(&log), Arc::clone(&answers), Arc::clone(&notify));
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push(Recorded {
                            method,
                            path,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        notify.notify_one();
                        let (status, body) = {
                            let mut a = answers.lock().unwrap();
                            if a.len() > 1 {
                                a.pop_front().unwrap()
                            } else {
                                a[0].clone()
                            }
                        };
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let conn = http
                    .serve_connection(TokioIo::new(socket), service)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        ApiStub {
            url,
            requests,
            seen,
            task,
        }
    }

    /// Notified once per request received (a permit is kept if nobody waits yet).
    pub fn request_seen(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.seen)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// A 127.0.0.1 URL nothing listens on.
pub async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}
