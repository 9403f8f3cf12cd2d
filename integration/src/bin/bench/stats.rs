use std::time::Duration;

use anyhow::{Context, Result};

/// A whole number from the environment variable `name`, `default` when unset or empty.
pub(crate) fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| format!("{name}={v:?}: not a number")),
        _ => Ok(default),
    }
}

// ------------------------------------------------------------------------------------------
// Statistics and the report

#[derive(Debug, Clone, Default)]
pub(crate) struct Series {
    pub(crate) values: Vec<f64>,
}

impl Series {
    pub(crate) fn push(&mut self, v: f64) {
        self.values.push(v);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v
    }
    pub(crate) fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
    pub(crate) fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }
    pub(crate) fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

pub(crate) struct Row {
    pub(crate) label: String,
    pub(crate) unit: &'static str,
    pub(crate) series: Series,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn row(&mut self, label: &str, unit: &'static str, series: &Series) {
        self.rows.push(Row { label: label.to_string(), unit, series: series.clone() });
    }
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }
}

pub(crate) fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}")).unwrap_or_else(|| "n/a".into())
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
