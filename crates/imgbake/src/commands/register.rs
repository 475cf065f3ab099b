//! `imgbake register PAYLOAD --uri URL`: POST the image payload to the Nscale region API.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use publish::{
    ApiTarget, ApiToken, Creation, Payload, RegisterEvent, Registrar, RetryPolicy, WaitOptions,
};

use crate::output::Output;
use crate::report::{self, CliError, ExitStatus, exit_status_help, stdout_err};

pub const LONG_ABOUT: &str = "\
Register an uploaded image with the Nscale region API: set spec.uri in PAYLOAD (the \
api-payload.json the export writes) to --uri and POST it to \
{api}/api/v1/organizations/{org}/regions/{region}/images.

Before sending, the payload is checked against the API's image schema (every problem is \
printed with its JSON path; --dry-run checks too), and the image URL is read the way the API \
will read it: the first 512 bytes, without credentials, must be a RAW disk (55 AA at byte 510). \
A qcow2 or private URL is refused before anything is registered.

An image is registered at most once: an image of the same name already in the region is \
reported, not duplicated; after a server error (5xx) or a lost answer the image list is read \
before any retry, because the create may have happened anyway. 401, 403, 404 and 422 fail at \
once with what is wrong. --wait then polls the image until it is ready (or failed).

The bearer token is read from the environment variable named by --token-env (default \
NSCALE_API_TOKEN). It is never printed or logged, not even with -vvv; --dry-run shows the \
request with the token redacted. An http:// API URL is refused (the token would travel in \
clear) unless --insecure-http is given, e.g. for a test server on this machine.";

pub const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    export NSCALE_API_TOKEN=…\n",
    "    imgbake register out/api-payload.json --uri https://images.example.net/gpu/nvidia-fw1.raw \\\n",
    "        --api https://region.example.net --org my-org --region eu-west-1\n",
    "    imgbake register out/api-payload.json --uri https://… --dry-run\n",
    "    imgbake register out/api-payload.json --uri https://… --wait --wait-timeout 30m\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The API payload (api-payload.json)
    #[arg(value_name = "PAYLOAD")]
    pub payload: PathBuf,
    /// The image's URL, written into the payload's spec.uri
    #[arg(long, value_name = "URL")]
    pub uri: String,
    /// Base URL of the region API
    #[arg(long, value_name = "URL", env = "NSCALE_API_URL")]
    pub api: String,
    /// Organization id
    #[arg(long, value_name = "ORG", env = "NSCALE_ORGANIZATION_ID")]
    pub org: String,
    /// Region id
    #[arg(long, value_name = "REGION", env = "NSCALE_REGION_ID")]
    pub region: String,
    /// Environment variable that holds the bearer token
    #[arg(long, value_name = "NAME", default_value = publish::DEFAULT_TOKEN_ENV)]
    pub token_env: String,
    /// Allow an http:// API URL: the bearer token then crosses the network unencrypted
    #[arg(long)]
    pub insecure_http: bool,
    /// Print the request (token redacted) instead of sending it
    #[arg(long)]
    pub dry_run: bool,
    /// Print the API's answer as JSON
    #[arg(long)]
    pub json: bool,
    /// After registering, poll the image until it is ready (an import that fails is an error)
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (with --wait)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration, requires = "wait")]
    pub wait_timeout: Duration,
}

/// Runs `imgbake register`.
pub fn run(args: &RegisterArgs, out: &Output) -> Result<ExitStatus, CliError> {
    let fail = |e: &dyn std::error::Error| {
        let _ = report::write_error(&mut std::io::stderr().lock(), e, None, out.stderr());
        Ok(ExitStatus::Failure)
    };
    let prepared = ApiTarget::new(&args.api, &args.org, &args.region).and_then(|target| {
        let payload = Payload::from_file(&args.payload)?.with_uri(&args.uri)?;
        Ok((target, payload))
    });
    let (target, payload) = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if !args.insecure_http
        && let Err(e) = target.refuse_plain_http()
    {
        return Ok(report::refuse_plain_http(&e, out));
    }
    let mut stdout = std::io::stdout().lock();
    if args.dry_run {
        return match Registrar::dry_run(&target, &payload, &format!("${}", args.token_env)) {
            Ok(dry) => {
                write!(stdout, "{dry}").map_err(stdout_err)?;
                Ok(ExitStatus::Success)
            }
            Err(e) => fail(&e),
        };
    }
    let registrar = match ApiToken::from_env(&args.token_env)
        .and_then(|token| Registrar::new(target, token, RetryPolicy::default()))
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let paint = out.stderr();
    let progress = |event: RegisterEvent| {
        let line = match event {
            RegisterEvent::CheckingUri { uri } => {
                format!("checking {uri} (first 512 bytes, without credentials)")
            }
            RegisterEvent::UriReadable { size, .. } => match size {
                Some(size) => format!("image uri: a readable RAW disk of {size} bytes"),
                None => "image uri: a readable RAW disk".to_owned(),
            },
            RegisterEvent::LookingForName { name } => format!("looking for {name} in the region"),
            RegisterEvent::Posting { attempt: 1 } => "registering".to_owned(),
            RegisterEvent::Posting { attempt } => format!("registering (attempt {attempt})"),
            RegisterEvent::PostFailed { reason, wait, .. } => format!(
                "{} {reason}; checking whether the image was created in {:.1}s",
                paint.error("failed:"),
                wait.as_secs_f64()
            ),
            RegisterEvent::NotCreated { name } => format!("{name} was not created; retrying"),
            RegisterEvent::Registered { id, state } => format!("image {id}: {state}"),
            RegisterEvent::State { state, elapsed, .. } => {
                format!("{state} after {}s", elapsed.as_secs())
            }
            _ => return,
        };
        eprintln!("{}", paint.dim(&line));
    };
    let result = runtime.block_on(async {
        let signals = crate::signals::Signals::listen(crate::signals::announce_nothing);
        let cancel = signals.token();
        let done = registrar
            .register_with_events(&payload, &progress, &cancel)
            .await?;
        let ready = if args.wait {
            let options = WaitOptions {
                timeout: args.wait_timeout,
                ..WaitOptions::default()
            };
            Some(
                registrar
                    .wait_until_ready(&done.image, options, &progress, &cancel)
                    .await?,
            )
        } else {
            None
        };
        Ok::<_, publish::Error>((done, ready))
    });
    let (done, ready) = match result {
        Ok(done) => done,
        Err(e) => return fail(&e),
    };
    if args.json {
        writeln!(stdout, "{:#}", done.response).map_err(stdout_err)?;
    } else {
        let paint = out.stdout();
        let how = match &done.creation {
            Creation::Created if done.attempts > 1 => {
                format!("after {} attempts", done.attempts)
            }
            Creation::Created => "created".to_owned(),
            Creation::FoundAfterFailure { .. } => {
                "created by a request whose answer failed; found in the image list".to_owned()
            }
        };
        let state = ready.as_ref().unwrap_or(&done.image).state.clone();
        writeln!(
            stdout,
            "{} registered {} as {} at {} ({how}); state: {state}",
            paint.ok("ok:"),
            done.image.name,
            done.image.id,
            done.url,
        )
        .map_err(stdout_err)?;
        writeln!(stdout, "{:#}", done.response).map_err(stdout_err)?;
    }
    Ok(ExitStatus::Success)
}
