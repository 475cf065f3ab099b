//! Where output goes and how it looks: colour decisions and log set-up.

use std::io::IsTerminal;

use crate::cli::ColorChoice;

/// Colour settings for stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Colour stdout.
    pub color_stdout: bool,
    /// Colour stderr.
    pub color_stderr: bool,
}

impl Output {
    pub fn new(choice: ColorChoice) -> Output {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let decide = |tty: bool| match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        Output {
            color_stdout: decide(std::io::stdout().is_terminal()),
            color_stderr: decide(std::io::stderr().is_terminal()),
        }
    }

    /// Painter for stdout.
    pub fn stdout(&self) -> Paint {
        Paint(self.color_stdout)
    }

    /// Painter for stderr.
    pub fn stderr(&self) -> Paint {
        Paint(self.color_stderr)
    }
}

/// Wraps text in ANSI styles when colour is on (a few fixed SGR codes; no crate needed).
#[derive(Debug, Clone, Copy)]
pub struct Paint(bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    pub fn error(self, text: &str) -> String {
        self.wrap("1;31", text)
    }
    pub fn hint(self, text: &str) -> String {
        self.wrap("1;36", text)
    }
    pub fn ok(self, text: &str) -> String {
        self.wrap("1;32", text)
    }
    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }
    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }
}

/// Logs (tracing) go to stderr: warnings by default, more with -v; `IMGBAKE_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGBAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
