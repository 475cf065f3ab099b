//! The bench results: a table for people, `report.json` for tools.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// A speed goal from the issues.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// The value must not exceed this.
    AtMost(f64),
    /// The value must reach at least this.
    AtLeast(f64),
    /// The value must stay strictly below this.
    Below(f64),
}

impl Goal {
    pub fn met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(limit) => value <= limit,
            Goal::AtLeast(limit) => value >= limit,
            Goal::Below(limit) => value < limit,
        }
    }

    fn text(self, unit: &str) -> String {
        let unit = if unit == "ratio" { "" } else { unit };
        match self {
            Goal::AtMost(l) => format!("<= {l}{unit}"),
            Goal::AtLeast(l) => format!(">= {l}{unit}"),
            Goal::Below(l) => format!("< {l}{unit}"),
        }
    }
}

/// One bench's result.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The bench's name.
    pub name: &'static str,
    /// The figure the goal is about.
    pub value: f64,
    /// `ratio` or a unit such as `s`.
    pub unit: &'static str,
    /// The goal.
    pub goal: Goal,
    /// How often each side was run (medians are reported).
    pub runs: usize,
    /// One line: what was measured, with the raw figures.
    pub detail: String,
    /// The raw figures, for `report.json`.
    pub data: Value,
}

impl Measurement {
    pub fn met(&self) -> bool {
        self.goal.met(self.value)
    }
}

/// The table printed at the end.
pub fn table(results: &[Measurement]) -> String {
    let mut out = format!(
        "\n{:<11} {:>8}  {:<9} {:<6} {:>2}  {}\n",
        "bench", "value", "goal", "", "n", "measured"
    );
    for m in results {
        let value = if m.unit == "ratio" {
            format!("{:.3}", m.value)
        } else {
            format!("{:.3}{}", m.value, m.unit)
        };
        out.push_str(&format!(
            "{:<11} {:>8}  {:<9} {:<6} {:>2}  {}\n",
            m.name,
            value,
            m.goal.text(m.unit),
            if m.met() { "met" } else { "MISSED" },
            m.runs,
            m.detail
        ));
    }
    out
}

/// Writes `report.json` (temp name, then rename).
pub fn write_json(path: &Path, results: &[Measurement]) -> Result<()> {
    let benches: Vec<Value> = results
        .iter()
        .map(|m| {
            let (kind, limit) = match m.goal {
                Goal::AtMost(l) => ("at_most", l),
                Goal::AtLeast(l) => ("at_least", l),
                Goal::Below(l) => ("below", l),
            };
            json!({
                "name": m.name,
                "value": m.value,
                "unit": m.unit,
                "goal": { kind: limit },
                "met": m.met(),
                "runs": m.runs,
                "detail": m.detail,
                "data": m.data,
            })
        })
        .collect();
    let report = json!({
        "generated_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "benches": benches,
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(value: f64, goal: Goal) -> Measurement {
        Measurement {
            name: "x",
            value,
            unit: "ratio",
            goal,
            runs: 3,
            detail: "d".into(),
            data: json!({}),
        }
    }

    #[test]
    fn goals_compare_the_right_way() {
        assert!(m(0.25, Goal::AtMost(0.25)).met());
        assert!(!m(0.26, Goal::AtMost(0.25)).met());
        assert!(m(0.95, Goal::AtLeast(0.95)).met());
        assert!(!m(0.94, Goal::AtLeast(0.95)).met());
        assert!(!m(1.0, Goal::Below(1.0)).met());
    }

    #[test]
    fn the_table_says_met_or_missed_and_the_json_round_trips() {
        let results = [m(0.2, Goal::AtMost(0.25)), m(0.5, Goal::AtLeast(0.9))];
        let text = table(&results);
        assert!(text.contains("met"), "{text}");
        assert!(text.contains("MISSED"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_json(&path, &results).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["benches"][1]["met"], json!(false));
        assert_eq!(back["benches"][0]["goal"]["at_most"], json!(0.25));
    }
}
