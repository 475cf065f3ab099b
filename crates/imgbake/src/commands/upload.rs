//! `imgbake upload IMAGE --to s3://bucket/prefix/`: S3 multipart upload with a progress bar.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use digest::Sha256;
use indicatif::{ProgressBar, ProgressStyle};
use publish::{
    Acl, AclOutcome, Addressing, AwsConfig, Error, RetryPolicy, S3Location, S3Settings,
    UploadEvent, UploadOptions, UploadStatus, Uploader, UriCheck,
};

use crate::output::Output;
use crate::report::{self, CliError, ExitStatus, exit_status_help, stdout_err};

pub const LONG_ABOUT: &str = "\
Upload IMAGE to S3 or any S3-compatible storage, as a multipart upload with several parts in \
flight at once, and print the object's URL (and a public URL when one is known).

The object records the image's sha256 as metadata (x-amz-meta-sha256). If the object is \
already there with the same sha256 and size, nothing is uploaded. An upload that fails or is \
interrupted (Ctrl-C) is aborted on the server, so no parts are left behind.

The Nscale region API reads the image without credentials. --public stores the object with a \
public-read ACL (x-amz-acl); endpoints that refuse ACLs (buckets with ACLs disabled, Block \
Public Access) get the object without one, and then only a bucket policy that allows \
anonymous reads makes it readable. After the upload, the public URL (else the object URL) is \
read like the API reads it: the first 512 bytes, without credentials, must be a RAW disk. \
With --public a failed check is an error; without, a note.

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), or \
from the profile named by AWS_PROFILE (default: default) in ~/.aws/credentials and \
~/.aws/config. The region comes from --region, AWS_REGION, AWS_DEFAULT_REGION or the \
profile; the endpoint from --endpoint, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the \
profile's endpoint_url. An http:// endpoint is refused (signed requests and the image would \
travel in clear) unless --insecure-http is given, e.g. for a test server on this machine.";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake upload out/nvidia-fw1.raw --to s3://images/gpu/ --public\n",
    "    imgbake upload out/nvidia-fw1.raw --to s3://images/gpu/ --endpoint https://objects.example.net \\\n",
    "        --region eu-west-1 --path-style --public-url-base https://images.example.net/\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The image file to upload
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Destination: s3://bucket/prefix/ (the image's file name is appended) or s3://bucket/key
    #[arg(long, value_name = "S3_URL")]
    pub to: String,
    /// Endpoint of an S3-compatible service (default: AWS for the region)
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Signing region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, us-east-1)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Address the bucket in the path (https://host/bucket/key), not the host name
    #[arg(long)]
    pub path_style: bool,
    /// Base URL under which the bucket's objects are publicly readable
    #[arg(long, value_name = "URL")]
    pub public_url_base: Option<String>,
    /// The image's sha256 when known (from SHA256SUMS); otherwise it is hashed first
    #[arg(long, value_name = "HEX", value_parser = Sha256::parse_prefixed)]
    pub sha256: Option<Sha256>,
    /// Part size in MiB (5 to 5120; raised when the image would need over 10000 parts)
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub part_size: u64,
    /// Parts in flight at once (1 to 64)
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Make the object readable without credentials (public-read ACL), as the region API needs
    #[arg(long)]
    pub public: bool,
    /// Allow an http:// endpoint: signed requests and the image then cross the network
    /// unencrypted
    #[arg(long)]
    pub insecure_http: bool,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Runs `imgbake upload`.
pub fn run(args: &UploadArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let fail = |e: &dyn std::error::Error, hint: Option<&str>| {
        let _ = report::write_error(
            &mut std::io::stderr().lock(),
            e,
            hint.map(str::to_owned),
            out.stderr(),
        );
        Ok(ExitStatus::Failure)
    };
    let to: S3Location = match args.to.parse() {
        Ok(to) => to,
        Err(e) => return fail(&e, Some("write the destination as s3://bucket/prefix/")),
    };
    let settings = S3Settings {
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        addressing: args.path_style.then_some(Addressing::Path),
        public_url_base: args.public_url_base.clone(),
    };
    let options = UploadOptions {
        part_size: args.part_size.saturating_mul(1 << 20),
        concurrency: args.parallel,
        acl: if args.public {
            Acl::PublicRead
        } else {
            Acl::BucketDefault
        },
        ..UploadOptions::default()
    };
    let uploader = match AwsConfig::from_env().and_then(|aws| Uploader::new(settings, aws, options))
    {
        Ok(u) => u,
        Err(e) => return fail(&e, None),
    };
    if !args.insecure_http
        && let Err(e) = uploader.refuse_plain_http()
    {
        return Ok(report::refuse_plain_http(&e, out));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, None),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = runtime.block_on(async {
        let signals = crate::signals::Signals::listen(crate::signals::announce_nothing);
        let cancel = signals.token();
        let pb = bar.clone();
        let events = move |event: UploadEvent| render(&pb, event);
        let outcome = uploader
            .upload(&args.image, &to, args.sha256, events, &cancel)
            .await?;
        // The same anonymous read the region API makes before it accepts the image.
        let url = outcome.public_url.as_ref().unwrap_or(&outcome.object_url);
        let check = UriCheck::new(RetryPolicy::default())?
            .check(url.as_str(), &cancel)
            .await;
        Ok::<_, Error>((outcome, check))
    });
    bar.finish_and_clear();
    let (outcome, check) = match result {
        Ok(done) => done,
        Err(e) => return fail(&e, None),
    };
    let refused_acl = match &outcome.acl {
        AclOutcome::Refused { code, message } => Some(format!(
            "the endpoint refused the public-read ACL ({code}: {message}); the object is stored \
             without it, so the bucket policy must allow anonymous reads (s3:GetObject for \
             everyone on {}/*)",
            outcome.bucket
        )),
        _ => None,
    };
    if let Err(e) = &check {
        if args.public {
            return fail(e, refused_acl.as_deref());
        }
        let paint = out.stderr();
        eprintln!(
            "{} {e}\n  the region API cannot import it like this; upload with --public",
            paint.hint("note:")
        );
    } else if let Some(refused) = &refused_acl {
        eprintln!("{} {refused}", out.stderr().hint("note:"));
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "format": "imgbake-upload/1",
            "s3_uri": outcome.s3_uri,
            "object_url": outcome.object_url.as_str(),
            "public_url": outcome.public_url.as_ref().map(|u| u.as_str()),
            "sha256": outcome.sha256.to_hex(),
            "size": outcome.size,
            "already_present": outcome.status == UploadStatus::AlreadyPresent,
            "acl": match &outcome.acl {
                AclOutcome::NotRequested => None,
                AclOutcome::PublicRead => Some("public-read"),
                AclOutcome::Refused { .. } => Some("refused"),
            },
            "anonymously_readable_raw": check.is_ok(),
        });
        writeln!(stdout, "{doc:#}").map_err(stdout_err)?;
        return Ok(ExitStatus::Success);
    }
    let paint = out.stdout();
    let what = match outcome.status {
        UploadStatus::Uploaded { parts } => format!("uploaded in {parts} part(s)"),
        UploadStatus::AlreadyPresent => {
            "already there with the same sha256; nothing uploaded".into()
        }
    };
    writeln!(stdout, "{} {} ({what})", paint.ok("ok:"), outcome.s3_uri).map_err(stdout_err)?;
    writeln!(stdout, "object url: {}", outcome.object_url).map_err(stdout_err)?;
    if let Some(public) = &outcome.public_url {
        writeln!(stdout, "public url: {public}").map_err(stdout_err)?;
    }
    writeln!(stdout, "sha256:     {}", outcome.sha256).map_err(stdout_err)?;
    if check.is_ok() {
        writeln!(
            stdout,
            "readable:   without credentials, a RAW disk (as the region API needs)"
        )
        .map_err(stdout_err)?;
    }
    Ok(ExitStatus::Success)
}

fn render(bar: &ProgressBar, event: UploadEvent) {
    match event {
        UploadEvent::Hashing { done, total } => {
            bar.set_message("hashing");
            bar.set_length(total);
            bar.set_position(done);
        }
        UploadEvent::Checking { .. } => bar.set_message("checking"),
        UploadEvent::Started { total, .. } => {
            bar.set_message("uploading");
            bar.set_length(total);
            bar.reset();
        }
        UploadEvent::Progress { sent, .. } => bar.set_position(sent),
        UploadEvent::Completing => bar.set_message("completing"),
        UploadEvent::Aborting { .. } => bar.set_message("aborting"),
        UploadEvent::Replacing { previous_sha256 } => bar.println(format!(
            "replacing the existing object (sha256 {})",
            previous_sha256.as_deref().unwrap_or("unknown")
        )),
        UploadEvent::AclRefused { code } => {
            bar.println(format!("the endpoint refused the public-read ACL ({code})"));
        }
        UploadEvent::Aborted { upload_id } => {
            bar.println(format!(
                "aborted multipart upload {upload_id}; nothing left on the server"
            ));
        }
        _ => {}
    }
}
