//! Percentiles over latency samples.

use std::time::Duration;

use serde::Serialize;

/// Summary of one latency series, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub raw_ms: Vec<f64>,
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises durations.
pub fn summarize(samples: &[Duration]) -> Summary {
    let raw_ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mut sorted = raw_ms.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mean_ms = if raw_ms.is_empty() {
        f64::NAN
    } else {
        raw_ms.iter().sum::<f64>() / raw_ms.len() as f64
    };
    Summary {
        samples: raw_ms.len(),
        p50_ms: percentile(&sorted, 0.5),
        p99_ms: percentile(&sorted, 0.99),
        mean_ms,
        raw_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn summarize_reports_ms() {
        let sut = summarize(&[Duration::from_millis(10), Duration::from_millis(30)]);
        assert_eq!(sut.samples, 2);
        assert_eq!(sut.p50_ms, 10.0);
        assert_eq!(sut.p99_ms, 30.0);
        assert_eq!(sut.mean_ms, 20.0);
    }
}
