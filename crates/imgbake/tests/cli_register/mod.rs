//! `imgbake register` and `imgbake upload` at the command line: the schema check (also under
//! --dry-run), the image URI check before anything reaches the API, plain http refused without
//! --insecure-http, the help text.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{imgbake, stderr, stdout};

const TOKEN: &str = "nsc-CLI-token-31415";

fn valid(uri: &str) -> Value {
    json!({
        "metadata": {"name": "ubuntu-2204-nvidia-565-fw1"},
        "spec": {"uri": uri, "architecture": "x86_64", "virtualization": "virtualized",
                 "os": {"kernel": "linux", "family": "debian", "distro": "ubuntu",
                        "version": "22.04", "variant": "server", "codename": "jammy"},
                 "softwareVersions": {"kubernetes": "v1.30.0"},
                 "gpu": {"vendor": "NVIDIA", "driver": "565.57.01", "models": ["H100"]}}
    })
}

fn write_payload(dir: &Path, name: &str, payload: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(payload).unwrap()).unwrap();
    path
}

fn register(payload: &Path, api: &str, extra: &[&str]) -> std::process::Output {
    imgbake()
        .arg("register")
        .arg(payload)
        .args(["--uri", "https://images.example.net/gpu/image.raw"])
        .args(["--api", api, "--org", "org-42", "--region", "eu-west-1"])
        .args(extra)
        .env("NSCALE_API_TOKEN", TOKEN)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn dry_run_refuses_the_payloads_the_api_refuses_naming_the_json_path() {
    let dir = tempfile::tempdir().unwrap();
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: [Case; 5] = [
        (
            "driver-null",
            |p| p["spec"]["gpu"]["driver"] = Value::Null,
            "/spec/gpu/driver",
        ),
        (
            "k8s-minor",
            |p| p["spec"]["softwareVersions"]["kubernetes"] = json!("v1.30"),
            "/spec/softwareVersions/kubernetes",
        ),
        (
            "long-name",
            |p| p["metadata"]["name"] = json!("x".repeat(70)),
            "/metadata/name",
        ),
        (
            "debian",
            |p| p["spec"]["os"]["distro"] = json!("debian"),
            "/spec/os/distro",
        ),
        (
            "no-vendor",
            |p| {
                p["spec"]["gpu"].as_object_mut().unwrap().remove("vendor");
            },
            "/spec/gpu/vendor",
        ),
    ];
    for (name, change, pointer) in cases {
        let mut payload = valid("PLACEHOLDER");
        change(&mut payload);
        let path = write_payload(dir.path(), &format!("{name}.json"), &payload);
        let out = register(
            &path,
            "http://127.0.0.1:9",
            &["--dry-run", "--insecure-http"],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("would be refused by the region API"),
            "{name}: {err}"
        );
        assert!(err.contains(&format!("  {pointer}: ")), "{name}: {err}");
        assert_eq!(
            stdout(&out),
            "",
            "{name}: nothing is printed as the request"
        );
        if name == "debian" {
            assert!(err.contains("Debian, cannot be registered"), "{err}");
        }
    }
}

#[test]
fn dry_run_of_a_valid_payload_shows_the_request_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_payload(dir.path(), "ok.json", &valid("PLACEHOLDER"));
    let out = register(
        &path,
        "http://127.0.0.1:9",
        &["--dry-run", "-vvv", "--insecure-http"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "POST http://127.0.0.1:9/api/v1/organizations/org-42/regions/eu-west-1/images\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Bearer <redacted, from $NSCALE_API_TOKEN>"),
        "{text}"
    );
    assert!(
        text.contains("https://images.example.net/gpu/image.raw"),
        "{text}"
    );
    assert!(!text.contains("CLI-token") && !stderr(&out).contains("CLI-token"));
}

/// Serves one answer to one request on 127.0.0.1, in a thread.
fn serve_once(response: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        socket.write_all(&response).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, server)
}

#[test]
fn a_qcow2_uri_is_refused_before_anything_reaches_the_api() {
    let mut qcow2 = vec![0u8; 512];
    qcow2[..4].copy_from_slice(b"QFI\xfb");
    let mut response =
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-511/1048576\r\nContent-Length: 512\r\nConnection: close\r\n\r\n"
            .to_vec();
    response.extend_from_slice(&qcow2);
    let (object, server) = serve_once(response);
    // An API that must see no connection at all.
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    api.set_nonblocking(true).unwrap();
    let api_url = format!("http://{}", api.local_addr().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let path = write_payload(dir.path(), "p.json", &valid("PLACEHOLDER"));
    let out = imgbake()
        .arg("register")
        .arg(&path)
        .args(["--uri", &format!("{object}/gpu/image.qcow2")])
        .args([
            "--api",
            &api_url,
            "--org",
            "org-42",
            "--region",
            "eu-west-1",
            "--insecure-http",
        ])
        .env("NSCALE_API_TOKEN", TOKEN)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a qcow2 file, not a RAW disk"), "{err}");
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /gpu/image.qcow2 "), "{request}");
    assert!(
        request.to_ascii_lowercase().contains("range: bytes=0-511"),
        "{request}"
    );
    assert!(
        !request.contains(TOKEN),
        "the uri check sends no credentials"
    );
    assert_eq!(
        api.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing reached the API"
    );
}

/// A listener that must see no connection: nonblocking, so `accept` answers at once.
fn silent_server() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn assert_nothing_reached(listener: &TcpListener, what: &str) {
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "{what}: a connection reached the server"
    );
}

#[test]
fn register_refuses_an_http_api_unless_insecure_http() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_payload(dir.path(), "p.json", &valid("PLACEHOLDER"));
    let (api, api_url) = silent_server();
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = register(&path, &api_url, extra);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(&format!("the API URL {api_url}/ is plain http"))
                && err.contains("bearer token would cross the network unencrypted"),
            "{extra:?}: {err}"
        );
        assert!(
            err.contains("try: ") && err.contains("--insecure-http"),
            "{err}"
        );
        assert!(!err.contains(TOKEN) && stdout(&out).is_empty(), "{err}");
    }
    assert_nothing_reached(&api, "refused register");
    // The flag lets the same request through (here: --dry-run prints it).
    let out = register(&path, &api_url, &["--dry-run", "--insecure-http"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("POST {api_url}/api/v1/")));
    // https is never refused: the dry run goes through without the flag.
    let out = register(&path, "https://region.example.net", &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn upload_refuses_an_http_endpoint_unless_insecure_http() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let (endpoint, endpoint_url) = silent_server();
    let upload = |extra: &[&str]| {
        imgbake()
            .arg("upload")
            .arg(&image)
            .args(["--to", "s3://images/gpu/", "--endpoint", &endpoint_url])
            .args(["--region", "eu-west-1", "--path-style"])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "AKIDCLITEST")
            .env("AWS_SECRET_ACCESS_KEY", "cli-secret-key-27182")
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-credentials"),
            )
            .env("NO_COLOR", "1")
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap()
    };
    let out = upload(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("the S3 endpoint {endpoint_url}/ is plain http")),
        "{err}"
    );
    assert!(err.contains("--insecure-http"), "{err}");
    assert!(!err.contains("cli-secret-key"), "{err}");
    assert_nothing_reached(&endpoint, "refused upload");
}

#[test]
fn register_and_upload_help_explain_the_checks() {
    // Words, not lines: help text is wrapped to the terminal.
    let words =
        |out: &std::process::Output| stdout(out).split_whitespace().collect::<Vec<_>>().join(" ");
    let out = imgbake().args(["register", "--help"]).output().unwrap();
    let text = words(&out);
    for wanted in [
        "--wait",
        "--wait-timeout",
        "55 AA",
        "at most once",
        "JSON path",
        "--insecure-http",
    ] {
        assert!(
            text.contains(wanted),
            "register help lacks {wanted:?}:\n{text}"
        );
    }
    let out = imgbake().args(["upload", "--help"]).output().unwrap();
    let text = words(&out);
    for wanted in [
        "--public",
        "public-read",
        "bucket policy",
        "--insecure-http",
    ] {
        assert!(
            text.contains(wanted),
            "upload help lacks {wanted:?}:\n{text}"
        );
    }
}
