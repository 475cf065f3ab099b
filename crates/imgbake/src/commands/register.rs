//! `imgbake register PAYLOAD --uri URL`: POST the image payload to the Nscale region API.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use publish::{ApiTarget, ApiToken, Payload, Registrar, RetryPolicy};

use crate::output::Output;
use crate::report::{self, CliError, ExitStatus, exit_status_help, stdout_err};

const LONG_ABOUT: &str = "\
Register an uploaded image with the Nscale region API: set spec.uri in PAYLOAD (the \
api-payload.json the export writes) to --uri and POST it to \
{api}/api/v1/organizations/{org}/regions/{region}/images.

The bearer token is read from the environment variable named by --token-env (default \
NSCALE_API_TOKEN). It is never printed or logged, not even with -vvv; --dry-run shows the \
request with the token redacted. Server errors (5xx) and connection failures are retried with \
backoff; 400, 401, 403 and 409 fail at once with the server's message.";

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    export NSCALE_API_TOKEN=…\n",
    "    imgbake register out/api-payload.json --uri https://images.example.net/gpu/nvidia-fw1.raw \\\n",
    "        --api https://region.example.net --org my-org --region eu-west-1\n",
    "    imgbake register out/api-payload.json --uri https://… --dry-run\n",
    "\n",
    exit_status_help!(),
);

/// `imgbake register`.
#[derive(Debug, Args)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
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
    /// Print the request (token redacted) instead of sending it
    #[arg(long)]
    pub dry_run: bool,
    /// Print the API's answer as JSON
    #[arg(long)]
    pub json: bool,
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
    let mut stdout = std::io::stdout().lock();
    if args.dry_run {
        let dry = Registrar::dry_run(&target, &payload, &format!("${}", args.token_env));
        write!(stdout, "{dry}").map_err(stdout_err)?;
        return Ok(ExitStatus::Success);
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
    let result = runtime.block_on(async {
        let cancel = super::cancel_on_ctrl_c();
        registrar.register(&payload, &cancel).await
    });
    let done = match result {
        Ok(done) => done,
        Err(e) => return fail(&e),
    };
    if args.json {
        writeln!(stdout, "{:#}", done.response).map_err(stdout_err)?;
    } else {
        let paint = out.stdout();
        writeln!(
            stdout,
            "{} registered at {} ({}{})",
            paint.ok("ok:"),
            done.url,
            done.status,
            if done.attempts > 1 {
                format!(", after {} attempts", done.attempts)
            } else {
                String::new()
            }
        )
        .map_err(stdout_err)?;
        writeln!(stdout, "{:#}", done.response).map_err(stdout_err)?;
    }
    Ok(ExitStatus::Success)
}
