//! init-std: initial weight standard deviations judged against the init families for each shape.

use tch::{Kind, Tensor};

use crate::finding::{named_numbers, num, Finding, Location};
use crate::options::{OptionSpec, Options};
use crate::ports::ModuleInfo;
use crate::{Check, CheckError, CheckInfo, CheckOutput, CheckResult, Docs, Group, Level};

pub struct InitStd;

const ID: &str = "init-std";

static INFO: CheckInfo = CheckInfo {
    id: ID,
    group: Group::Model,
    default_level: Level::Deny,
    summary: "Weight standard deviations fit the init families for each layer's fan-in and fan-out",
    docs: Docs {
        what: "Measures the standard deviation of every weight of Linear, Conv, ConvTranspose, recurrent, \
embedding and normalisation layers and compares it with the initialisations that work for that shape.",
        why: "A weight std far above the sane range makes activations and gradients explode layer after \
layer; far below, they vanish and the first steps learn nothing. An all-zero or constant matrix makes \
every unit compute the same thing (symmetry), so the units never learn different features. NaN or Inf \
weights poison every output. Fixed bounds such as [0.01, 0.2] misjudge PyTorch's own defaults: \
Linear(8192, 10) has std ≈ 0.006 and Conv2d(1, 8, 1) std ≈ 0.58, both fine.",
        how: "For Linear / Conv / ConvTranspose weights, fan_in = shape[1]·∏kernel and fan_out = \
shape[0]·∏kernel. The expected stds are PyTorch's default √(1/(3·fan_in)), LeCun √(1/fan_in), He \
√(2/fan_in), He with fan_out √(2/fan_out) (torchvision's ResNet, MobileNet) and Glorot \
√(2/(fan_in+fan_out)); a std outside [smallest/`band_factor`, largest·`band_factor`] is an error. \
Recurrent weights add PyTorch's U(±1/√hidden) (std 1/√(3·hidden)); embeddings are judged against \
N(0,1), 1/√dim and 0.02 (BERT/GPT); normalisation layers against their 1/0 defaults (mean |γ| or |β| \
above `norm_max` is an error). All-zero or constant weights and NaN/Inf are errors, except an all-zero \
normalisation γ (zero-init of a residual branch's last norm) and names listed in `allow_constant`. With \
`mode = \"fixed\"` the band is [`min`, `max`] instead.",
        example: "error[init-std] parameter fc1.weight: std 1 is outside the expected band 0.0241..0.53 \
for fan_in 64, fan_out 64 (PyTorch default 0.0722, LeCun 0.125, He 0.177, Glorot 0.125)",
        fix: "Remove the custom initialisation to keep PyTorch's default, or use nn.init.kaiming_normal_ \
(ReLU networks) or nn.init.xavier_uniform_ (tanh / sigmoid). Replace zero or constant matrices with a \
random init.",
    },
    options: &[
        OptionSpec::choice(
            "mode",
            "fan-in",
            &["fan-in", "fixed"],
            "`fan-in` judges each weight against the init families for its shape; `fixed` uses [min, max]",
        ),
        OptionSpec::float("band_factor", 3.0, "How far (×) outside the families' range a std may lie"),
        OptionSpec::float("min", 0.01, "Lower std bound in fixed mode"),
        OptionSpec::float("max", 0.2, "Upper std bound in fixed mode"),
        OptionSpec::float("norm_max", 10.0, "Largest mean |γ| or |β| of a normalisation layer"),
        OptionSpec::list(
            "allow_constant",
            "Parameter names (or name prefixes) whose all-zero / constant weights are deliberate",
        ),
    ],
    trains: false,
};

/// What a layer's weight is expected to look like.
enum Family {
    /// Dense weights (Linear / Conv / recurrent / embedding): named reference stds.
    Dense(Vec<(&'static str, f64)>, String),
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

fn measure(t: &Tensor) -> Result<Stats, CheckError> {
    let t = t.f_detach()?.f_to_kind(Kind::Double)?;
    let finite = t.f_isfinite()?;
    let non_finite = t.numel() as i64 - finite.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let numel = t.numel();
    let std = if numel > 1 {
        t.f_std(false)?.f_double_value(&[])?
    } else {
        0.0
    };
    let mean_abs = t.f_abs()?.f_mean(Kind::Double)?.f_double_value(&[])?;
    let first = t.f_flatten(0, -1)?.f_double_value(&[0])?;
    let constant = (numel > 1 && non_finite == 0 && std == 0.0).then_some(first);
    Ok(Stats {
        std,
        mean_abs,
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

impl Check for InitStd {
    fn info(&self) -> &'static CheckInfo {
        &INFO
    }

    fn run(&self, ctx: &crate::Context, options: &Options) -> CheckOutput {
        let Some(model) = ctx.model else {
            return Ok(CheckResult::skipped("no model"));
        };
        let fixed = options.str("mode") == "fixed";
        let band_factor = options.f64("band_factor");
        let allow_constant = options.list("allow_constant");
        let modules = model.modules();
        let mut findings = Vec::new();
        let mut judged = 0usize;
        let mut layer_curve =
            crate::Curve::new("weight std by layer, against its expected band", Vec::new());
        layer_curve.log_scale = true;
        let params: Vec<(String, Tensor)> = model.parameters()?;
        for (name, tensor) in &params {
            let (kind, leaf) = module_of(modules, name);
            let Some(family) = family_for(kind, leaf, &tensor.size()) else {
                continue;
            };
            judged += 1;
            let s = measure(tensor)?;
            let at = Location::parameter(name);
            if s.non_finite > 0 {
                findings.push(
                    Finding::error(
                        ID,
                        format!(
                            "{} of {} values are NaN or Inf",
                            s.non_finite,
                            tensor.numel()
                        ),
                    )
                    .at(at)
                    .help("re-initialise the layer; check the code that set these weights")
                    .evidence("non_finite", s.non_finite),
                );
                continue;
            }
            let allowed = allow_constant.iter().any(|p| name.starts_with(p.as_str()));
            match family {
                Family::Norm => {
                    let default = if leaf == "weight" { 1.0 } else { 0.0 };
                    if s.mean_abs > options.f64("norm_max") {
                        findings.push(
                            Finding::error(
                                ID,
                                format!(
                                    "{kind} {}: mean |value| {} is far from its default {default} (limit {})",
                                    if leaf == "weight" { "γ" } else { "β" },
                                    num(s.mean_abs),
                                    num(options.f64("norm_max"))
                                ),
                            )
                            .at(at)
                            .help("reset normalisation layers to γ = 1, β = 0 (nn.init.ones_ / zeros_)")
                            .evidence("mean_abs", s.mean_abs)
                            .evidence("default", default),
                        );
                    }
                }
                Family::Dense(families, shape_text) => {
                    if let Some(value) = s.constant {
                        if allowed {
                            continue;
                        }
                        let what = if value == 0.0 {
                            "all zeros".to_string()
                        } else {
                            format!("constant ({})", num(value))
                        };
                        findings.push(
                            Finding::error(
                                ID,
                                format!(
                                    "weight is {what}: every unit of this {kind} computes the same output and \
receives the same gradient, so they never differentiate"
                                ),
                            )
                            .at(at)
                            .help(format!(
                                "initialise with a random init (e.g. nn.init.kaiming_uniform_); if the zero init \
is deliberate, add \"{name}\" to allow_constant"
                            ))
                            .evidence("std", 0.0)
                            .evidence("value", value),
                        );
                        continue;
                    }
                    let smallest = families.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
                    let largest = families.iter().map(|f| f.1).fold(0.0, f64::max);
                    let (lo, hi) = if fixed {
                        (options.f64("min"), options.f64("max"))
                    } else {
                        (smallest / band_factor, largest * band_factor)
                    };
                    layer_curve.x.push(layer_curve.y.len() as f64);
                    layer_curve.y.push(s.std);
                    layer_curve.labels.push(name.clone());
                    layer_curve.lower.push(lo);
                    layer_curve.upper.push(hi);
                    if s.std >= lo && s.std <= hi {
                        continue;
                    }
                    let listed = families
                        .iter()
                        .map(|(n, v)| format!("{n} {}", num(*v)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let (direction, factor) = if s.std > hi {
                        ("above", s.std / largest)
                    } else {
                        ("below", smallest / s.std.max(1e-300))
                    };
                    let message = if fixed {
                        format!(
                            "std {} is outside the fixed band {}..{} ({shape_text})",
                            num(s.std),
                            num(lo),
                            num(hi)
                        )
                    } else {
                        format!(
                            "std {} is outside the expected band {}..{} for {shape_text} ({listed}); {}× {direction} the nearest init family",
                            num(s.std),
                            num(lo),
                            num(hi),
                            num(factor)
                        )
                    };
                    let he = families
                        .iter()
                        .find(|f| f.0 == "He")
                        .map(|f| f.1)
                        .unwrap_or(largest);
                    findings.push(
                        Finding::error(ID, message)
                            .at(at)
                            .help(format!(
                                "drop the custom init to keep PyTorch's default (std {}), or use \
nn.init.kaiming_normal_ (std {}) for ReLU layers",
                                num(families[0].1),
                                num(he)
                            ))
                            .evidence("std", s.std)
                            .evidence("band_low", lo)
                            .evidence("band_high", hi)
                            .evidence(
                                "families",
                                named_numbers(families.iter().map(|(n, v)| (n, *v))),
                            ),
                    );
                }
            }
        }
        if judged == 0 {
            return Ok(CheckResult::skipped(
                "no Linear, Conv, recurrent, embedding or normalisation layer found",
            ));
        }
        Ok(CheckResult::with_findings(findings).curve(layer_curve))
    }
}
