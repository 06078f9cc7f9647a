//! input-normalization: inputs at a raw scale (0..255 pixels, physical units) reaching a first layer
//! that does not rescale them, and features whose scales differ by orders of magnitude reaching a model
//! that does not even them out.
use super::initial_loss::standardised;
use super::prelude::*;
use crate::ports::LayerScale;
use tch::{Kind, Tensor};

pub struct InputNormalization;

static INFO: CheckInfo = CheckInfo {
    id: "input-normalization",
    group: Group::Data,
    default_level: Level::Warn,
    summary: "Inputs reach the network at a unit scale, their features at comparable scales",
    docs: Docs {
        what: "Measures the scale of every input feature (per column, or per channel for images) and, \
when some feature is far from unit scale, the output of the model's first linear / conv layer on the \
sample as given and on the same sample standardised per feature. Integer inputs (token ids) are not \
judged. Then, when one feature is `spread` (100) times smaller than the largest in both std and range, \
how much each feature contributes to the model's output (its std times the rms of the output's \
gradient with respect to it): a model that rescales the features itself evens the contributions out \
and passes.",
        why: "A network initialised for unit-scale inputs that receives 0..255 pixels or physical units \
in the thousands starts with huge activations and gradients: the first layer's weights learn at the \
wrong scale, saturating heads and large features drown the small ones, and the learning rate that suits \
the rest of the network is wrong for it. Features at scales two or more orders of magnitude apart do \
the same harm without any large value: the loss's curvature along each first-layer weight scales with \
its feature's variance, so no learning rate suits both the large and the small features.",
        details: include_str!("input_normalization.md"),
    },
    kinds: &[&RawInputScale::KIND, &FeatureScaleSpread::KIND],
    ..CheckInfo::PLAIN
};

/// Options of input-normalization.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InputNormalizationOptions {
    /// The root-mean-square of an input feature above which the inputs may be at a raw scale.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub raw_scale: f64,
    /// The rms of the first layer's output on the raw sample above which it is too large.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_first_layer: f64,
    /// How many times the first layer's output rms on standardised inputs the raw one must reach.
    #[schemars(range(min = 1))]
    pub ratio: f64,
    /// Samples in the forward passes.
    #[schemars(range(min = 2))]
    pub batch: usize,
    /// Report a feature this many times below the largest in std, range and contribution to the output.
    #[schemars(range(min = 1))]
    pub spread: f64,
}

impl Default for InputNormalizationOptions {
    fn default() -> Self {
        InputNormalizationOptions {
            raw_scale: 5.0,
            max_first_layer: 10.0,
            ratio: 5.0,
            batch: 64,
            spread: 100.0,
        }
    }
}

/// Raw-scale inputs reach a first layer that does not rescale them
///
/// # Why
/// The default initialisations assume unit-scale inputs: a first layer fed 0..255 pixels or values in the
/// thousands outputs activations hundreds of times too large, which saturates activations and heads, makes
/// the first layer's gradients huge and lets the largest features drown the others.
///
/// # How
/// The rms of each input feature (column, or channel of an image) over the sample; when the largest exceeds
/// `raw_scale`, a train-mode forward of a copy of the model (so a leading BatchNorm normalises with the
/// batch's statistics) on the first `batch` samples, as given and standardised per feature, measuring the
/// output of the first linear / conv / matmul op to run. Warning when its rms on the raw inputs exceeds
/// `max_first_layer` and `ratio`× its rms on standardised inputs. A model that rescales its inputs itself (x
/// / 255, a BatchNorm or LayerNorm before the first layer) feeds that layer unit-scale values and passes;
/// integer inputs (token ids for an embedding) are not judged.
///
/// # Fix
/// Standardise the inputs in the data pipeline ((x − mean) / std per feature or channel; for 0..255 images,
/// ToTensor's / 255 and Normalize(mean, std)), or rescale inside the model (x / 255, or a BatchNorm /
/// LayerNorm on the inputs).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "input-normalization/raw-input-scale", grade = warning)]
#[kind(example(args = "--model fixtures/models/mlp_default.pt --data fixtures/data/regression_raw_units.npz", severity = warning, message = "the first layer `fc1` (aten::linear) gets raw-scale inputs: its output rms is 1.05e4 on the sample as given, against 0.594 on the same sample standardised; the largest feature (column 3) has rms 1.01e5, the smallest 0.832"))]
pub struct RawInputScale {
    pub layer: String,
    pub op: String,
    pub first_layer_rms: f64,
    pub standardised_rms: f64,
    pub largest_feature_rms: f64,
    pub largest_feature: usize,
    pub smallest_feature_rms: f64,
    #[serde(skip)]
    pub unit: FeatureUnit,
}

impl Violation for RawInputScale {
    fn message(&self) -> String {
        let unit = self.unit;
        let layer = if self.layer.is_empty() {
            "the root module".to_string()
        } else {
            format!("`{}`", self.layer)
        };
        format!(
            "the first layer {layer} ({}) gets raw-scale inputs: its output rms is {} on the sample as given, \
against {} on the same sample standardised; the largest feature ({unit} {}) has rms {}, the smallest {}",
            self.op,
            num(self.first_layer_rms),
            num(self.standardised_rms),
            self.largest_feature,
            num(self.largest_feature_rms),
            num(self.smallest_feature_rms)
        )
    }
    fn help(&self) -> String {
        "standardise the inputs ((x - mean) / std per feature or channel; for 0..255 images divide by 255 \
and normalise), or rescale inside the model (x / 255, or a BatchNorm / LayerNorm on the inputs)"
            .to_string()
    }
}

/// Features at scales orders of magnitude apart reach a model that does not rescale them
///
/// # Why
/// The loss's curvature along a first-layer weight scales with the variance of the feature it reads, so
/// features 100× apart in scale make the loss 10^4× more curved along some weights than others: a learning
/// rate stable for the large features barely moves the weights of the small ones, which are learnt last or
/// never (on the committed MLP, SGD 0.05 for 300 steps reaches MSE 1.8e-5 on standardised columns, 3.5e-5
/// when they spread over 10×, 0.124 when they spread from 1e-3 to 3).
///
/// # How
/// Over the whole sample, each feature's (column's, or image channel's) std and range (max − min); constant
/// features are left out. The feature the most times smaller than the one with the largest std, counting the
/// smaller of the std and range ratios (so a rare 0/1 indicator, small in std but not in range, is not
/// small), must be at least `spread` (default 100: two orders of magnitude) times smaller. Then one
/// train-mode forward and backward on a copy of the model with the first `batch` samples: each feature's
/// contribution to the output is its std times the rms of the gradient of a seeded random projection of the
/// output with respect to it. Warning when the large feature's contribution is also `spread` or more times
/// the small one's. A model that standardises its inputs itself (a BatchNorm on them, (x − mean) / std with
/// the data's statistics) evens the contributions out and passes; healthy data whose features vary 10× passes
/// on the data alone; a feature that the output does not depend on is not judged, nor a sample of fewer than
/// 8.
///
/// # Fix
/// Standardise every feature in the data pipeline ((x − mean) / std per column or channel, with the training
/// set's statistics; a log transform first for heavy-tailed positive features), or inside the model (a
/// BatchNorm on the inputs, or (x − mean) / std with stored statistics).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "input-normalization/feature-scale-spread", grade = warning)]
#[kind(example(args = "--model fixtures/models/mlp_default.pt --data fixtures/data/regression_mixed_scales.npz", severity = warning, message = "column 0 has std 9.46e-4 against 3.58 for column 31 (3551× smaller, in range too), and the model does not rescale it: its contribution to the output is 3316× smaller than column 31's; columns 100× or more below column 31: 14 of 32"))]
pub struct FeatureScaleSpread {
    /// The feature the most times smaller than the largest one.
    pub small_feature: usize,
    pub small_std: f64,
    pub small_range: f64,
    /// The feature with the largest std.
    pub large_feature: usize,
    pub large_std: f64,
    pub large_range: f64,
    /// The smaller of the two ratios large / small of std and of range.
    pub scale_ratio: f64,
    /// How many times the large feature's contribution to the output exceeds the small one's.
    pub contribution_ratio: f64,
    /// Features `spread` times or more below the largest, in both std and range.
    pub features_below: usize,
    pub features: usize,
    /// The `spread` option it was judged with.
    pub spread: f64,
    #[serde(skip)]
    pub unit: FeatureUnit,
}

impl Violation for FeatureScaleSpread {
    fn message(&self) -> String {
        let unit = self.unit;
        format!(
            "{unit} {} has std {} against {} for {unit} {} ({}× smaller, in range too), and the model does \
not rescale it: its contribution to the output is {}× smaller than {unit} {}'s; {unit}s {}× or more below \
{unit} {}: {} of {}",
            self.small_feature,
            num(self.small_std),
            num(self.large_std),
            self.large_feature,
            num(self.scale_ratio),
            num(self.contribution_ratio),
            self.large_feature,
            num(self.spread),
            self.large_feature,
            self.features_below,
            self.features,
        )
    }
    fn help(&self) -> String {
        "standardise every feature ((x - mean) / std per column or channel, with the training set's \
statistics) in the data pipeline, or inside the model (a BatchNorm on the inputs)"
            .to_string()
    }
}

/// The rms of each input feature: per column of 2-D inputs, per channel (dim 1) of 3-D and more, the
/// whole tensor for 1-D.
fn feature_rms(x: &Tensor) -> Result<Vec<f64>, CheckError> {
    let x = x.f_to_kind(Kind::Double)?;
    let dims: Vec<i64> = match x.dim() {
        0 | 1 => (0..x.dim() as i64).collect(),
        2 => vec![0],
        d => std::iter::once(0).chain(2..d as i64).collect(),
    };
    let ms = if dims.is_empty() {
        x.f_square()?
    } else {
        x.f_square()?
            .f_mean_dim(dims.as_slice(), false, Kind::Double)?
    };
    let v = Vec::<f64>::try_from(
        &ms.f_sqrt()?
            .f_flatten(0, -1)?
            .f_to_device(tch::Device::Cpu)?,
    )?;
    Ok(v)
}

/// What a feature is: a column of 2-D inputs, or a channel (dim 1) of 3-D and more (images).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FeatureUnit {
    Column,
    Channel,
}

impl FeatureUnit {
    fn of(inputs: &Tensor) -> FeatureUnit {
        if inputs.dim() >= 3 {
            FeatureUnit::Channel
        } else {
            FeatureUnit::Column
        }
    }
}

impl std::fmt::Display for FeatureUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FeatureUnit::Column => "column",
            FeatureUnit::Channel => "channel",
        })
    }
}

/// The inputs as (features, values): columns of 2-D inputs, channels (dim 1) of 3-D and more, one
/// feature for 1-D.
fn by_feature(x: &Tensor) -> Result<Tensor, CheckError> {
    let x = x.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?;
    Ok(match x.dim() {
        0 | 1 => x.f_reshape([1, -1])?,
        2 => x.f_transpose(0, 1)?.f_contiguous()?,
        _ => x.f_transpose(0, 1)?.f_flatten(1, -1)?,
    })
}

/// Per feature: std, range (max − min) and largest magnitude.
type FeatureSpread = (Vec<f64>, Vec<f64>, Vec<f64>);

/// Each feature's std, range (max − min) and largest magnitude over the sample.
fn feature_spread(x: &Tensor) -> Result<FeatureSpread, CheckError> {
    let f = by_feature(x)?;
    let std = Vec::<f64>::try_from(&f.f_std_dim([1i64].as_slice(), false, false)?)?;
    let max = f.f_amax([1i64].as_slice(), false)?;
    let min = f.f_amin([1i64].as_slice(), false)?;
    let range = Vec::<f64>::try_from(&max.f_sub(&min)?)?;
    let magnitude = Vec::<f64>::try_from(&max.f_abs()?.f_maximum(&min.f_abs()?)?)?;
    Ok((std, range, magnitude))
}

/// The feature with the largest std and the one the most times smaller than it (the smaller of the std
/// and range ratios), with that ratio and how many features are `spread` or more times smaller.
/// Features constant up to float rounding are left out. `None` with fewer than 2 varying features.
fn spread_pair(
    std: &[f64],
    range: &[f64],
    magnitude: &[f64],
    spread: f64,
) -> Option<(usize, usize, f64, usize, usize)> {
    let varying: Vec<usize> = (0..std.len())
        .filter(|&j| std[j] > 0.0 && range[j] > 1e-6 * magnitude[j] && std[j].is_finite())
        .collect();
    if varying.len() < 2 {
        return None;
    }
    let large = *varying
        .iter()
        .max_by(|&&a, &&b| std[a].total_cmp(&std[b]))?;
    let ratio = |j: usize| (std[large] / std[j]).min(range[large] / range[j]);
    let small = *varying
        .iter()
        .max_by(|&&a, &&b| ratio(a).total_cmp(&ratio(b)))?;
    let below = varying.iter().filter(|&&j| ratio(j) >= spread).count();
    Some((large, small, ratio(small), below, varying.len()))
}

/// Each feature's rms gradient of a seeded random projection of the output, from one train-mode forward
/// and backward on a copy (a leading BatchNorm normalises with the batch's statistics).
fn input_gradient_rms(
    model: &dyn Model,
    x: &Tensor,
    seed: i64,
) -> Result<Option<Vec<f64>>, CheckError> {
    let mut copy = model.trainable_copy()?;
    let leaf = x
        .f_detach_copy()?
        .f_to_device(model.device())?
        .f_set_requires_grad(true)?;
    // A non-leaf input, so that a forward that rescales its input in place still runs.
    let input = leaf.f_mul_scalar(1.0)?;
    tch::manual_seed(seed);
    let out = copy.forward(&input, Mode::Train)?;
    if !out.requires_grad() || !out.is_floating_point() {
        return Ok(None);
    }
    let projection = out.f_randn_like()?;
    let s = out
        .f_to_kind(Kind::Double)?
        .f_mul(&projection.f_to_kind(Kind::Double)?)?
        .f_sum(Kind::Double)?;
    let grads = Tensor::f_run_backward(&[s], &[&leaf], false, false)?;
    match grads.into_iter().next() {
        Some(g) if g.defined() => Ok(Some(feature_rms(&g)?)),
        _ => Ok(None),
    }
}

fn first(scales: Vec<LayerScale>) -> Option<LayerScale> {
    scales.into_iter().find(|s| s.rms.is_finite())
}

impl Check for InputNormalization {
    type Options = InputNormalizationOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &InputNormalizationOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        if !data.inputs.is_floating_point() {
            return Err(CheckError::skip(
                "the inputs are integers (token ids or indices): their scale is not a magnitude",
            ));
        }
        let n = data.len().min(options.batch) as i64;
        if n < 2 {
            return Err(CheckError::skip("the sample has fewer than 2 samples"));
        }
        let x = data.inputs.f_narrow(0, 0, n)?;
        if x.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Err(CheckError::skip(
                "the inputs hold NaN or Inf (nonfinite reports them)",
            ));
        }
        let raw = if largest_rms(&data.inputs)? > options.raw_scale {
            raw_scale(model, data, &x, options)?
        } else {
            Ok(None)
        };
        let skip = match raw {
            Ok(Some(finding)) => return Ok(CheckResult::with_findings(vec![finding])),
            Ok(None) => None,
            Err(reason) => Some(reason),
        };
        if let Some(finding) = scale_spread(model, data, &x, options, ctx.setup.seed as i64)? {
            return Ok(CheckResult::with_findings(vec![finding]));
        }
        match skip {
            Some(reason) => Err(CheckError::skip(reason)),
            None => Ok(CheckResult::passed()),
        }
    }
}

fn largest_rms(inputs: &Tensor) -> Result<f64, CheckError> {
    Ok(feature_rms(inputs)?.into_iter().fold(0.0, f64::max))
}

/// raw-input-scale: the finding, none, or why the first layer could not be measured.
fn raw_scale(
    model: &dyn Model,
    data: &Dataset,
    x: &Tensor,
    options: &InputNormalizationOptions,
) -> Result<Result<Option<Finding>, &'static str>, CheckError> {
    let rms = feature_rms(&data.inputs)?;
    let (largest_feature, largest) =
        rms.iter()
            .copied()
            .enumerate()
            .fold((0, 0.0), |a, (i, v)| if v > a.1 { (i, v) } else { a });
    let smallest = rms
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let Some(raw) = first(model.layer_scales(x)?) else {
        return Ok(Err(
            "no linear / conv / matmul op runs in forward, or the model cannot be looked into",
        ));
    };
    let Some(unit) = first(model.layer_scales(&standardised(x)?)?) else {
        return Ok(Ok(None));
    };
    if raw.rms <= options.max_first_layer || raw.rms <= options.ratio * unit.rms {
        return Ok(Ok(None));
    }
    let v = RawInputScale {
        layer: raw.module.clone(),
        op: raw.op.clone(),
        first_layer_rms: raw.rms,
        standardised_rms: unit.rms,
        largest_feature_rms: largest,
        largest_feature,
        smallest_feature_rms: if smallest.is_finite() { smallest } else { 0.0 },
        unit: FeatureUnit::of(&data.inputs),
    };
    let at = Location {
        data_key: Some(data.input_key.clone()),
        ..Location::module(&raw.module)
    };
    Ok(Ok(Some(Finding::new(&v, at))))
}

/// Samples needed to judge a spread: on fewer, one of many unit-scale features can come out 100× small
/// in std by chance (with 2 samples, about 1 feature in 100).
const MIN_SPREAD_SAMPLES: usize = 8;

/// feature-scale-spread: features `spread` times apart in the data, and in their contributions to the
/// output of the model.
fn scale_spread(
    model: &dyn Model,
    data: &Dataset,
    x: &Tensor,
    options: &InputNormalizationOptions,
    seed: i64,
) -> Result<Option<Finding>, CheckError> {
    if data.len() < MIN_SPREAD_SAMPLES {
        return Ok(None);
    }
    let (std, range, magnitude) = feature_spread(&data.inputs)?;
    let Some((large, small, scale_ratio, below, features)) =
        spread_pair(&std, &range, &magnitude, options.spread)
    else {
        return Ok(None);
    };
    if scale_ratio < options.spread {
        return Ok(None);
    }
    // A model the gradient cannot go through (an op without backward) is not judged on contributions.
    let gradient = match input_gradient_rms(model, x, seed) {
        Ok(Some(g)) if g.len() == std.len() => g,
        Ok(_) | Err(CheckError::Torch(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (gl, gs) = (gradient[large], gradient[small]);
    if !(gl > 0.0 && gs > 0.0 && gl.is_finite() && gs.is_finite()) {
        return Ok(None); // the output does not depend on one of them: not a matter of scale
    }
    let contribution_ratio = (std[large] * gl) / (std[small] * gs);
    if contribution_ratio < options.spread {
        return Ok(None);
    }
    let v = FeatureScaleSpread {
        small_feature: small,
        small_std: std[small],
        small_range: range[small],
        large_feature: large,
        large_std: std[large],
        large_range: range[large],
        scale_ratio,
        contribution_ratio,
        features_below: below,
        features,
        spread: options.spread,
        unit: FeatureUnit::of(&data.inputs),
    };
    let at = Location {
        data_key: Some(data.input_key.clone()),
        ..Location::default()
    };
    Ok(Some(Finding::new(&v, at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_columns_or_channels() {
        let x = Tensor::from_slice(&[1.0f64, 100.0, -1.0, -100.0]).reshape([2, 2]);
        let r = feature_rms(&x).unwrap();
        assert!((r[0] - 1.0).abs() < 1e-9 && (r[1] - 100.0).abs() < 1e-9);
        let img = Tensor::ones([4, 3, 2, 2], tch::kind::FLOAT_CPU) * 255.0;
        assert_eq!(feature_rms(&img).unwrap().len(), 3);
    }

    /// Columns: a unit-scale one, one 1000× smaller, a rare 0/1 indicator, a constant.
    fn columns() -> Tensor {
        let n = 100;
        let mut v = Vec::new();
        for i in 0..n {
            let t = (i as f64 / n as f64 - 0.5) * 3.4;
            v.extend([t, 1e-3 * t, if i == 7 { 1.0 } else { 0.0 }, 42.0]);
        }
        Tensor::from_slice(&v).reshape([n as i64, 4])
    }

    #[test]
    fn a_feature_is_small_in_std_and_range_alike() {
        let (std, range, magnitude) = feature_spread(&columns()).unwrap();
        assert!(
            (std[0] - 1.0).abs() < 0.02 && (range[0] - 3.37).abs() < 0.01,
            "{std:?} {range:?}"
        );
        let (large, small, ratio, below, features) =
            spread_pair(&std, &range, &magnitude, 100.0).unwrap();
        // The indicator is 10× below in std but not in range; the constant is left out.
        assert_eq!((large, small, below, features), (0, 1, 1, 3));
        assert!((ratio - 1e3).abs() < 1.0, "{ratio}");
        // Without the small column, the indicator counts by its range: 3.37× below.
        let pick = |v: &[f64]| vec![v[0], v[2], v[3]];
        let (_, small, ratio, below, _) =
            spread_pair(&pick(&std), &pick(&range), &pick(&magnitude), 100.0).unwrap();
        assert_eq!((small, below), (1, 0));
        assert!((ratio - 3.37).abs() < 0.01, "{ratio}");
    }
}
