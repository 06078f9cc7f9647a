//! Statistics shared by the checks: robust location and scale, smoothing, autocorrelation, the runs
//! test, the adjacency ratio with a permutation p-value, and the oscillation detector.

/// A small deterministic generator (SplitMix64): reports must be reproducible byte for byte.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The smallest and largest of `x` (∞ and -∞ when empty).
pub fn min_max(x: &[f64]) -> (f64, f64) {
    x.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        })
}

pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    x.iter().sum::<f64>() / x.len() as f64
}

/// Population variance.
pub fn variance(x: &[f64]) -> f64 {
    let m = mean(x);
    mean(&x.iter().map(|v| (v - m) * (v - m)).collect::<Vec<_>>())
}

pub fn std(x: &[f64]) -> f64 {
    variance(x).sqrt()
}

/// The q-quantile (0..=1) with linear interpolation; NaNs are ignored.
fn quantile(x: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = x.iter().copied().filter(|v| !v.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

pub fn median(x: &[f64]) -> f64 {
    quantile(x, 0.5)
}

/// The interquartile mean: the mean of the values between the 25th and 75th percentiles. Robust to
/// spikes like the median, but centred on bimodal data (a ±a zig-zag) where the median jumps.
pub fn interquartile_mean(x: &[f64]) -> f64 {
    // One sort serves both quartiles and the mean (the running trend calls this once per point).
    let mut v: Vec<f64> = x.iter().copied().filter(|v| !v.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    let (lo, hi) = (at(0.25), at(0.75));
    let start = v.partition_point(|a| *a < lo);
    let end = v.partition_point(|a| *a <= hi);
    if start < end {
        mean(&v[start..end])
    } else {
        at(0.5)
    }
}

/// Running interquartile mean over a window, shrinking at the ends.
fn running_iqm(x: &[f64], window: usize) -> Vec<f64> {
    let half = window / 2;
    (0..x.len())
        .map(|i| interquartile_mean(&x[i.saturating_sub(half)..(i + half + 1).min(x.len())]))
        .collect()
}

/// The interquartile range scaled to estimate the standard deviation of normal data. Unlike the MAD it
/// stays stable on bimodal data (±a swings give 1.48·a), and ignores up to 25% of outliers per side.
fn iqr_std(x: &[f64]) -> f64 {
    (quantile(x, 0.75) - quantile(x, 0.25)) / 1.349
}

/// Lag-k autocorrelation.
pub fn autocorrelation(x: &[f64], lag: usize) -> f64 {
    if x.len() <= lag + 1 {
        return f64::NAN;
    }
    let m = mean(x);
    let denom: f64 = x.iter().map(|v| (v - m) * (v - m)).sum();
    if denom == 0.0 {
        return 0.0;
    }
    let num: f64 = (lag..x.len()).map(|i| (x[i] - m) * (x[i - lag] - m)).sum();
    num / denom
}

/// The Wald–Wolfowitz runs test for a sequence of categories (any number of them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunsTest {
    pub runs: usize,
    pub expected: f64,
    pub variance: f64,
    /// (runs − expected) / sd: strongly negative when equal labels cluster.
    pub z: f64,
}

pub fn runs_test<T: PartialEq + Ord + Clone>(seq: &[T]) -> RunsTest {
    let n = seq.len() as f64;
    let runs = if seq.is_empty() {
        0
    } else {
        1 + seq.windows(2).filter(|w| w[0] != w[1]).count()
    };
    let mut sorted = seq.to_vec();
    sorted.sort();
    let mut counts = Vec::new();
    for w in sorted.chunk_by(|a, b| a == b) {
        counts.push(w.len() as f64);
    }
    let s2: f64 = counts.iter().map(|c| c * c).sum();
    let s3: f64 = counts.iter().map(|c| c * c * c).sum();
    let expected = n - (s2 - n) / n;
    let variance = if n > 1.0 {
        (s2 * (s2 + n * (n + 1.0)) - 2.0 * n * s3 - n * n * n) / (n * n * (n - 1.0))
    } else {
        0.0
    };
    let z = if variance > 0.0 {
        (runs as f64 - expected) / variance.sqrt()
    } else {
        0.0
    };
    RunsTest {
        runs,
        expected,
        variance,
        z,
    }
}

/// How much closer consecutive samples are than random pairs, from a full distance matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adjacency {
    /// Mean adjacent distance / mean distance over all pairs: ≈1 for i.i.d. order, ≪1 for video frames.
    pub ratio: f64,
    /// Share of random orders whose adjacent distance is as small as the file's order.
    pub p_value: f64,
}

/// `dist` is the n×n distance matrix, row-major.
pub fn adjacency(dist: &[f64], n: usize, permutations: usize, rng: &mut Rng) -> Adjacency {
    assert_eq!(dist.len(), n * n);
    let adjacent = |order: &[usize]| {
        mean(
            &order
                .windows(2)
                .map(|w| dist[w[0] * n + w[1]])
                .collect::<Vec<_>>(),
        )
    };
    let identity: Vec<usize> = (0..n).collect();
    let observed = adjacent(&identity);
    let mut all_pairs = 0.0;
    for i in 0..n {
        for j in (i + 1)..n {
            all_pairs += dist[i * n + j];
        }
    }
    let pairs = (n * (n - 1) / 2) as f64;
    let baseline = all_pairs / pairs;
    let mut order = identity;
    let mut as_small = 0usize;
    for _ in 0..permutations {
        rng.shuffle(&mut order);
        if adjacent(&order) <= observed {
            as_small += 1;
        }
    }
    Adjacency {
        ratio: if baseline > 0.0 {
            observed / baseline
        } else {
            1.0
        },
        p_value: (as_small + 1) as f64 / (permutations + 1) as f64,
    }
}

/// Least-squares slope of y against x.
/// Largest-Triangle-Three-Buckets downsampling (Steinarsson 2013): the indices of at most `max` points
/// of (x, y) that keep the curve's visual shape, its first and last point always among them. A
/// non-finite y is kept whenever its bucket holds one, so a divergence stays visible.
pub fn lttb(x: &[f64], y: &[f64], max: usize) -> Vec<usize> {
    let n = x.len().min(y.len());
    if n <= max {
        return (0..n).collect();
    }
    if max < 3 {
        return [0, n - 1].into_iter().take(max).collect();
    }
    let every = (n - 2) as f64 / (max - 2) as f64;
    let mut picked = Vec::with_capacity(max);
    picked.push(0);
    let mut a = 0usize;
    for i in 0..max - 2 {
        let start = (i as f64 * every) as usize + 1;
        let end = (((i + 1) as f64 * every) as usize + 1).min(n - 1);
        // The next bucket's average is the third corner of the triangle.
        let next_start = end;
        let next_end = (((i + 2) as f64 * every) as usize + 1).min(n);
        let (mut ax, mut ay, mut count) = (0.0, 0.0, 0.0);
        for j in next_start..next_end.max(next_start + 1).min(n) {
            if y[j].is_finite() {
                ax += x[j];
                ay += y[j];
                count += 1.0;
            }
        }
        let (cx, cy) = if count > 0.0 {
            (ax / count, ay / count)
        } else {
            (x[n - 1], if y[n - 1].is_finite() { y[n - 1] } else { y[a] })
        };
        let mut best = (start, f64::NEG_INFINITY);
        for j in start..end.max(start + 1) {
            let area = if y[j].is_finite() {
                ((x[a] - cx) * (y[j] - y[a]) - (x[a] - x[j]) * (cy - y[a])).abs()
            } else {
                f64::INFINITY
            };
            if area > best.1 {
                best = (j, area);
            }
        }
        picked.push(best.0);
        a = best.0;
    }
    picked.push(n - 1);
    picked
}

pub fn slope(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let num: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let den: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// What the oscillation detector measured on a loss curve (in log space when every value is > 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Oscillation {
    /// Robust amplitude (IQR-based std) of the residual around the running-IQM trend.
    pub amplitude: f64,
    /// Net descent: the level at the start (the first 5% of the points, at least 5) minus the level of
    /// the last quarter, as interquartile means (> 0: descending).
    pub descent: f64,
    /// Lag-1 autocorrelation of the residual: near −1 for a step-to-step zig-zag.
    pub residual_autocorr: f64,
    /// Residual amplitude in the last half over the first half: > 1 when swings grow.
    pub amplitude_growth: f64,
    /// Whether the values were log-transformed.
    pub log_space: bool,
    /// Where the plateau after the initial drop starts: the first point whose trend has come down half
    /// of the way from the start to the trend's minimum.
    pub plateau_start: usize,
    /// On that plateau: how far its level goes up and down (block levels' RMS distance from the closest
    /// non-increasing sequence): a healthy plateau's level only descends or stays.
    pub wander: f64,
    /// The wander that white minibatch noise alone gives the block levels: amplitude / √block.
    pub wander_noise: f64,
    /// Net descent over the plateau (its first 5% against its last quarter, as `descent`).
    pub plateau_descent: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Descending,
    Oscillating,
    Diverging,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OscillationThresholds {
    /// The residual autocorrelation at or below which swings count as a zig-zag.
    pub zigzag_autocorr: f64,
    /// Swings smaller than this (log units: 0.05 ≈ ±5%) are never flagged.
    pub min_amplitude: f64,
    /// A zig-zag is flagged when its amplitude is at least this share of the net descent.
    pub amplitude_to_descent: f64,
    /// The trend rising by this much (log units: ln 2 = the loss doubled) is divergence.
    pub divergence_rise: f64,
    /// Net descent below this (log units: 0.4 ≈ the loss fell by less than 1.5×) counts as no progress …
    pub min_progress: f64,
    /// … and swings at least this large around the trend then count as oscillation.
    pub bounce_amplitude: f64,
    /// After the initial drop, a trend that goes up and down by this much (log units, RMS) without
    /// progress is wandering …
    pub min_wander: f64,
    /// … when it is also this many times what minibatch noise alone gives the trend.
    pub wander_to_noise: f64,
}

impl Default for OscillationThresholds {
    fn default() -> Self {
        OscillationThresholds {
            zigzag_autocorr: -0.4,
            min_amplitude: 0.05,
            amplitude_to_descent: 0.5,
            divergence_rise: std::f64::consts::LN_2,
            min_progress: 0.4,
            bounce_amplitude: 0.15,
            min_wander: 0.05,
            wander_to_noise: 2.0,
        }
    }
}

pub fn measure_oscillation(values: &[f64]) -> Oscillation {
    let log_space = values.iter().all(|v| *v > 0.0);
    let y: Vec<f64> = if log_space {
        values.iter().map(|v| v.ln()).collect()
    } else {
        values.to_vec()
    };
    let n = y.len();
    let window = ((n / 8) | 1).clamp(9, 51);
    let trend = running_iqm(&y, window);
    let residual: Vec<f64> = y.iter().zip(&trend).map(|(a, b)| a - b).collect();
    let q = (n / 4).max(1);
    let start = (n / 20).clamp(5, n);
    let descent = interquartile_mean(&y[..start]) - interquartile_mean(&y[n - q..]);
    let half = n / 2;
    let first = iqr_std(&residual[..half]).max(1e-12);
    let amplitude = iqr_std(&residual);
    let (plateau_start, wander, wander_noise, plateau_descent) = plateau_wander(&y, &trend, window);
    Oscillation {
        amplitude,
        descent,
        residual_autocorr: autocorrelation(&residual, 1),
        amplitude_growth: iqr_std(&residual[half..]) / first,
        log_space,
        plateau_start,
        wander,
        wander_noise,
        plateau_descent,
    }
}

/// The phase after the initial drop (from the first point whose trend is halfway from its start down to
/// its minimum): where it starts, how far its level wanders, what noise alone would give, and its net
/// descent. The level is the interquartile mean of consecutive blocks (1/12 of the phase, 5 to 25
/// points); its wander is the RMS distance of those block levels from the closest non-increasing
/// sequence; white minibatch noise of amplitude a gives block levels a spread of about a/√block.
fn plateau_wander(y: &[f64], trend: &[f64], window: usize) -> (usize, f64, f64, f64) {
    let n = y.len();
    let low = trend.iter().copied().fold(f64::INFINITY, f64::min);
    let high = interquartile_mean(&trend[..(n / 20).clamp(1, n)]);
    let halfway = low + 0.5 * (high - low).max(0.0);
    let start = trend.iter().position(|t| *t <= halfway).unwrap_or(0);
    let p = &y[start..];
    let block = (p.len() / 12).clamp(5, 25);
    let count = p.len() / block;
    if count < 4 {
        return (start, 0.0, 0.0, 0.0);
    }
    let levels: Vec<f64> = (0..count)
        .map(|i| interquartile_mean(&p[i * block..(i + 1) * block]))
        .collect();
    let monotone = isotonic_non_increasing(&levels);
    let wander = (levels
        .iter()
        .zip(&monotone)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        / count as f64)
        .sqrt();
    let smooth = running_iqm(p, window);
    let residual: Vec<f64> = p.iter().zip(&smooth).map(|(a, b)| a - b).collect();
    let noise = iqr_std(&residual) / (block as f64).sqrt();
    let q = (p.len() / 4).max(1);
    let k = (p.len() / 20).clamp(5, p.len());
    let descent = interquartile_mean(&p[..k]) - interquartile_mean(&p[p.len() - q..]);
    (start, wander, noise, descent)
}

/// The closest non-increasing sequence to `y` in least squares (pool adjacent violators).
fn isotonic_non_increasing(y: &[f64]) -> Vec<f64> {
    // Blocks of (sum, count); merge while a block's mean exceeds its predecessor's.
    let mut blocks: Vec<(f64, usize)> = Vec::with_capacity(y.len());
    for &v in y {
        blocks.push((v, 1));
        while blocks.len() > 1 {
            let (s2, c2) = blocks[blocks.len() - 1];
            let (s1, c1) = blocks[blocks.len() - 2];
            if s2 / c2 as f64 > s1 / c1 as f64 {
                blocks.pop();
                let last = blocks.len() - 1;
                blocks[last] = (s1 + s2, c1 + c2);
            } else {
                break;
            }
        }
    }
    blocks
        .iter()
        .flat_map(|(s, c)| std::iter::repeat_n(s / *c as f64, *c))
        .collect()
}

pub fn judge_oscillation(o: &Oscillation, t: &OscillationThresholds) -> Verdict {
    if -o.descent >= t.divergence_rise {
        return Verdict::Diverging;
    }
    let zigzag = o.residual_autocorr <= t.zigzag_autocorr;
    let swings_dominate = o.amplitude >= t.amplitude_to_descent * o.descent.max(0.0);
    if zigzag && o.amplitude >= t.min_amplitude && swings_dominate {
        return Verdict::Oscillating;
    }
    if o.descent < t.min_progress && o.amplitude >= t.bounce_amplitude {
        return Verdict::Oscillating;
    }
    if is_wandering(o, t) {
        return Verdict::Oscillating;
    }
    Verdict::Descending
}

/// After its initial drop the trend goes up and down (beyond what the noise gives it) without progress.
pub fn is_wandering(o: &Oscillation, t: &OscillationThresholds) -> bool {
    o.plateau_descent < t.min_progress
        && o.wander >= t.min_wander
        && o.wander >= t.wander_to_noise * o.wander_noise
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn lttb_keeps_the_ends_the_size_and_the_peaks() {
        let x: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let mut y: Vec<f64> = x.iter().map(|t| (t / 500.0).sin()).collect();
        y[4321] = 50.0;
        y[7777] = f64::INFINITY;
        let keep = lttb(&x, &y, 2000);
        assert_eq!(keep.len(), 2000);
        assert_eq!((keep[0], keep[1999]), (0, 9999));
        assert!(keep.windows(2).all(|w| w[0] < w[1]), "increasing indices");
        assert!(keep.contains(&4321), "a spike survives");
        assert!(keep.contains(&7777), "a non-finite value survives");
        assert_eq!(lttb(&x[..10], &y[..10], 2000), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn runs_test_matches_hand_computation_for_two_blocks() {
        // AAAAABBBBB: R = 2, E = 1 + 2·5·5/10 = 6, Var = 2·25·(50−10)/(100·9) = 2.2222, z = −4/1.4907.
        let r = runs_test(&[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(r.runs, 2);
        assert!((r.expected - 6.0).abs() < 1e-12);
        assert!((r.variance - 2.222_222).abs() < 1e-5);
        assert!((r.z - (-2.683_28)).abs() < 0.01, "z = {}", r.z);
    }

    #[test]
    fn runs_test_matches_hand_computation_for_alternation_and_three_classes() {
        // ABABABABAB: R = 10, E = 6, z = 4/1.4907 = 2.6833.
        let r = runs_test(&[0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(r.runs, 10);
        assert!((r.z - 2.683_28).abs() < 0.01);
        // AABBCC (n = 2,2,2; N = 6): R = 3, E = 6 − (12 − 6)/6 = 5,
        // Var = (12·(12 + 42) − 12·24 − 216)/(36·5) = 144/180 = 0.8, z = −2/0.8944 = −2.2361.
        let r = runs_test(&['a', 'a', 'b', 'b', 'c', 'c']);
        assert_eq!(r.runs, 3);
        assert!((r.expected - 5.0).abs() < 1e-12);
        assert!((r.variance - 0.8).abs() < 1e-12);
        assert!((r.z - (-2.236_07)).abs() < 0.01);
    }

    #[test]
    fn quantiles_and_robust_scale() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
        let mut rng = Rng::new(1);
        let x: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        assert!((std(&x) - 1.0).abs() < 0.03);
    }

    #[test]
    fn isotonic_fit_pools_the_rises() {
        assert_eq!(
            isotonic_non_increasing(&[3.0, 1.0, 2.0, 0.0]),
            vec![3.0, 1.5, 1.5, 0.0]
        );
        assert_eq!(
            isotonic_non_increasing(&[1.0, 2.0, 3.0]),
            vec![2.0, 2.0, 2.0]
        );
    }

    #[test]
    fn autocorrelation_of_alternation_is_minus_one_and_of_noise_near_zero() {
        let alt: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert!((autocorrelation(&alt, 1) + 0.99).abs() < 0.02);
        let mut rng = Rng::new(2);
        let noise: Vec<f64> = (0..5000).map(|_| rng.normal()).collect();
        assert!(autocorrelation(&noise, 1).abs() < 0.05);
    }

    /// The Euclidean distance matrix of `points`, row-major (shared with the checks' tests).
    pub(crate) fn distances(points: &[Vec<f64>]) -> Vec<f64> {
        let n = points.len();
        let mut d = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                d[i * n + j] = points[i]
                    .iter()
                    .zip(&points[j])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    .sqrt();
            }
        }
        d
    }

    #[test]
    fn adjacency_ratio_separates_iid_from_autocorrelated_order() {
        let mut rng = Rng::new(3);
        let iid: Vec<Vec<f64>> = (0..200)
            .map(|_| (0..8).map(|_| rng.normal()).collect())
            .collect();
        let a = adjacency(&distances(&iid), 200, 200, &mut rng);
        assert!((a.ratio - 1.0).abs() < 0.1, "iid ratio {}", a.ratio);
        assert!(a.p_value > 0.05, "iid p {}", a.p_value);
        // A random walk: each sample a small step from the previous one.
        let mut walk = vec![vec![0.0; 8]];
        for i in 1..200 {
            let prev: &Vec<f64> = &walk[i - 1];
            let next = prev.iter().map(|v| v + 0.1 * rng.normal()).collect();
            walk.push(next);
        }
        let a = adjacency(&distances(&walk), 200, 200, &mut rng);
        assert!(a.ratio < 0.3, "walk ratio {}", a.ratio);
        assert!(a.p_value < 0.01, "walk p {}", a.p_value);
    }
}
