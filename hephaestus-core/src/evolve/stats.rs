//! Statistics of fitness samples: medians and the Mann-Whitney U test (exact without
//! ties for small samples, normal approximation with tie and continuity correction
//! otherwise), one-sided: is the candidate's distribution shifted towards better?
//! Also the normal quantile and a robust estimate of relative noise.

/// The median of `xs` (NaN for an empty slice).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The result of a Mann-Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample: the number of pairs (a, b) with a < b, ties counting 1/2.
    pub u: f64,
    /// One-sided p-value of "the first sample tends to be smaller than the second".
    pub p: f64,
    /// Whether the exact distribution was used (no ties, small samples).
    pub exact: bool,
}

/// Samples up to this size (each) get the exact null distribution when there are no ties.
const EXACT_MAX: usize = 50;

/// One-sided Mann-Whitney U test of H1: values of `a` tend to be smaller than those of `b`.
/// Returns None when a sample is empty or holds a NaN.
pub fn mann_whitney_less(a: &[f64], b: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 || a.iter().chain(b).any(|x| x.is_nan()) {
        return None;
    }
    // Rank the pooled sample, ties getting their average rank.
    let mut pooled: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    pooled.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
    let n = pooled.len();
    let mut rank_sum_a = 0.0;
    let mut tie_term = 0.0; // Σ (t³ - t) over tie groups
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += pooled[i..=j].iter().filter(|p| p.1).count() as f64 * avg_rank;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    // U counts pairs where a > b; small U means a tends to be smaller.
    let u_greater = rank_sum_a - f1 * (f1 + 1.0) / 2.0;
    let u = f1 * f2 - u_greater;
    if tie_term == 0.0 && n1 <= EXACT_MAX && n2 <= EXACT_MAX {
        // P(U_greater <= observed) under H0, from the exact distribution.
        let k = u_greater.round() as usize;
        let dist = exact_distribution(n1, n2);
        let total: f64 = dist.iter().sum();
        let p = dist[..=k.min(dist.len() - 1)].iter().sum::<f64>() / total;
        return Some(MannWhitney {
            u,
            p: p.min(1.0),
            exact: true,
        });
    }
    let mean = f1 * f2 / 2.0;
    let nf = n as f64;
    let var = f1 * f2 / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    if var <= 0.0 {
        // Every value equal: no evidence either way.
        return Some(MannWhitney {
            u,
            p: 1.0,
            exact: false,
        });
    }
    // Continuity correction towards the mean.
    let z = (u_greater - mean + 0.5) / var.sqrt();
    Some(MannWhitney {
        u,
        p: normal_cdf(z).clamp(0.0, 1.0),
        exact: false,
    })
}

/// Number of arrangements of n1 + n2 distinct values giving each U (pairs a > b),
/// for U = 0..=n1*n2: c(n1, n2, u) = c(n1 - 1, n2, u - n2) + c(n1, n2 - 1, u).
fn exact_distribution(n1: usize, n2: usize) -> Vec<f64> {
    let max = n1 * n2;
    // table[j] = distribution for (i, j), built up over i.
    let mut prev: Vec<Vec<f64>> = (0..=n2)
        .map(|_| {
            let mut d = vec![0.0; max + 1];
            d[0] = 1.0;
            d
        })
        .collect();
    for i in 1..=n1 {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n2 + 1);
        let mut d0 = vec![0.0; max + 1];
        d0[0] = 1.0;
        cur.push(d0);
        for j in 1..=n2 {
            let mut d = vec![0.0; max + 1];
            for u in 0..=i * j {
                let from_a = if u >= j { prev[j][u - j] } else { 0.0 };
                let from_b = cur[j - 1][u];
                d[u] = from_a + from_b;
            }
            cur.push(d);
        }
        prev = cur;
    }
    prev.swap_remove(n2)
}

/// The standard normal CDF, from erfc (W. J. Cody's rational approximations through
/// `erfc`, accurate to ~1e-7, plenty for p-values).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile: the z with `normal_cdf(z) == p` (bisection on
/// [`normal_cdf`], to ~1e-9; infinite for p outside (0, 1)).
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (-40.0_f64, 40.0_f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The relative noise of samples: 1.4826 × their median absolute deviation over their
/// median (for normal noise, the standard deviation over the mean), robust to the
/// outliers of a busy machine. 0 for fewer than two samples or a zero median.
pub fn relative_noise(xs: &[f64]) -> f64 {
    let m = median(xs);
    if xs.len() < 2 || m == 0.0 || !m.is_finite() {
        return 0.0;
    }
    let dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    1.4826 * median(&dev) / m.abs()
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error
/// below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact one-sided p-value by enumerating every split of the pooled sample
    /// (ties included), for checking.
    fn brute_force(a: &[f64], b: &[f64]) -> f64 {
        let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
        let n = pooled.len();
        let u_of = |xs: &[f64], ys: &[f64]| -> f64 {
            let mut u = 0.0;
            for x in xs {
                for y in ys {
                    if x > y {
                        u += 1.0;
                    } else if x == y {
                        u += 0.5;
                    }
                }
            }
            u
        };
        let observed = u_of(a, b);
        let (mut hits, mut total) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != a.len() {
                continue;
            }
            let (xs, ys): (Vec<f64>, Vec<f64>) = {
                let mut xs = Vec::new();
                let mut ys = Vec::new();
                for (i, v) in pooled.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        xs.push(*v)
                    } else {
                        ys.push(*v)
                    }
                }
                (xs, ys)
            };
            total += 1;
            if u_of(&xs, &ys) <= observed + 1e-9 {
                hits += 1;
            }
        }
        hits as f64 / total as f64
    }

    #[test]
    fn quantiles_invert_the_normal_cdf_and_noise_is_robust() {
        assert!((normal_quantile(0.99) - 2.326_347_874).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-6);
        assert!(normal_quantile(0.0).is_infinite());
        // 1.4826 MAD / median; one wild outlier does not move it.
        let xs = [100.0, 90.0, 110.0, 95.0, 105.0, 1000.0];
        let n = relative_noise(&xs);
        assert!(n > 0.05 && n < 0.15, "{n}");
        assert_eq!(relative_noise(&[5.0]), 0.0);
        assert_eq!(relative_noise(&[3.0, 3.0, 3.0]), 0.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn complete_separation_of_five_and_five_is_one_in_252() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [6.0, 7.0, 8.0, 9.0, 10.0];
        let r = mann_whitney_less(&a, &b).expect("test");
        assert!(r.exact);
        assert_eq!(r.u, 25.0);
        assert!((r.p - 1.0 / 252.0).abs() < 1e-12, "{}", r.p);
        let r = mann_whitney_less(&b, &a).expect("test");
        assert!((r.p - 1.0).abs() < 1e-12);
        // Four and four cannot reach p < 0.01: 1/70.
        let r = mann_whitney_less(&a[..4], &b[..4]).expect("test");
        assert!((r.p - 1.0 / 70.0).abs() < 1e-12);
    }

    #[test]
    fn exact_p_values_match_enumeration() {
        let cases: [(&[f64], &[f64]); 3] = [
            (&[1.1, 3.5, 2.2, 0.4], &[2.0, 5.0, 4.4, 3.9, 6.1]),
            (&[5.0, 6.0, 1.0], &[2.0, 3.0, 4.0, 7.0]),
            (
                &[9.0, 8.0, 7.5, 1.5, 2.5, 3.5],
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ),
        ];
        for (a, b) in cases {
            let r = mann_whitney_less(a, b).expect("test");
            assert!(r.exact);
            assert!(
                (r.p - brute_force(a, b)).abs() < 1e-12,
                "{a:?} {b:?}: {}",
                r.p
            );
        }
    }

    #[test]
    fn ties_use_the_corrected_normal_approximation() {
        // Integer-valued timings with many ties.
        let a = [10.0, 10.0, 11.0, 10.0, 9.0, 10.0, 10.0, 9.0];
        let b = [12.0, 11.0, 12.0, 12.0, 13.0, 11.0, 12.0, 12.0];
        let r = mann_whitney_less(&a, &b).expect("test");
        assert!(!r.exact);
        let exact = brute_force(&a, &b);
        assert!(r.p < 0.01 && exact < 0.01, "{} vs {exact}", r.p);
        assert!((r.p - exact).abs() < 0.005, "{} vs {exact}", r.p);
        // All equal: no evidence.
        let r = mann_whitney_less(&[1.0; 5], &[1.0; 5]).expect("test");
        assert_eq!(r.p, 1.0);
    }

    #[test]
    fn large_samples_are_approximated_well() {
        let a: Vec<f64> = (0..60).map(|i| f64::from(i) * 1.01).collect();
        let b: Vec<f64> = (0..60).map(|i| f64::from(i) * 1.01 + 5.0).collect();
        let r = mann_whitney_less(&a, &b).expect("test");
        assert!(!r.exact);
        assert!(r.p > 0.0 && r.p < 0.2, "{}", r.p);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(-2.326_347_874) - 0.01).abs() < 1e-6);
        assert!(mann_whitney_less(&[], &[1.0]).is_none());
        assert!(mann_whitney_less(&[f64::NAN], &[1.0]).is_none());
    }
}
