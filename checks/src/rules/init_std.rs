//! init-std: initial weight standard deviations judged against the init families for each shape.
use super::prelude::*;
use tch::{Kind, Tensor};

pub struct InitStd;

static INFO: CheckInfo = CheckInfo {
    id: "init-std",
    group: Group::Model,
    default_level: Level::Deny,
    summary: "Weight standard deviations fit the init families for each layer's fan-in and fan-out",
    docs: Docs {
        what: "Measures the standard deviation of every weight of Linear, Conv, ConvTranspose, recurrent, \
embedding and normalisation layers and compares it with the initialisations that work for that shape.",
        why: "Fixed bounds such as [0.01, 0.2] misjudge PyTorch's own defaults: Linear(8192, 10) has std \
≈ 0.006 and Conv2d(1, 8, 1) std ≈ 0.58, both fine; the expected std depends on the layer's fan-in and \
fan-out.",
        details: include_str!("init_std.md"),
    },
    kinds: &[
        &StdOutOfBand::KIND,
        &ConstantWeights::KIND,
        &NormFarFromDefault::KIND,
    ],
    ..CheckInfo::PLAIN
};

/// How init-std judges a std.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    FanIn,
    Fixed,
}

/// Options of init-std.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InitStdOptions {
    /// `fan-in` judges each weight against the init families for its shape; `fixed` uses [min, max].
    pub mode: Mode,
    /// How far (×) outside the families' range a std may lie.
    #[schemars(range(min = 1))]
    pub band_factor: f64,
    /// Lower std bound in fixed mode; in fan-in mode, the classic N(0, min) init is never too small.
    #[schemars(range(min = 0))]
    pub min: f64,
    /// Upper std bound in fixed mode.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max: f64,
    /// Largest mean |γ| or |β| of a normalisation layer.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub norm_max: f64,
    /// Parameter names (or name prefixes) whose all-zero / constant weights are deliberate.
    pub allow_constant: Vec<String>,
}

impl Default for InitStdOptions {
    fn default() -> Self {
        InitStdOptions {
            mode: Mode::FanIn,
            band_factor: 3.0,
            min: 0.01,
            max: 0.2,
            norm_max: 10.0,
            allow_constant: Vec::new(),
        }
    }
}

/// A weight's standard deviation lies far outside every sane init for its shape
///
/// # Why
/// A weight std far above the sane range makes activations and gradients explode layer after layer; far
/// below, they vanish and the first steps learn nothing.
///
/// # How
/// For Linear / Conv / ConvTranspose weights, fan_in = shape[1]·∏kernel and fan_out = shape[0]·∏kernel. The
/// expected stds are PyTorch's default √(1/(3·fan_in)), LeCun √(1/fan_in), He √(2/fan_in), He with fan_out
/// √(2/fan_out) (torchvision's ResNet, MobileNet) and Glorot √(2/(fan_in+fan_out)); a std outside
/// [smallest/`band_factor`, largest·`band_factor`] is an error. Recurrent weights add PyTorch's U(±1/√hidden)
/// (std 1/√(3·hidden)); embeddings are judged against N(0,1), 1/√dim and 0.02 (BERT/GPT). Two healthy
/// conventions lower the bound, never the upper one: the classic N(0, `min`) init (0.01: torchvision's
/// MobileNetV3 classifier, GoogLeNet, VGG-style heads) is never too small, with 4 standard errors of room for
/// the sampling noise of a measured std (`min`·(1 − 4/√(2·numel))); and a Linear / Conv whose output goes
/// straight into a normalisation layer (the next module in the model's module order is a BatchNorm,
/// LayerNorm, GroupNorm, InstanceNorm or RMSNorm) is scale-invariant, so its std is only too small once
/// fan_in·std² < 1e-3, where a unit input's output variance nears the norm's ε. With `mode = "fixed"` the
/// band is [`min`, `max`] instead.
///
/// # Fix
/// Remove the custom initialisation to keep PyTorch's default, or use nn.init.kaiming_normal_ (ReLU networks)
/// or nn.init.xavier_uniform_ (tanh / sigmoid).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "init-std/std-out-of-band", grade = error)]
#[kind(example(args = "--model fixtures/models/mlp_std1.pt", severity = error, message = "std 1 is outside the expected band 0.0241..0.53 for fan_in 64, fan_out 64 (PyTorch default 0.0722, LeCun 0.125, He 0.177, He fan_out 0.177, Glorot 0.125); 5.66× above the nearest init family"))]
pub struct StdOutOfBand {
    pub std: f64,
    pub band_low: f64,
    pub band_high: f64,
    /// The lower bound applied: `band_low`, lowered to the N(0, `min`) convention and, for a weight that
    /// feeds a normalisation layer, to the std at which the norm still restores the scale.
    #[serde(skip)]
    pub accepted_low: f64,
    /// Init family -> the std it gives this shape.
    #[serde(serialize_with = "as_map")]
    pub families: Vec<(&'static str, f64)>,
    #[serde(skip)]
    pub shape: String,
    #[serde(skip)]
    pub fixed: bool,
}

impl Violation for StdOutOfBand {
    fn message(&self) -> String {
        if self.fixed {
            return format!(
                "std {} is outside the fixed band {}..{} ({})",
                num(self.std),
                num(self.band_low),
                num(self.band_high),
                self.shape
            );
        }
        let smallest = self
            .families
            .iter()
            .map(|f| f.1)
            .fold(f64::INFINITY, f64::min);
        let largest = self.families.iter().map(|f| f.1).fold(0.0, f64::max);
        let (direction, factor) = if self.std > self.band_high {
            ("above", self.std / largest)
        } else {
            ("below", smallest / self.std.max(1e-300))
        };
        let listed = self
            .families
            .iter()
            .map(|(n, v)| format!("{n} {}", num(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "std {} is outside the expected band {}..{} for {} ({listed}); {}× {direction} the nearest init family",
            num(self.std),
            num(self.band_low),
            num(self.band_high),
            self.shape,
            num(factor)
        )
    }
    fn help(&self) -> String {
        let he = self.families.iter().find(|f| f.0 == "He").map(|f| f.1);
        format!(
            "drop the custom init to keep PyTorch's default (std {}), or use nn.init.kaiming_normal_ (std {}) \
for ReLU layers",
            num(self.families[0].1),
            num(he.unwrap_or(self.families[0].1))
        )
    }
}

/// A weight matrix is all zeros or constant, so its units never differentiate
///
/// # Why
/// An all-zero or constant matrix makes every unit compute the same thing and receive the same gradient
/// (symmetry), so the units never learn different features.
///
/// # How
/// Error for a judged dense weight (Linear, Conv, recurrent, embedding) whose values are all equal, except
/// names listed in `allow_constant`. Not judged here: normalisation γ = 0 (zero-init of a residual branch's
/// last norm, torchvision's zero_init_residual), and an all-zero final layer (the last Linear / Conv in
/// module order, e.g. torchvision's ViT head): its gradient δ·hᵀ differs per unit, so it breaks no symmetry;
/// only all-zero hidden layers keep their units identical.
///
/// # Fix
/// Replace zero or constant matrices with a random init (e.g. nn.init.kaiming_uniform_); if the zero init is
/// deliberate, list the parameter in `allow_constant`.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "init-std/constant-weights", grade = error)]
#[kind(example(args = "--model fixtures/models/mlp_zero_hidden.pt", severity = error, message = "weight is all zeros: every unit of this Linear computes the same output and receives the same gradient, so they never differentiate"))]
pub struct ConstantWeights {
    pub std: f64,
    pub value: f64,
    #[serde(skip)]
    pub layer: String,
    #[serde(skip)]
    pub parameter: String,
}

impl Violation for ConstantWeights {
    fn message(&self) -> String {
        let what = if self.value == 0.0 {
            "all zeros".to_string()
        } else {
            format!("constant ({})", num(self.value))
        };
        format!(
            "weight is {what}: every unit of this {} computes the same output and receives the same gradient, \
so they never differentiate",
            self.layer
        )
    }
    fn help(&self) -> String {
        format!(
            "initialise with a random init (e.g. nn.init.kaiming_uniform_); if the zero init is deliberate, \
add \"{}\" to allow_constant",
            self.parameter
        )
    }
}

/// A normalisation layer's γ or β lies far from its 1 / 0 default
///
/// # Why
/// Normalisation layers start at γ = 1, β = 0 so that the normalised activations keep unit scale; a γ or β of
/// hundreds rescales every activation behind it and destabilises the first steps.
///
/// # How
/// Error when the mean |γ| or |β| of a normalisation layer exceeds `norm_max`.
///
/// # Fix
/// Reset normalisation layers to γ = 1, β = 0 (nn.init.ones_ / zeros_).
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "init-std/norm-far-from-default", grade = error)]
#[kind(example(args = "--model fixtures/models/bn_gamma_100.pt", severity = error, message = "BatchNorm2d γ: mean |value| 100 is far from its default 1 (limit 10)"))]
pub struct NormFarFromDefault {
    pub mean_abs: f64,
    pub default: f64,
    #[serde(skip)]
    pub layer: String,
    #[serde(skip)]
    pub norm_max: f64,
}

impl Violation for NormFarFromDefault {
    fn message(&self) -> String {
        format!(
            "{} {}: mean |value| {} is far from its default {} (limit {})",
            self.layer,
            if self.default == 1.0 { "γ" } else { "β" },
            num(self.mean_abs),
            self.default,
            num(self.norm_max)
        )
    }
    fn help(&self) -> String {
        "reset normalisation layers to γ = 1, β = 0 (nn.init.ones_ / zeros_)".to_string()
    }
}

/// What a layer's weight is expected to look like.
enum Family {
    /// Dense weights (Linear / Conv / recurrent / embedding): named reference stds, the shape in words
    /// and the fan-in (`None` for embeddings, which have none).
    Dense(Vec<(&'static str, f64)>, String, Option<f64>),
    /// Normalisation γ (defaults to 1) or β (defaults to 0).
    Norm,
}

fn dense_families(shape: &[i64], kind: &str) -> Option<Family> {
    let receptive: i64 = shape.iter().skip(2).product();
    let is_recurrent = matches!(
        kind,
        "RNN" | "GRU" | "LSTM" | "RNNCell" | "GRUCell" | "LSTMCell"
    );
    if kind == "Embedding" || kind == "EmbeddingBag" {
        let dim = *shape.get(1)? as f64;
        return Some(Family::Dense(
            vec![
                ("N(0,1) default", 1.0),
                ("1/√dim", 1.0 / dim.sqrt()),
                ("BERT/GPT", 0.02),
            ],
            format!("embedding dim {}", dim as i64),
            None,
        ));
    }
    if shape.len() < 2 {
        return None;
    }
    let (fan_in, fan_out) = ((shape[1] * receptive) as f64, (shape[0] * receptive) as f64);
    let mut families = vec![
        ("PyTorch default", (1.0 / (3.0 * fan_in)).sqrt()),
        ("LeCun", (1.0 / fan_in).sqrt()),
        ("He", (2.0 / fan_in).sqrt()),
        ("He fan_out", (2.0 / fan_out).sqrt()),
        ("Glorot", (2.0 / (fan_in + fan_out)).sqrt()),
    ];
    if is_recurrent {
        // weight_ih / weight_hh stack the gates along dim 0; hidden = columns of weight_hh.
        let gates = match kind.trim_end_matches("Cell") {
            "LSTM" => 4.0,
            "GRU" => 3.0,
            _ => 1.0,
        };
        let hidden = fan_out / gates;
        families.push(("PyTorch RNN default", (1.0 / (3.0 * hidden)).sqrt()));
    }
    Some(Family::Dense(
        families,
        format!("fan_in {}, fan_out {}", fan_in as i64, fan_out as i64),
        Some(fan_in),
    ))
}

fn family_for(module_kind: &str, param: &str, shape: &[i64]) -> Option<Family> {
    let is_weight = param == "weight" || param.starts_with("weight_");
    let norm = module_kind.contains("Norm");
    if norm {
        return (param == "weight" || param == "bias").then_some(Family::Norm);
    }
    if !is_weight {
        return None;
    }
    let dense = matches!(
        module_kind,
        "Linear"
            | "Bilinear"
            | "Embedding"
            | "EmbeddingBag"
            | "RNN"
            | "GRU"
            | "LSTM"
            | "RNNCell"
            | "GRUCell"
            | "LSTMCell"
    ) || module_kind.starts_with("Conv")
        || module_kind.starts_with("LazyConv")
        || module_kind == "LazyLinear";
    if !dense {
        return None;
    }
    dense_families(shape, module_kind)
}

struct Stats {
    std: f64,
    mean_abs: f64,
    non_finite: i64,
    constant: Option<f64>,
}

/// Elements converted to f64 at a time: the statistics of a 49M-parameter weight need 8 MB, not a
/// 400 MB f64 copy of it (and another for its absolute values).
const CHUNK: i64 = 1 << 20;

/// Population std, mean |value|, non-finite count and constant value of a weight, in f64, chunk by
/// chunk (Chan et al.'s pairwise merge of means and squared deviations).
fn measure(t: &Tensor) -> Result<Stats, CheckError> {
    let flat = t.f_detach()?.f_flatten(0, -1)?;
    let numel = flat.numel() as i64;
    let (mut n, mut mean, mut m2, mut abs_sum, mut non_finite) = (0f64, 0f64, 0f64, 0f64, 0i64);
    let mut start = 0;
    while start < numel {
        let len = CHUNK.min(numel - start);
        let chunk = flat.f_narrow(0, start, len)?.f_to_kind(Kind::Double)?;
        let finite = chunk.f_isfinite()?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        non_finite += len - finite;
        let c_mean = chunk.f_mean(Kind::Double)?.f_double_value(&[])?;
        let c_m2 = chunk
            .f_sub_scalar(c_mean)?
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        abs_sum += chunk.f_abs()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let c_n = len as f64;
        let delta = c_mean - mean;
        let total = n + c_n;
        mean += delta * c_n / total;
        m2 += c_m2 + delta * delta * n * c_n / total;
        n = total;
        start += len;
    }
    let std = if numel > 1 { (m2 / n).sqrt() } else { 0.0 };
    let first = if numel > 0 {
        flat.f_double_value(&[0])?
    } else {
        0.0
    };
    let constant = (numel > 1 && non_finite == 0 && std == 0.0).then_some(first);
    Ok(Stats {
        std,
        mean_abs: if numel > 0 { abs_sum / n } else { 0.0 },
        non_finite,
        constant,
    })
}

fn module_of<'a>(modules: &'a [ModuleInfo], param: &'a str) -> (&'a str, &'a str) {
    let (path, leaf) = param.rsplit_once('.').unwrap_or(("", param));
    let kind = modules
        .iter()
        .find(|m| m.path == path)
        .map(|m| m.kind.as_str())
        .unwrap_or("");
    (kind, leaf)
}

/// The finding for one judged parameter, if its values call for one; dense weights add a point to the
/// per-layer curve.
/// A parameter being judged: its name, its module's kind, its leaf name and its size.
struct Param<'a> {
    name: &'a str,
    kind: &'a str,
    leaf: &'a str,
    numel: i64,
    /// The last Linear / Conv module of the model (its output layer).
    final_layer: bool,
    /// The next module after this one is a normalisation layer.
    pre_norm: bool,
}

/// Linear / Conv layers: the ones that can be an output layer or feed a normalisation layer.
fn is_linear_or_conv(kind: &str) -> bool {
    matches!(kind, "Linear" | "LazyLinear" | "Bilinear")
        || kind.starts_with("Conv")
        || kind.starts_with("LazyConv")
}

/// Whether the module at `path` feeds a normalisation layer: the next leaf module after it, in the
/// model's module order (registration order, which torchvision's blocks follow), is one.
fn feeds_norm(modules: &[ModuleInfo], path: &str) -> bool {
    let Some(i) = modules.iter().position(|m| m.path == path) else {
        return false;
    };
    let mut j = i + 1;
    // Skip containers (a Sequential, a BasicConv2d): the next module lies inside them.
    while j + 1 < modules.len()
        && modules[j + 1]
            .path
            .starts_with(&format!("{}.", modules[j].path))
    {
        j += 1;
    }
    modules
        .get(j)
        .is_some_and(|m| m.norm().is_some_and(|n| n.scale_invariant()))
}

/// The path of the model's output layer: its last Linear / Conv module in module order.
fn final_layer(modules: &[ModuleInfo]) -> Option<&str> {
    modules
        .iter()
        .rev()
        .find(|m| is_linear_or_conv(&m.kind))
        .map(|m| m.path.as_str())
}

/// The output variance of a unit input through a pre-norm weight, fan_in·std², below which the norm's
/// ε (1e-5 for BatchNorm, 1e-3 for torchvision's GoogLeNet) starts to swallow the signal.
const PRE_NORM_MIN_VARIANCE: f64 = 1e-3;

/// The std below which a fan-in-mode weight is too small: the families' bound `lo`, lowered to the
/// N(0, `conventional`) init (less 4 standard errors of a std measured on `numel` values) and, for a
/// weight that feeds a normalisation layer (`pre_norm_fan_in`), to √(1e-3 / fan_in).
fn accepted_low(lo: f64, conventional: f64, numel: i64, pre_norm_fan_in: Option<f64>) -> f64 {
    let noise = 4.0 / (2.0 * numel.max(1) as f64).sqrt();
    let mut low = lo.min(conventional * (1.0 - noise).max(0.0));
    if let Some(fan_in) = pre_norm_fan_in {
        low = low.min((PRE_NORM_MIN_VARIANCE / fan_in.max(1.0)).sqrt());
    }
    low
}

fn judge(
    p: &Param,
    family: Family,
    s: &Stats,
    options: &InitStdOptions,
    curve: &mut Curve,
) -> Option<Finding> {
    let (name, kind, leaf) = (p.name, p.kind, p.leaf);
    let at = Location::parameter_of(name, kind);
    if s.non_finite > 0 {
        // NaN / Inf weights are `nonfinite`'s finding (one root cause, one finding); their std means
        // nothing.
        return None;
    }
    match family {
        Family::Norm => {
            let default = if leaf == "weight" { 1.0 } else { 0.0 };
            (s.mean_abs > options.norm_max).then(|| {
                let v = NormFarFromDefault {
                    mean_abs: s.mean_abs,
                    default,
                    layer: kind.to_string(),
                    norm_max: options.norm_max,
                };
                Finding::new(&v, at)
            })
        }
        Family::Dense(families, shape, fan_in) => {
            if let Some(value) = s.constant {
                // torchvision's ViT (and many heads) zero-init the output layer: its gradient, δ·hᵀ,
                // differs per unit, so the symmetry argument only holds for hidden layers.
                let allowed = (value == 0.0 && p.final_layer)
                    || options
                        .allow_constant
                        .iter()
                        .any(|p| name.starts_with(p.as_str()));
                return (!allowed).then(|| {
                    let v = ConstantWeights {
                        std: 0.0,
                        value,
                        layer: kind.to_string(),
                        parameter: name.to_string(),
                    };
                    Finding::new(&v, at)
                });
            }
            let smallest = families.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
            let largest = families.iter().map(|f| f.1).fold(0.0, f64::max);
            let fixed = options.mode == Mode::Fixed;
            let (lo, hi) = if fixed {
                (options.min, options.max)
            } else {
                (
                    smallest / options.band_factor,
                    largest * options.band_factor,
                )
            };
            let accepted_low = if fixed {
                lo
            } else {
                accepted_low(lo, options.min, p.numel, fan_in.filter(|_| p.pre_norm))
            };
            curve.x.push(curve.y.len() as f64);
            curve.y.push(s.std);
            curve.labels.push(name.to_string());
            curve.lower.push(accepted_low);
            curve.upper.push(hi);
            (s.std < accepted_low || s.std > hi).then(|| {
                let v = StdOutOfBand {
                    std: s.std,
                    band_low: lo,
                    band_high: hi,
                    accepted_low,
                    families,
                    shape,
                    fixed,
                };
                Finding::new(&v, at)
            })
        }
    }
}

impl Check for InitStd {
    type Options = InitStdOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &crate::Context, options: &InitStdOptions) -> CheckOutput {
        let model = ctx.model()?;
        let modules = model.modules();
        let output_layer = final_layer(modules);
        let mut findings = Vec::new();
        let mut judged = 0usize;
        let mut curve = Curve::new("weight std by layer, against its expected band", Vec::new());
        curve.log_scale = true;
        for (name, tensor) in &model.parameters()? {
            let (kind, leaf) = module_of(modules, name);
            let Some(family) = family_for(kind, leaf, &tensor.size()) else {
                continue;
            };
            judged += 1;
            let stats = measure(tensor)?;
            let path = name.rsplit_once('.').map_or("", |(m, _)| m);
            let linear_or_conv = is_linear_or_conv(kind);
            let param = Param {
                name,
                kind,
                leaf,
                numel: tensor.numel() as i64,
                final_layer: linear_or_conv && output_layer == Some(path),
                pre_norm: linear_or_conv && feeds_norm(modules, path),
            };
            findings.extend(judge(&param, family, &stats, options, &mut curve));
        }
        if judged == 0 {
            return Err(CheckError::skip(
                "no Linear, Conv, recurrent, embedding or normalisation layer found",
            ));
        }
        Ok(CheckResult::with_findings(findings).curve(curve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, kind: &str) -> ModuleInfo {
        ModuleInfo {
            path: path.into(),
            kind: kind.into(),
            training: true,
        }
    }

    #[test]
    fn the_n_0_001_convention_lowers_the_bound_with_room_for_sampling_noise() {
        // Linear(288, 512): the families' bound is 0.0113; N(0, 0.01) measured on 147k values passes.
        let low = accepted_low(0.0113, 0.01, 288 * 512, None);
        assert!(low < 0.01 && low > 0.0099, "{low}");
        // A bound already below 0.01 (wide layers) stays where the families put it.
        assert_eq!(accepted_low(0.006, 0.01, 8192 * 10, None), 0.006);
    }

    #[test]
    fn pre_norm_weights_are_too_small_only_once_the_norm_eps_would_dominate() {
        let low = accepted_low(0.0266, 0.01, 864, Some(27.0));
        assert!((low - (1e-3f64 / 27.0).sqrt()).abs() < 1e-12, "{low}");
        // A std of 1e-5 before a norm is still far too small.
        assert!(accepted_low(0.0266, 0.01, 864, Some(27.0)) > 100.0 * 1e-5);
    }

    #[test]
    fn the_next_leaf_module_decides_whether_a_weight_feeds_a_norm() {
        let modules = [
            module("", "Net"),
            module("conv1", "BasicConv2d"),
            module("conv1.conv", "Conv2d"),
            module("conv1.bn", "BatchNorm2d"),
            module("down", "Sequential"),
            module("down.0", "Conv2d"),
            module("head", "Sequential"),
            module("head.0", "BatchNorm1d"),
            module("fc", "Linear"),
            module("act", "ReLU"),
        ];
        assert!(feeds_norm(&modules, "conv1.conv"));
        // The next leaf after down.0 is head.0, inside a container.
        assert!(feeds_norm(&modules, "down.0"));
        assert!(!feeds_norm(&modules, "fc"));
        assert_eq!(final_layer(&modules), Some("fc"));
    }
}
