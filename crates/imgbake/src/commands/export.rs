//! `imgbake export QCOW2 --output DIR`: sparse RAW (and compressed qcow2) plus SHA256SUMS.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use exporter::{ExportEvent, ExportFormat, ExportRequest, Stage};

use crate::output::Output;
use crate::report::{CliError, ExitStatus, exit_status_help, stdout_err};

const LONG_ABOUT: &str = "\
Export a disk image: `qemu-img check`, then `qemu-img convert` to a sparse RAW (and, with \
--format qcow2, a compressed qcow2), each written under a temporary name and renamed when \
complete, then SHA256SUMS (checkable with `sha256sum -c`). Ctrl-C stops qemu-img and removes \
the partial file. The free space is checked first (`qemu-img measure`); a full file system \
fails naming the path, the space needed and the space free, and leaves nothing behind. The \
output directory is locked (`.imgbake.lock`) while the export runs.";

const AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    imgbake export work/disk.qcow2 --output out\n",
    "    imgbake export work/disk.qcow2 --output out --format raw,qcow2 --name ubuntu-2204-nvidia-565\n",
    "\n",
    exit_status_help!(),
);

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Sparse RAW
    Raw,
    /// Compressed qcow2
    Qcow2,
}

/// `imgbake export`.
#[derive(Debug, Args)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct ExportArgs {
    /// The disk to export (usually the build's qcow2)
    #[arg(value_name = "QCOW2")]
    pub source: PathBuf,
    /// Output directory
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Output formats (RAW is always written)
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw")]
    pub format: Vec<FormatArg>,
    /// Base name of the outputs (default: the source's file stem)
    #[arg(long)]
    pub name: Option<String>,
}

fn stage_name(stage: Stage) -> String {
    match stage {
        Stage::Check => "check".into(),
        Stage::Convert(f) => format!("convert {}", f.extension()),
        Stage::Hash(f) => format!("sha256 {}", f.extension()),
    }
}

/// Runs `imgbake export`.
pub fn run(args: &ExportArgs, _out: &Output) -> Result<ExitStatus, CliError> {
    let name = args.name.clone().unwrap_or_else(|| {
        args.source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    });
    let mut req = ExportRequest::new(&args.source, &args.output, name);
    req.formats = args
        .format
        .iter()
        .map(|f| match f {
            FormatArg::Raw => ExportFormat::Raw,
            FormatArg::Qcow2 => ExportFormat::Qcow2,
        })
        .collect();
    // One writer per directory: a build or another export there fails at once.
    let lock = exporter::OutputLock::acquire(&args.output, "export").map_err(CliError::Export)?;
    let runtime = super::runtime()?;
    let result = runtime.block_on(async {
        let signals = crate::signals::Signals::listen(crate::signals::announce_nothing);
        let cancel = signals.token();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let line = match event {
                    ExportEvent::Started { stage } => format!("{} …", stage_name(stage)),
                    ExportEvent::Finished { stage, elapsed } => {
                        format!(
                            "{} done in {:.1} s",
                            stage_name(stage),
                            elapsed.as_secs_f64()
                        )
                    }
                    ExportEvent::SourceLeaks { leaks } => {
                        format!("warning: source has {leaks} leaked cluster(s) (harmless)")
                    }
                    ExportEvent::Progress { .. } => continue,
                };
                eprintln!("{line}");
            }
        });
        let result = exporter::export(&req, tx, &cancel).await;
        let _ = printer.await;
        result
    });
    lock.release();
    match result {
        Err(e) => Err(CliError::Export(e)),
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            for f in &output.files {
                writeln!(
                    stdout,
                    "{}  {}  ({} bytes, {} allocated)",
                    f.sha256,
                    f.path.display(),
                    f.size,
                    f.allocated
                )
                .map_err(stdout_err)?;
            }
            writeln!(stdout, "{}", output.sha256sums.display()).map_err(stdout_err)?;
            Ok(ExitStatus::Success)
        }
    }
}
