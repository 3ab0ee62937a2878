//! Picking the next token from logits, as llama.cpp's default sampler chain
//! does: greedy at temperature 0, else top-k, top-p, min-p, then temperature,
//! then a seeded draw. The host's part of generation (sampling is
//! orchestration, not the model's math).

/// Sampling settings; the defaults are llama.cpp's.
#[derive(Clone, Copy, Debug)]
pub struct SamplerConfig {
    /// Temperature; 0 (or less) picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0: none).
    pub min_p: f32,
    /// Seed of the draw: the same seed gives the same text.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: 0xC0FFEE,
        }
    }
}

/// A sampler with its random state.
pub struct Sampler {
    config: SamplerConfig,
    state: u64,
}

impl Sampler {
    /// A sampler seeded from its config.
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            config,
            state: config.seed,
        }
    }

    /// A sampler that goes on from a random state [`Sampler::state`] gave: a
    /// host that keeps no sampler between calls (a pipeline's restartable
    /// last stage) draws what one long-lived sampler would.
    pub fn resume(config: SamplerConfig, state: u64) -> Sampler {
        Sampler { config, state }
    }

    /// The random state after the draws so far.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next token. Ties in greedy mode go to the lowest id, as llama.cpp's
    /// greedy sampler does. NaN logits are never picked (unless all are NaN).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let greedy = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] || logits[best].is_nan() && !l.is_nan() {
                    best = i;
                }
            }
            best as u32
        };
        if self.config.temperature <= 0.0 {
            return greedy();
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.config.top_k > 0 {
            candidates.truncate(self.config.top_k);
        }
        let max = candidates[0].1;
        let weights: Vec<f64> = candidates
            .iter()
            .map(|c| f64::from(c.1 - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = candidates.len();
        let mut cumulative = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= f64::from(self.config.top_p) {
                keep = i + 1;
                break;
            }
        }
        let floor = f64::from(self.config.min_p) * weights[0];
        keep = keep.min(weights.iter().take_while(|&&w| w >= floor).count().max(1));
        let scaled: Vec<f64> = candidates[..keep]
            .iter()
            .map(|c| f64::from((c.1 - max) / self.config.temperature).exp())
            .collect();
        let sum: f64 = scaled.iter().sum();
        let mut target = self.next_unit() * sum;
        for (c, w) in candidates.iter().zip(&scaled) {
            if target < *w {
                return c.0;
            }
            target -= w;
        }
        candidates[keep - 1].0
    }

    /// A uniform draw in [0, 1) (splitmix64: small, fast, reproducible).
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_greedy_with_ties_to_the_lowest_id_and_nan_ignored() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        });
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, 1.0]), 1);
        assert_eq!(s.sample(&[f32::NAN, -1.0, -2.0]), 1);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_only_from_the_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 17) as f32 * 0.3).collect();
        let config = SamplerConfig {
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, ..config });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let mut top: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let allowed: Vec<u32> = top[..5].iter().map(|t| t.0 as u32).collect();
        assert!(draw(7).iter().all(|t| allowed.contains(t)));
    }
}
