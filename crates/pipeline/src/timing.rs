//! Timing facts for `run.json`: how long the tool waited compared with the guest's own boot.

use std::path::Path;

/// The guest's uptime (seconds) when cloud-init said it finished, read from the serial log.
///
/// cloud-init prints, on the console, a line like
/// `Cloud-init v. 22.4.2 finished at Wed, 25 Nov 2026 18:30:01 +0000. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 31.42 seconds`.
/// The first such line counts: it is the first boot, the one the tool waited for (a reboot
/// step prints another).
pub fn cloud_init_finished_uptime(serial_log: &Path) -> Option<f64> {
    let text = std::fs::read(serial_log).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .filter(|line| line.contains("Cloud-init v.") && line.contains("finished at"))
        .filter_map(|line| {
            let (_, tail) = line.rsplit_once("Up ")?;
            tail.split_whitespace().next()?.parse::<f64>().ok()
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_boots_finished_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(
            &log,
            "[   1.0] boot\r\n\
             Cloud-init v. 22.4.2 finished at Wed, 25 Nov 2026 18:30:01 +0000. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 31.42 seconds\r\n\
             reboot\r\n\
             Cloud-init v. 22.4.2 finished at Wed, 25 Nov 2026 18:31:01 +0000. Datasource DataSourceNoCloud.  Up 12.50 seconds\r\n",
        )
        .unwrap();
        assert_eq!(cloud_init_finished_uptime(&log), Some(31.42));
        std::fs::write(&log, "no cloud-init here\n").unwrap();
        assert_eq!(cloud_init_finished_uptime(&log), None);
    }
}
