//! Counters and gauges of the server, written in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upper bounds of the time-to-first-token histogram, seconds.
const TTFT_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A cumulative histogram.
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// What `/metrics` reports. Counters only grow; gauges are set by the engine after each
/// step.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    /// Requests waiting for the engine.
    pub queue_depth: AtomicUsize,
    /// Sequences being decoded.
    pub active: AtomicUsize,
    /// Bytes of live KV entries of the active sequences.
    pub kv_live: AtomicUsize,
    /// Bytes the active sequences would hold without pruning, minus the live ones.
    pub kv_saved: AtomicUsize,
    /// Requests whose client left before the answer was complete.
    pub cancelled: AtomicU64,
    /// Prefix-cache lookups that found a compressed context.
    pub prefix_hits: AtomicU64,
    /// Prefix-cache lookups that did not.
    pub prefix_misses: AtomicU64,
    /// Bytes held by the prefix cache.
    pub prefix_bytes: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock leaves counters that are still valid.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// A request to `endpoint` answered with `status`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *lock(&self.requests).entry((endpoint, status)).or_default() += 1;
    }

    /// Tokens read and written by a finished request.
    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens.fetch_add(completion as u64, Ordering::Relaxed);
    }

    /// A request's time to first token.
    pub fn ttft(&self, seconds: f64) {
        let mut h = lock(&self.ttft);
        for (count, &le) in h.counts.iter_mut().zip(&TTFT_BUCKETS) {
            if seconds <= le {
                *count += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The text `/metrics` serves.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        out.push_str("# HELP sieve_requests_total Requests answered, by endpoint and HTTP status.\n");
        out.push_str("# TYPE sieve_requests_total counter\n");
        for ((endpoint, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "sieve_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP sieve_tokens_total Prompt tokens read and completion tokens generated.\n");
        out.push_str("# TYPE sieve_tokens_total counter\n");
        let _ = writeln!(out, "sieve_tokens_total{{kind=\"prompt\"}} {}", get(&self.prompt_tokens));
        let _ = writeln!(out, "sieve_tokens_total{{kind=\"completion\"}} {}", get(&self.completion_tokens));
        out.push_str("# HELP sieve_ttft_seconds Time from a request's arrival to its first token.\n");
        out.push_str("# TYPE sieve_ttft_seconds histogram\n");
        {
            let h = lock(&self.ttft);
            for (count, le) in h.counts.iter().zip(TTFT_BUCKETS) {
                let _ = writeln!(out, "sieve_ttft_seconds_bucket{{le=\"{le}\"}} {count}");
            }
            let _ = writeln!(out, "sieve_ttft_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "sieve_ttft_seconds_sum {}", h.sum);
            let _ = writeln!(out, "sieve_ttft_seconds_count {}", h.count);
        }
        let gauges = [
            ("sieve_queue_depth", "Requests waiting for the engine.", gauge(&self.queue_depth)),
            ("sieve_active_sequences", "Sequences being decoded.", gauge(&self.active)),
            ("sieve_kv_bytes_live", "Bytes of live KV entries of the active sequences.", gauge(&self.kv_live)),
            (
                "sieve_kv_bytes_saved",
                "KV bytes the active sequences do not hold thanks to pruning.",
                gauge(&self.kv_saved),
            ),
            ("sieve_prefix_cache_bytes", "Bytes of compressed contexts kept for reuse.", gauge(&self.prefix_bytes)),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            ("sieve_requests_cancelled_total", "Requests whose client left before the end.", get(&self.cancelled)),
            (
                "sieve_prefix_cache_hits_total",
                "Requests whose prefix was a kept compressed context.",
                get(&self.prefix_hits),
            ),
            ("sieve_prefix_cache_misses_total", "Requests whose prefix had to be computed.", get(&self.prefix_misses)),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.ttft(0.02);
        m.ttft(0.3);
        m.ttft(100.0);
        m.request("chat", 200);
        m.request("chat", 200);
        m.request("completions", 400);
        let text = m.render();
        assert!(text.contains("sieve_ttft_seconds_bucket{le=\"0.025\"} 1\n"), "{text}");
        assert!(text.contains("sieve_ttft_seconds_bucket{le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("sieve_ttft_seconds_bucket{le=\"60\"} 2\n"), "{text}");
        assert!(text.contains("sieve_ttft_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("sieve_requests_total{endpoint=\"chat\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("sieve_requests_total{endpoint=\"completions\",status=\"400\"} 1\n"), "{text}");
    }
}
