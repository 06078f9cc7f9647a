//! input-normalization: inputs at a raw scale (0..255 pixels, physical units) reaching a first layer
//! that does not rescale them.
use super::initial_loss::standardised;
use super::prelude::*;
use crate::ports::LayerScale;
use tch::{Kind, Tensor};

pub struct InputNormalization;

static INFO: CheckInfo = CheckInfo {
    id: "input-normalization",
    group: Group::Data,
    default_level: Level::Warn,
    summary: "Inputs reach the network's first layer at a unit scale",
    docs: Docs {
        what: "Measures the scale of every input feature (per column, or per channel for images) and, \
when some feature is far from unit scale, the output of the model's first linear / conv layer on the \
sample as given and on the same sample standardised per feature. Integer inputs (token ids) are not \
judged.",
        why: "A network initialised for unit-scale inputs that receives 0..255 pixels or physical units \
in the thousands starts with huge activations and gradients: the first layer's weights learn at the \
wrong scale, saturating heads and large features drown the small ones, and the learning rate that suits \
the rest of the network is wrong for it.",
    },
    kinds: &[&RawInputScale::KIND],
    trains: false,
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
}

impl Default for InputNormalizationOptions {
    fn default() -> Self {
        InputNormalizationOptions {
            raw_scale: 5.0,
            max_first_layer: 10.0,
            ratio: 5.0,
            batch: 64,
        }
    }
}

/// The first layer sees raw-scale inputs.
#[derive(Serialize)]
pub struct RawInputScale {
    pub layer: String,
    pub op: String,
    pub first_layer_rms: f64,
    pub standardised_rms: f64,
    pub largest_feature_rms: f64,
    pub largest_feature: usize,
    pub smallest_feature_rms: f64,
    /// Whether the features are per channel (images) rather than per column.
    #[serde(skip)]
    pub channels: bool,
}

impl Violation for RawInputScale {
    const KIND: KindInfo = KindInfo {
        id: "input-normalization/raw-input-scale",
        severity: Severity::Warning,
        summary: "Raw-scale inputs reach a first layer that does not rescale them",
        why: "The default initialisations assume unit-scale inputs: a first layer fed 0..255 pixels or \
values in the thousands outputs activations hundreds of times too large, which saturates activations \
and heads, makes the first layer's gradients huge and lets the largest features drown the others.",
        how: "The rms of each input feature (column, or channel of an image) over the sample; when the \
largest exceeds `raw_scale`, a train-mode forward of a copy of the model (so a leading BatchNorm \
normalises with the batch's statistics) on the first `batch` samples, as given and standardised per \
feature, measuring the output of the first linear / conv / matmul op to run. Warning when its rms on \
the raw inputs exceeds `max_first_layer` and `ratio`× its rms on standardised inputs. A model that \
rescales its inputs itself (x / 255, a BatchNorm or LayerNorm before the first layer) feeds that layer \
unit-scale values and passes; integer inputs (token ids for an embedding) are not judged.",
        fix: "Standardise the inputs in the data pipeline ((x − mean) / std per feature or channel; for \
0..255 images, ToTensor's / 255 and Normalize(mean, std)), or rescale inside the model (x / 255, or a \
BatchNorm / LayerNorm on the inputs).",
        example: Some(Example {
            args: "--model fixtures/models/mlp_default.pt --data fixtures/data/regression_raw_units.npz",
            message: "the first layer `fc1` (aten::linear) gets raw-scale inputs: its output rms is 1.05e4 \
on the sample as given, against 0.594 on the same sample standardised; the largest feature (column 3) has \
rms 1.01e5, the smallest 0.832",
        }),
    };
    fn message(&self) -> String {
        let unit = if self.channels { "channel" } else { "column" };
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

fn first(scales: Vec<LayerScale>) -> Option<LayerScale> {
    scales.into_iter().find(|s| s.rms.is_finite())
}

impl Check for InputNormalization {
    type Options = InputNormalizationOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &InputNormalizationOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        if !data.inputs.is_floating_point() {
            return Ok(CheckResult::skipped(
                "the inputs are integers (token ids or indices): their scale is not a magnitude",
            ));
        }
        let n = data.len().min(options.batch) as i64;
        if n < 2 {
            return Ok(CheckResult::skipped("the sample has fewer than 2 samples"));
        }
        let x = data.inputs.f_narrow(0, 0, n)?;
        if x.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Ok(CheckResult::skipped(
                "the inputs hold NaN or Inf (nonfinite reports them)",
            ));
        }
        let rms = feature_rms(&data.inputs)?;
        let (largest_feature, largest) = rms
            .iter()
            .copied()
            .enumerate()
            .fold((0, 0.0), |a, (i, v)| if v > a.1 { (i, v) } else { a });
        if largest <= options.raw_scale {
            return Ok(CheckResult::passed());
        }
        let smallest = rms
            .iter()
            .copied()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let Some(raw) = first(model.layer_scales(&x)?) else {
            return Ok(CheckResult::skipped(
                "no linear / conv / matmul op runs in forward, or the model cannot be looked into",
            ));
        };
        let Some(unit) = first(model.layer_scales(&standardised(&x)?)?) else {
            return Ok(CheckResult::passed());
        };
        if raw.rms <= options.max_first_layer || raw.rms <= options.ratio * unit.rms {
            return Ok(CheckResult::passed());
        }
        let v = RawInputScale {
            layer: raw.module.clone(),
            op: raw.op.clone(),
            first_layer_rms: raw.rms,
            standardised_rms: unit.rms,
            largest_feature_rms: largest,
            largest_feature,
            smallest_feature_rms: if smallest.is_finite() { smallest } else { 0.0 },
            channels: data.inputs.dim() >= 3,
        };
        let at = Location {
            data_key: Some(data.input_key.clone()),
            ..Location::module(&raw.module)
        };
        Ok(CheckResult::with_findings(vec![Finding::new(&v, at)]))
    }
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
}
