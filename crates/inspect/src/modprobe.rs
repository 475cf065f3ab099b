//! modprobe.d(5) and kernel command line parsing, limited to what decides a module option.
//!
//! Semantics followed (kmod's `libkmod-config.c`):
//! - configuration directories, highest priority first: `/etc/modprobe.d`, `/run/modprobe.d`,
//!   `/usr/local/lib/modprobe.d`, `/usr/lib/modprobe.d`, `/lib/modprobe.d`;
//! - only files ending in `.conf` and not starting with `.` are read; a file name present in
//!   several directories is read only from the highest-priority one (so `/etc` overrides `/lib`);
//! - the chosen files are read in lexical order of their *names*, whatever their directory;
//! - `options MODULE …` lines accumulate in that order, and kmod appends the kernel command
//!   line's `MODULE.param=value` options after all files, so the last value of a parameter wins
//!   (the kernel parses module parameters left to right);
//! - `-` and `_` are the same in module and parameter names; a trailing `\` continues a line.

use serde::Serialize;

/// The configuration directories in kmod's priority order (first wins for equal names).
pub const CONFIG_DIRS: [&str; 5] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

/// One configuration file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfFile {
    /// Index into [`CONFIG_DIRS`] (lower = higher priority).
    pub dir: usize,
    /// File name.
    pub name: String,
    /// Where it was read from, for reports (`/etc/modprobe.d/nvidia.conf`).
    pub location: String,
    /// Its contents.
    pub text: String,
}

/// Whether kmod reads a file with this name.
pub fn is_config_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > ".conf".len() && name.ends_with(".conf")
}

/// Orders `files` as kmod reads them and drops the ones overridden by a same-named file in a
/// higher-priority directory. Returns `(read, shadowed)`, where each shadowed entry names the
/// file that overrides it.
pub fn order_files(mut files: Vec<ConfFile>) -> (Vec<ConfFile>, Vec<(ConfFile, String)>) {
    files.retain(|f| is_config_name(&f.name));
    files.sort_by(|a, b| a.name.cmp(&b.name).then(a.dir.cmp(&b.dir)));
    let mut read: Vec<ConfFile> = Vec::new();
    let mut shadowed = Vec::new();
    for file in files {
        match read.last() {
            Some(winner) if winner.name == file.name => {
                let by = winner.location.clone();
                shadowed.push((file, by));
            }
            _ => read.push(file),
        }
    }
    (read, shadowed)
}

/// Joins `\`-continued lines and drops comments, yielding `(line number, logical line)`.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = raw.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            pending = Some((start, acc));
            continue;
        }
        acc.push_str(raw);
        out.push((start, acc));
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out.into_iter()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .collect()
}

/// Splits a parameter string like the kernel's `next_arg`: whitespace separates, double quotes
/// group (and are removed from the value), `key=value` or a bare `key`.
pub fn split_params(s: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut in_quote = false;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() && !in_quote {
                break;
            }
            chars.next();
            if c == '"' {
                in_quote = !in_quote;
                continue;
            }
            word.push(c);
        }
        match word.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((word, None)),
        }
    }
    out
}

/// Normalises a module or parameter name (`-` → `_`).
pub fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// One `param=value` given to a module, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamOccurrence {
    /// `file:line`, or a description of the command line it came from.
    pub location: String,
    /// Parameter name as written.
    pub param: String,
    /// Value as written (quotes removed); `None` for a bare flag.
    pub value: Option<String>,
}

/// Every `options MODULE` parameter in `text`, in order.
pub fn module_options(location: &str, text: &str, module: &str) -> Vec<ParamOccurrence> {
    let module = norm(module);
    let mut out = Vec::new();
    for (line_no, line) in logical_lines(text) {
        let mut words = line.split_whitespace();
        if words.next() != Some("options") {
            continue;
        }
        let Some(m) = words.next() else { continue };
        if norm(m) != module {
            continue;
        }
        let rest = line
            .trim_start()
            .strip_prefix("options")
            .map(|r| r.trim_start())
            .and_then(|r| r.strip_prefix(m))
            .unwrap_or("");
        for (param, value) in split_params(rest) {
            out.push(ParamOccurrence {
                location: format!("{location}:{line_no}"),
                param,
                value,
            });
        }
    }
    out
}

/// The `MODULE.param=value` options for `module` on a kernel command line.
pub fn cmdline_options(location: &str, cmdline: &str, module: &str) -> Vec<ParamOccurrence> {
    let module = norm(module);
    split_params(cmdline)
        .into_iter()
        .filter_map(|(key, value)| {
            let (m, param) = key.split_once('.')?;
            (norm(m) == module).then(|| ParamOccurrence {
                location: location.to_string(),
                param: param.to_string(),
                value,
            })
        })
        .collect()
}

/// Parses an unsigned value the way the kernel's `kstrtouint(s, 0)` does: `0x` hex, a leading
/// `0` octal, else decimal; `None` when the kernel would reject it (and refuse to load the module).
pub fn parse_uint(s: &str) -> Option<u32> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let s = s.strip_suffix('\n').unwrap_or(s);
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// Evaluates the `GRUB_CMDLINE_LINUX` and `GRUB_CMDLINE_LINUX_DEFAULT` assignments of
/// `/etc/default/grub` followed by `/etc/default/grub.d/*.cfg` (sourced in that order), with
/// `$VAR`/`${VAR}` expansion of earlier values. Returns `(variable, value, file:line)` of the
/// final assignment of each variable.
pub fn grub_default_cmdlines(files: &[(String, String)]) -> Vec<(String, String, String)> {
    let mut vars: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for (location, text) in files {
        for (line_no, line) in logical_lines(text) {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((name, raw)) = line.split_once('=') else {
                continue;
            };
            if !name.starts_with("GRUB_CMDLINE_LINUX") {
                continue;
            }
            let value = shell_value(raw, &vars);
            vars.insert(name.to_string(), (value, format!("{location}:{line_no}")));
        }
    }
    vars.into_iter()
        .filter(|(k, _)| k == "GRUB_CMDLINE_LINUX" || k == "GRUB_CMDLINE_LINUX_DEFAULT")
        .map(|(k, (v, loc))| (k, v, loc))
        .collect()
}

/// A small subset of shell word evaluation: quotes, backslash escapes, `$VAR` and `${VAR}`.
fn shell_value(raw: &str, vars: &std::collections::BTreeMap<String, (String, String)>) -> String {
    let mut out = String::new();
    let mut chars = raw.trim().chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, c) if c.is_whitespace() => break,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            (Some('"') | None, '$') => {
                let braced = chars.peek() == Some(&'{');
                if braced {
                    chars.next();
                }
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if braced && chars.peek() == Some(&'}') {
                    chars.next();
                }
                if let Some((v, _)) = vars.get(&name) {
                    out.push_str(v);
                }
            }
            (_, c) => out.push(c),
        }
    }
    out
}

/// The `linux`/`linuxefi` command lines in a grub.cfg, in file order, as `(line, args)`
/// with the kernel path removed.
pub fn grub_cfg_linux_lines(text: &str) -> Vec<(usize, String)> {
    logical_lines(text)
        .into_iter()
        .filter_map(|(n, line)| {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("linux" | "linuxefi" | "linux16") => {
                    words.next()?;
                    Some((n, words.collect::<Vec<_>>().join(" ")))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: usize, name: &str) -> ConfFile {
        ConfFile {
            dir,
            name: name.into(),
            location: format!("{}/{name}", CONFIG_DIRS[dir]),
            text: String::new(),
        }
    }

    #[test]
    fn etc_overrides_lib_and_names_sort_across_dirs() {
        let (read, shadowed) = order_files(vec![
            conf(4, "nvidia.conf"),
            conf(0, "nvidia.conf"),
            conf(4, "aa.conf"),
            conf(0, "zz.conf"),
            conf(0, ".hidden.conf"),
            conf(0, "README"),
        ]);
        let got: Vec<_> = read.iter().map(|f| f.location.as_str()).collect();
        assert_eq!(
            got,
            [
                "/lib/modprobe.d/aa.conf",
                "/etc/modprobe.d/nvidia.conf",
                "/etc/modprobe.d/zz.conf"
            ]
        );
        assert_eq!(shadowed.len(), 1);
        assert_eq!(shadowed[0].0.location, "/lib/modprobe.d/nvidia.conf");
        assert_eq!(shadowed[0].1, "/etc/modprobe.d/nvidia.conf");
    }

    #[test]
    fn options_lines_with_quotes_and_continuations() {
        let text = "# c\noptions nvidia-drm modeset=1\noptions nvidia NVreg_EnableGpuFirmware=0x11 \\\n  NVreg_RegistryDwords=\"A=1;EnableGpuFirmware=2\"\n";
        let occ = module_options("/f", text, "nvidia");
        assert_eq!(occ.len(), 2);
        assert_eq!(occ[0].location, "/f:3");
        assert_eq!(occ[0].value.as_deref(), Some("0x11"));
        assert_eq!(occ[1].param, "NVreg_RegistryDwords");
        assert_eq!(occ[1].value.as_deref(), Some("A=1;EnableGpuFirmware=2"));
        assert!(module_options("/f", text, "nvidia_drm")[0].param == "modeset");
    }

    #[test]
    fn uint_like_kstrtouint() {
        assert_eq!(parse_uint("18"), Some(18));
        assert_eq!(parse_uint("0x11"), Some(17));
        assert_eq!(parse_uint("0X12"), Some(18));
        assert_eq!(parse_uint("021"), Some(17));
        assert_eq!(parse_uint("0"), Some(0));
        assert_eq!(parse_uint("-1"), None);
        assert_eq!(parse_uint("one"), None);
        assert_eq!(parse_uint(""), None);
    }

    #[test]
    fn cmdline_picks_module_params() {
        let occ = cmdline_options(
            "grub",
            "ro quiet nvidia.NVreg_EnableGpuFirmware=1 nvidia-drm.modeset=1 nvidia.NVreg_RegistryDwords=\"EnableGpuFirmware=17\"",
            "nvidia",
        );
        assert_eq!(occ.len(), 2);
        assert_eq!(occ[0].value.as_deref(), Some("1"));
        assert_eq!(occ[1].value.as_deref(), Some("EnableGpuFirmware=17"));
    }

    #[test]
    fn grub_defaults_expand_and_override() {
        let files = vec![
            (
                "/etc/default/grub".to_string(),
                "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\nGRUB_CMDLINE_LINUX=\"\"\n".to_string(),
            ),
            (
                "/etc/default/grub.d/50-cloudimg-settings.cfg".to_string(),
                "GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty1 console=ttyS0\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"${GRUB_CMDLINE_LINUX_DEFAULT} nvidia.NVreg_EnableGpuFirmware=1\" # set\n".to_string(),
            ),
        ];
        let got = grub_default_cmdlines(&files);
        assert_eq!(got[0].0, "GRUB_CMDLINE_LINUX");
        assert_eq!(got[0].1, "");
        assert_eq!(
            got[1].1,
            "console=tty1 console=ttyS0 nvidia.NVreg_EnableGpuFirmware=1"
        );
        assert_eq!(got[1].2, "/etc/default/grub.d/50-cloudimg-settings.cfg:2");
    }

    #[test]
    fn grub_cfg_linux_lines_drop_kernel_path() {
        let cfg = "menuentry 'Ubuntu' {\n\tlinux\t/boot/vmlinuz-6.8.0-48-generic root=LABEL=cloudimg-rootfs ro nvidia.NVreg_EnableGpuFirmware=1\n\tinitrd\t/boot/initrd.img\n}\n";
        let lines = grub_cfg_linux_lines(cfg);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, 2);
        assert_eq!(
            lines[0].1,
            "root=LABEL=cloudimg-rootfs ro nvidia.NVreg_EnableGpuFirmware=1"
        );
    }
}
