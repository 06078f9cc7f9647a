//! identity-overfit: an image-to-image model can learn the identity on a small batch.
use super::prelude::*;
use crate::activation::{output_range, Range};
use crate::train::{self, to_vec};
use tch::Kind;

pub struct IdentityOverfit;

static INFO: CheckInfo = CheckInfo {
    id: "identity-overfit",
    group: Group::Fit,
    default_level: Level::Deny,
    summary: "An image-to-image model can learn the identity on a small batch",
    docs: Docs {
        what: "Trains an in-memory copy of an image-to-image model (output shape = input shape) to \
reproduce its own inputs on `samples` samples with Adam, and reports whether it gets there. Skipped when \
the output shape differs from the input shape (classifiers).",
        why: "Any image-to-image network worth training (denoiser, super-resolution, segmentation \
backbone with a matching head) can copy its input. If it cannot learn the identity on 8 images, it \
cannot learn the harder task either. Finding this in seconds saves a day of training.",
        details: include_str!("identity_overfit.md"),
    },
    kinds: &[&CannotLearnIdentity::KIND],
    trains: true,
    needs: &[Need::TrainModeBatch],
    task: Some(Task::ImageToImage),
    ..CheckInfo::PLAIN
};

/// Options of identity-overfit.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityOverfitOptions {
    /// Samples in the batch.
    #[schemars(range(min = 1))]
    pub samples: usize,
    /// Most Adam steps.
    #[schemars(range(min = 1))]
    pub steps: usize,
    /// Adam learning rate (calibrated: at 1e-3 a small UNet needs ~800 steps to copy normalised images).
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    /// Relative MSE (MSE / Var(x)) to reach.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub target: f64,
    /// Share of the inputs' variance a bounded head may lose to clamping and still learn them mapped into its range.
    #[schemars(range(min = 0, max = 1))]
    pub max_unrepresentable: f64,
}

impl Default for IdentityOverfitOptions {
    fn default() -> Self {
        IdentityOverfitOptions {
            samples: 8,
            steps: 500,
            lr: 3e-3,
            target: 1e-2,
            max_unrepresentable: 0.1,
        }
    }
}

/// An image-to-image model cannot learn the identity on a small batch
///
/// # Why
/// A model that cannot copy 8 of its own inputs has a bug (a detached path, a constant output, an output
/// activation that cannot represent the data) or a bottleneck that throws information away; it will not learn
/// the harder task either.
///
/// # How
/// Relative MSE = MSE / Var(x) on the batch, trained with Adam (lr `lr`) for up to `steps` steps, stopping
/// early once it is ≤ `target`. A fully convolutional model (its output keeps the input's shape at full size
/// and on a crop) trains on centred crops of half the side, never below 32 pixels (64×64 images: 32×32 crops,
/// a quarter of the work per step for the same kernels). Failing: the curve's start and end, the PSNR, and
/// the likely cause: no gradient reaches the parameters (every gradient is zero or the loss has no graph), an
/// output activation whose range cannot hold the inputs (named, with the share of inputs outside it), or a
/// plateau (a bottleneck or too little capacity; the narrowest layer is named). A bounded head (sigmoid,
/// tanh, relu …) is asked only for what it can represent: when clamping the inputs into its range loses at
/// most `max_unrepresentable` (10%) of their variance (noisy [0, 1] images straying past the bounds), the
/// copy learns the inputs clamped into the range (squeezed 10% inwards from two finite bounds) and the
/// relative MSE is measured against their variance; above that (a sigmoid head with inputs in [-1, 1] or
/// 0..255) the head truly cannot represent the data and is named as the cause. Then no weights bring the
/// relative MSE below the inputs' mean squared distance to the range (over their variance): when that floor
/// is above `target`, the verdict is certain and the copy is not trained (`relative_mse_floor`, `steps` 0).
///
/// # Fix
/// Make sure every output depends on the parameters (no .detach(), no multiplication by 0); pick an output
/// activation that covers the data range (or none); widen the bottleneck or add skip connections.
#[skip_serializing_none]
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "identity-overfit/cannot-learn-identity", grade = error)]
#[kind(example(args = "--model fixtures/models/ae_bottleneck.pt --data fixtures/data/textures.npz", severity = error, message = "the model cannot learn the identity on 8 samples: relative MSE 0.768 (needs ≤ 0.01) after 500 steps, from 1; PSNR 18.6 dB. Likely cause: a plateau, a bottleneck or too little capacity: the narrowest layer down.2 has 1 channel for a 3-channel input"))]
pub struct CannotLearnIdentity {
    #[serde(skip)]
    pub samples: usize,
    /// The fit's start and end (absent when it was not trained: see `relative_mse_floor`).
    pub relative_mse_start: Option<f64>,
    pub relative_mse_end: Option<f64>,
    /// The relative MSE below which no weights can go, when the output activation's range cannot
    /// hold the inputs: above the target, the copy is not trained (`steps` 0).
    pub relative_mse_floor: Option<f64>,
    #[serde(skip)]
    pub target: f64,
    /// The PSNR reached (at most this, with a floor).
    pub psnr_db: f64,
    pub steps: usize,
    pub cause: String,
    /// ` (32×32 crops)` when the fit ran on crops of a fully convolutional model, else empty.
    #[serde(skip)]
    pub crops: String,
}

impl Violation for CannotLearnIdentity {
    fn message(&self) -> String {
        if let Some(floor) = self.relative_mse_floor {
            return format!(
                "the model cannot learn the identity on {} samples{}: no weights bring the relative MSE \
below {} (needs ≤ {}; PSNR at most {} dB), so it was not trained. Cause: {}",
                self.samples,
                self.crops,
                num(floor),
                num(self.target),
                num(self.psnr_db),
                self.cause
            );
        }
        format!(
            "the model cannot learn the identity on {} samples{}: relative MSE {} (needs ≤ {}) after {} steps, \
from {}; PSNR {} dB. Likely cause: {}",
            self.samples,
            self.crops,
            num(self.relative_mse_end.unwrap_or(f64::NAN)),
            num(self.target),
            self.steps,
            num(self.relative_mse_start.unwrap_or(f64::NAN)),
            num(self.psnr_db),
            self.cause
        )
    }
    fn help(&self) -> String {
        "check that the output depends on the parameters, that the output activation covers the data \
range, and widen the bottleneck or add skip connections"
            .to_string()
    }
}

/// The dense layer with the fewest output channels, excluding the final projection.
fn narrowest_layer(model: &dyn Model) -> Result<Option<(String, i64)>, CheckError> {
    let kinds: std::collections::HashMap<&str, &str> = model
        .modules()
        .iter()
        .map(|m| (m.path.as_str(), m.kind.as_str()))
        .collect();
    let mut widths = Vec::new();
    for (name, t) in model.parameters()? {
        let Some(path) = name.strip_suffix(".weight") else {
            continue;
        };
        let kind = kinds.get(path).copied().unwrap_or("");
        let size = t.size();
        let width = if kind.starts_with("ConvTranspose") {
            size.get(1).copied()
        } else if kind.starts_with("Conv") || kind == "Linear" {
            size.first().copied()
        } else {
            None
        };
        if let Some(w) = width {
            widths.push((path.to_string(), w));
        }
    }
    widths.pop(); // the final projection has as many channels as the output, by design
    Ok(widths.into_iter().min_by_key(|(_, w)| *w))
}

/// `x` clamped into a bounded head's range; a side bounded on both ends is squeezed 10% inwards, since
/// sigmoid or tanh reach their bounds only with infinite logits.
fn into_range(x: &tch::Tensor, r: Range) -> Result<tch::Tensor, CheckError> {
    let lo = r.lo.is_finite().then_some(r.lo);
    let hi = r.hi.is_finite().then_some(r.hi);
    let clamped = x.f_clamp(lo.unwrap_or(f64::MIN), hi.unwrap_or(f64::MAX))?;
    Ok(match (lo, hi) {
        (Some(lo), Some(hi)) => {
            let m = 0.1 * (hi - lo);
            clamped
                .f_sub_scalar(lo)?
                .f_mul_scalar((hi - lo - 2.0 * m) / (hi - lo))?
                .f_add_scalar(lo + m)?
        }
        _ => clamped,
    })
}

impl Check for IdentityOverfit {
    type Options = IdentityOverfitOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &IdentityOverfitOptions) -> CheckOutput {
        let (model, data) = (ctx.model()?, ctx.data()?);
        let task = ctx.setup.resolved_task(Some(data));
        let prediction = ctx.prediction()?;
        let (in_shape, out_shape) = (data.inputs.size(), prediction.size());
        if task == Task::Classification || (task != Task::ImageToImage && in_shape != out_shape) {
            return Err(CheckError::skip(format!(
                "the output shape {:?} differs from the input shape {:?}: identity-overfit applies to image-to-image models",
                &out_shape[1..],
                &in_shape[1..]
            )));
        }
        if in_shape != out_shape {
            return Err(CheckError::skip(format!(
                "task is image-to-image but the output shape {:?} differs from the input shape {:?}",
                &out_shape[1..],
                &in_shape[1..]
            )));
        }
        let k = data.len().min(options.samples).max(1) as i64;
        let x = data.inputs.f_narrow(0, 0, k)?.f_to_device(model.device())?;
        let var = x
            .f_to_kind(Kind::Double)?
            .f_var(false)?
            .f_double_value(&[])?;
        if var <= 0.0 {
            return Err(CheckError::skip("the inputs are constant (zero variance)"));
        }
        let target = options.target;
        let steps = options.steps;
        let act = model.output_activation()?;
        let head = output_range(&act);
        let values = to_vec(&x)?;
        // A bounded head copies what it can represent: inputs that stray slightly past its bounds (noise
        // on [0, 1] images) are mapped into its range; the question is whether information flows through.
        let squared = |d: f64| d * d;
        let mapped = head.and_then(|r| {
            let lost = r.floor(&values, squared) / var;
            (lost > 0.0 && lost <= options.max_unrepresentable).then_some(r)
        });
        let goal = match mapped {
            Some(r) => into_range(&x, r)?,
            None => x.shallow_clone(),
        };
        let var = if mapped.is_some() {
            goal.f_to_kind(Kind::Double)?
                .f_var(false)?
                .f_double_value(&[])?
                .max(1e-30)
        } else {
            var
        };
        // A fully convolutional model learns the identity on crops as on whole images (the same
        // kernels, a quarter of the work per step at half the side); the relative MSE is the crop's.
        let cropped = match train::fully_convolutional_crop(model, &x, &out_shape)? {
            Some(sides) => {
                let goal = train::crop(&goal, &sides)?;
                let v = goal
                    .f_to_kind(Kind::Double)?
                    .f_var(false)?
                    .f_double_value(&[])?;
                (v > 0.0).then_some((train::crop(&x, &sides)?, goal, v, sides))
            }
            None => None,
        };
        let (fit_x, goal, var, sides) = match cropped {
            Some((cx, cg, v, sides)) => (cx, cg, v, Some(sides)),
            None => (x.shallow_clone(), goal, var, None),
        };
        let (lo, hi) = crate::stats::min_max(&values);
        let crop_sides = sides.as_deref().map(train::crop_label);
        let crops = crop_sides
            .as_ref()
            .map(|c| format!(" ({c} crops)"))
            .unwrap_or_default();
        // A head whose range cannot hold the inputs (past `max_unrepresentable`, so they are not mapped)
        // leaves an error no weights remove: the mean squared distance of the inputs to the range. When
        // that floor is above the target, the verdict is settled before any step, and certain (the
        // range is the graph's final op's, trusted when the model's real output lies in it).
        let agrees = |r: Range| crate::activation::holds(prediction, r);
        if let (Some(r), None) = (head.filter(|r| agrees(*r)), mapped) {
            let floor = r.floor(&to_vec(&fit_x)?, squared) / var;
            if floor > target {
                let violation = CannotLearnIdentity {
                    samples: k as usize,
                    relative_mse_start: None,
                    relative_mse_end: None,
                    relative_mse_floor: Some(floor),
                    target,
                    psnr_db: 10.0 * ((hi - lo).powi(2) / (floor * var)).log10(),
                    steps: 0,
                    cause: r.cannot_hold(&act.op, "inputs", &values),
                    crops,
                };
                let f = Finding::new(
                    &violation,
                    Location::data(&data.input_key, Some((0, k as usize))),
                );
                return Ok(CheckResult::with_findings(vec![f]));
            }
        }
        let mut copy = model.trainable_copy()?;
        let started = std::time::Instant::now();
        let fit = train::fit_batch(
            copy.as_mut(),
            &fit_x,
            &goal,
            LossKind::Mse,
            options.lr,
            steps,
            &|loss, _| loss / var <= target,
            ctx.progress,
            &train::Budget::start(ctx.setup.check_budget),
            "learning the identity",
        )?;
        let run = train::training_run(
            "identity",
            &fit_x,
            fit.losses.len(),
            fit.losses.len() - 1,
            started,
        );
        let relative: Vec<f64> = fit.losses.iter().map(|l| l / var).collect();
        // "32×32" for a fit on crops.
        let on = crop_sides
            .as_ref()
            .map(|c| format!(", on {c} crops"))
            .unwrap_or_default();
        let name = match mapped {
            Some(r) => format!(
                "identity relative MSE (inputs mapped into {}'s {}{on})",
                act.op,
                r.describe()
            ),
            None => match &crop_sides {
                Some(c) => format!("identity relative MSE (on {c} crops)"),
                None => "identity relative MSE".to_string(),
            },
        };
        let at = Location::data(&data.input_key, Some((0, k as usize)));
        let steps = relative.len() - 1;
        let curve = Curve::new(name, relative);
        train::fit_outcome(curve, target, run, fit.reached, at, |start, end| {
            let psnr = 10.0 * ((hi - lo).powi(2) / (end * var)).log10();
            let cause = match train::no_gradient_cause(&fit) {
                Some(c) => c,
                None => {
                    let outside = head.filter(|r| {
                        mapped.is_none() && values.iter().any(|v| r.distance(*v) > 0.0)
                    });
                    match outside {
                        Some(r) => r.cannot_hold(&act.op, "inputs", &values),
                        _ => {
                            let channels = in_shape.get(1).copied().unwrap_or(0);
                            let narrow = match narrowest_layer(model)? {
                                Some((path, w)) if w < channels || w == 1 => format!(
                                    ": the narrowest layer {path} has {w} channel{} for a {channels}-channel input",
                                    if w == 1 { "" } else { "s" }
                                ),
                                _ => String::new(),
                            };
                            format!("a plateau, a bottleneck or too little capacity{narrow}")
                        }
                    }
                }
            };
            Ok(CannotLearnIdentity {
                samples: k as usize,
                relative_mse_start: Some(start),
                relative_mse_end: Some(end),
                relative_mse_floor: None,
                target,
                psnr_db: psnr,
                steps,
                cause,
                crops,
            })
        })
    }
}
