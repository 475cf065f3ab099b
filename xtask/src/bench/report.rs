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
    /// No goal: the row is there for its figure (such as `--jobs 2` against sequential builds).
    None,
}

impl Goal {
    pub fn met(self, value: f64) -> bool {
        match self {
            Goal::AtMost(limit) => value <= limit,
            Goal::AtLeast(limit) => value >= limit,
            Goal::Below(limit) => value < limit,
            Goal::None => true,
        }
    }

    fn text(self, unit: &str) -> String {
        let unit = if unit == "ratio" { "" } else { unit };
        match self {
            Goal::AtMost(l) => format!("<= {l}{unit}"),
            Goal::AtLeast(l) => format!(">= {l}{unit}"),
            Goal::Below(l) => format!("< {l}{unit}"),
            Goal::None => "-".to_owned(),
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
    /// A row whose figure this build cannot produce (the feature is not there yet): the value
    /// is NaN, written as `n/a` in the table and `null` in `report.json`.
    pub fn not_measured(
        name: &'static str,
        unit: &'static str,
        goal: Goal,
        runs: usize,
        why: &str,
    ) -> Measurement {
        Measurement {
            name,
            value: f64::NAN,
            unit,
            goal,
            runs,
            detail: why.to_owned(),
            data: Value::Null,
        }
    }

    /// Whether the figure was measured at all.
    pub fn measured(&self) -> bool {
        !self.value.is_nan()
    }

    pub fn met(&self) -> bool {
        self.goal.met(self.value)
    }

    /// `met`, `MISSED`, `n/a` (not measured) or `-` (no goal).
    pub fn status(&self) -> &'static str {
        match (self.measured(), self.goal) {
            (false, _) => "n/a",
            (true, Goal::None) => "-",
            (true, _) if self.met() => "met",
            (true, _) => "MISSED",
        }
    }

    /// `met` for `report.json`: `null` when not measured or without a goal.
    fn met_json(&self) -> Value {
        match (self.measured(), self.goal) {
            (false, _) | (_, Goal::None) => Value::Null,
            _ => self.met().into(),
        }
    }
}

/// The table printed at the end.
pub fn table(results: &[Measurement]) -> String {
    let mut out = format!(
        "\n{:<15} {:>9}  {:<9} {:<6} {:>2}  {}\n",
        "bench", "value", "goal", "", "n", "measured"
    );
    for m in results {
        let value = if !m.measured() {
            "n/a".to_owned()
        } else if m.unit == "ratio" {
            format!("{:.3}", m.value)
        } else {
            format!("{:.3}{}", m.value, m.unit)
        };
        out.push_str(&format!(
            "{:<15} {:>9}  {:<9} {:<6} {:>2}  {}\n",
            m.name,
            value,
            m.goal.text(m.unit),
            m.status(),
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
            let goal = match m.goal {
                Goal::AtMost(l) => json!({ "at_most": l }),
                Goal::AtLeast(l) => json!({ "at_least": l }),
                Goal::Below(l) => json!({ "below": l }),
                Goal::None => Value::Null,
            };
            json!({
                "name": m.name,
                "value": m.value,
                "unit": m.unit,
                "goal": goal,
                "met": m.met_json(),
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

    #[test]
    fn rows_without_a_figure_or_a_goal_say_so() {
        let absent = Measurement::not_measured(
            "restore",
            "s",
            Goal::AtMost(5.0),
            1,
            "n/a — not implemented",
        );
        let info = m(0.6, Goal::None);
        assert_eq!((absent.status(), info.status()), ("n/a", "-"));
        let text = table(&[absent.clone(), info.clone()]);
        assert!(text.contains("n/a — not implemented"), "{text}");
        assert!(!text.contains("MISSED") && !text.contains("met "), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_json(&path, &[absent, info]).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["benches"][0]["value"], Value::Null);
        assert_eq!(back["benches"][0]["met"], Value::Null);
        assert_eq!(back["benches"][1]["met"], Value::Null);
        assert_eq!(back["benches"][1]["goal"], Value::Null);
    }
}
