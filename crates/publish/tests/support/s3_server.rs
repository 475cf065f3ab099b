//! A real S3 server for the tests: `s3s-fs` (files in a temp dir) behind s3s's SigV4 checking,
//! served over HTTP on 127.0.0.1 with hyper. A thin wrapper records which operations arrive,
//! can inject failures into UploadPart, and answers ListMultipartUploads (which s3s-fs lacks)
//! from the upload records s3s-fs keeps on disk.
//!
//! Canned ACLs as S3 has them: anonymous requests are let through s3s's access check and
//! decided here: only GetObject/HeadObject of an object stored `public-read` (at
//! CreateMultipartUpload or by PutObjectAcl) is allowed without credentials. `refuse_acl`
//! makes the server answer an ACL header like a bucket with ACLs disabled.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

pub const ACCESS_KEY: &str = "AKIDIMGBAKETEST";
pub const SECRET_KEY: &str = "imgbake-test-secret-key";
pub const BUCKET: &str = "images";

/// What UploadPart should do for a given part number.
#[derive(Debug, Clone, Copy)]
pub enum Inject {
    /// Answer 400 InvalidArgument every time.
    Reject,
    /// Answer 503 SlowDown this many times, then store the part.
    SlowDown(u32),
}

#[derive(Default)]
pub struct Log {
    pub calls: Vec<String>,
    pub inject: HashMap<i32, Inject>,
    /// Answer AbortMultipartUpload with 403 AccessDenied.
    pub refuse_abort: bool,
    /// Answer any ACL header with 400 AccessControlListNotSupported.
    pub refuse_acl: bool,
    /// The ACL header each CreateMultipartUpload / PutObjectAcl carried, in order.
    pub acls: Vec<Option<String>>,
    /// Keys readable without credentials.
    pub public: HashSet<String>,
    uploads: HashMap<String, String>,
    /// Upload id → it asked for public-read.
    public_uploads: HashSet<String>,
}

pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    pub async fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let recorder = Recorder {
            fs: s3s_fs::FileSystem::new(root.path()).unwrap(),
            root: root.path().to_owned(),
            log: Arc::clone(&log),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(recorder);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        builder.set_access(LetRecorderDecide);
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Server {
            endpoint,
            root,
            log,
            task,
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.log.lock().unwrap().calls.clear();
    }

    pub fn acls(&self) -> Vec<Option<String>> {
        self.log.lock().unwrap().acls.clone()
    }

    pub fn inject(&self, part: i32, what: Inject) {
        self.log.lock().unwrap().inject.insert(part, what);
    }

    /// The stored object's bytes, read straight from s3s-fs's directory.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(BUCKET).join(key)).ok()
    }

    /// Files s3s-fs keeps for open multipart uploads (records and parts).
    pub fn upload_files(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }
}

/// Lets anonymous requests reach [`Recorder`], which decides like S3 does with ACLs.
struct LetRecorderDecide;

#[async_trait::async_trait]
impl s3s::access::S3Access for LetRecorderDecide {
    async fn check(&self, _cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        Ok(())
    }
}

fn signed<T>(req: &S3Request<T>) -> S3Result<()> {
    match req.credentials {
        Some(_) => Ok(()),
        None => Err(s3_error!(AccessDenied, "Signature is required")),
    }
}

struct Recorder {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    fn record(&self, call: impl Into<String>) {
        self.log.lock().unwrap().calls.push(call.into());
    }

    /// Signed requests read anything; anonymous ones only public objects.
    fn readable<T>(&self, req: &S3Request<T>, key: &str) -> S3Result<()> {
        if req.credentials.is_some() || self.log.lock().unwrap().public.contains(key) {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "Access Denied"))
        }
    }

    /// Records an ACL header; true for public-read. Refused when the bucket has ACLs off.
    fn acl(&self, acl: Option<&str>) -> S3Result<bool> {
        let mut log = self.log.lock().unwrap();
        log.acls.push(acl.map(str::to_owned));
        if acl.is_some() && log.refuse_acl {
            return Err(s3_error!(
                AccessControlListNotSupported,
                "The bucket does not allow ACLs"
            ));
        }
        Ok(acl == Some("public-read"))
    }
}

#[async_trait::async_trait]
impl S3 for Recorder {
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.record("HeadObject");
        self.readable(&req, &req.input.key)?;
        self.fs.head_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let anonymous = req.credentials.is_none();
        self.record(if anonymous {
            "GetObject anonymous"
        } else {
            "GetObject"
        });
        self.readable(&req, &req.input.key)?;
        self.fs.get_object(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.record("PutObject");
        signed(&req)?;
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.record("CreateMultipartUpload");
        signed(&req)?;
        let key = req.input.key.clone();
        let acl = self.acl(req.input.acl.as_ref().map(|a| a.as_str()))?;
        let out = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &out.output.upload_id {
            let mut log = self.log.lock().unwrap();
            log.uploads.insert(id.clone(), key);
            if acl {
                log.public_uploads.insert(id.clone());
            }
        }
        Ok(out)
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let number = req.input.part_number;
        self.record(format!("UploadPart {number}"));
        signed(&req)?;
        let inject = {
            let mut log = self.log.lock().unwrap();
            let inject = log.inject.get(&number).copied();
            if let Some(Inject::SlowDown(n)) = inject {
                if n == 0 {
                    log.inject.remove(&number);
                    None
                } else {
                    log.inject.insert(number, Inject::SlowDown(n - 1));
                    inject
                }
            } else {
                inject
            }
        };
        if let Some(inject) = inject {
            // Read the body first so the client sees the answer, not a reset connection.
            if let Some(mut body) = req.input.body.take() {
                while body.next().await.is_some() {}
            }
            return Err(match inject {
                Inject::Reject => s3_error!(InvalidArgument, "injected failure"),
                Inject::SlowDown(_) => s3_error!(SlowDown, "injected slow down"),
            });
        }
        self.fs.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.record("CompleteMultipartUpload");
        signed(&req)?;
        let (id, key) = (req.input.upload_id.clone(), req.input.key.clone());
        let out = self.fs.complete_multipart_upload(req).await?;
        let mut log = self.log.lock().unwrap();
        if log.public_uploads.remove(&id) {
            log.public.insert(key);
        } else {
            // A new object starts private, as on S3.
            log.public.remove(&key);
        }
        Ok(out)
    }

    async fn put_object_acl(
        &self,
        req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        self.record("PutObjectAcl");
        signed(&req)?;
        if self.acl(req.input.acl.as_ref().map(|a| a.as_str()))? {
            self.log
                .lock()
                .unwrap()
                .public
                .insert(req.input.key.clone());
        }
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.record("AbortMultipartUpload");
        signed(&req)?;
        if self.log.lock().unwrap().refuse_abort {
            return Err(s3_error!(AccessDenied, "injected abort refusal"));
        }
        self.fs.abort_multipart_upload(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.record("ListMultipartUploads");
        signed(&req)?;
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let known = self.log.lock().unwrap().uploads.clone();
        // An upload is open while s3s-fs still has its record file.
        let mut uploads: Vec<MultipartUpload> = known
            .into_iter()
            .filter(|(id, key)| {
                key.starts_with(&prefix) && self.root.join(format!(".upload-{id}.json")).exists()
            })
            .map(|(id, key)| MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                ..Default::default()
            })
            .collect();
        uploads.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(req.input.bucket),
            uploads: Some(uploads),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }
}
