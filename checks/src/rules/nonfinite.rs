//! nonfinite: NaN or ±Inf anywhere from the data to the gradients, reported once, at its root.
use super::prelude::*;
use crate::ports::NonFiniteOp;
use crate::train;
use tch::{Kind, Tensor};

pub struct Nonfinite;

static INFO: CheckInfo = CheckInfo {
    id: "nonfinite",
    group: Group::Model,
    default_level: Level::Deny,
    summary: "No NaN or Inf in the data, the model's state, its output, its gradients or the loss log",
    docs: Docs {
        what: "Looks for NaN and ±Inf along the path a training step takes, in order: the inputs and \
targets of the data sample, the parameters and buffers of the model, the eval-mode output on the samples \
whose inputs are finite (naming the first op that produced a non-finite value), the gradients of one \
backward pass on samples whose inputs and targets are finite, and, independently, the loss log. One root \
cause gives one finding: a stage is judged only when everything upstream of it is finite, so NaN \
parameters are not reported again as NaN outputs and NaN gradients.",
        why: "A single NaN spreads to every value it touches: one NaN pixel makes the loss NaN, one NaN \
gradient makes every weight NaN at the first optimizer step. Training then fails far from the cause; \
naming the first place a NaN appears saves the hunt.",
        details: include_str!("nonfinite.md"),
    },
    kinds: &[
        &NonFiniteData::KIND,
        &NonFiniteParameters::KIND,
        &NonFiniteBuffers::KIND,
        &NonFiniteOutput::KIND,
        &NonFiniteGradients::KIND,
        &NonFiniteLog::KIND,
    ],
    ..CheckInfo::PLAIN
};

/// Options of nonfinite.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NonfiniteOptions {
    /// Samples in the backward pass that looks for non-finite gradients.
    #[schemars(range(min = 1))]
    pub batch: usize,
}

impl Default for NonfiniteOptions {
    fn default() -> Self {
        NonfiniteOptions { batch: 32 }
    }
}

/// How many values of a tensor are NaN and how many ±Inf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Count {
    pub nan: i64,
    pub inf: i64,
}

impl Count {
    fn total(self) -> i64 {
        self.nan + self.inf
    }
    fn of(t: &Tensor) -> Result<Count, CheckError> {
        if !t.is_floating_point() || t.numel() == 0 {
            return Ok(Count::default());
        }
        let sum = |m: Tensor| -> Result<i64, CheckError> {
            Ok(m.f_sum(Kind::Int64)?.f_int64_value(&[])?)
        };
        Ok(Count {
            nan: sum(t.f_isnan()?)?,
            inf: sum(t.f_isinf()?)?,
        })
    }
    /// "3 NaN", "2 Inf" or "3 NaN, 2 Inf".
    fn words(self) -> String {
        match (self.nan, self.inf) {
            (n, 0) => format!("{n} NaN"),
            (0, i) => format!("{i} Inf"),
            (n, i) => format!("{n} NaN, {i} Inf"),
        }
    }
}

/// Per sample (dim 0), whether every value is finite. Integer data is finite.
fn finite_samples(t: &Tensor) -> Result<Vec<bool>, CheckError> {
    let n = t.size().first().copied().unwrap_or(0);
    if !t.is_floating_point() || n == 0 {
        return Ok(vec![true; n as usize]);
    }
    let per_sample = t.f_isfinite()?.f_reshape([n, -1])?.f_all_dim(1, false)?;
    Ok(Vec::<bool>::try_from(
        &per_sample.f_to_device(tch::Device::Cpu)?,
    )?)
}

/// The data sample's inputs or targets hold NaN or Inf
///
/// # Why
/// A NaN or Inf input or target makes the loss of its batch NaN, and the first optimizer step that sees it
/// writes NaN into every weight: the run dies at a random step, far from the cause (a missing value, a
/// division by a zero std in preprocessing, a corrupt file).
///
/// # How
/// Error for each of the inputs and the targets (float arrays; integer arrays are always finite) that holds a
/// NaN or ±Inf value: the number of samples affected, the first one, and the count of NaN and Inf values.
///
/// # Fix
/// Find where the values come from (a missing value, log(0), x / std with std = 0 in preprocessing) and fill,
/// clip or drop those samples before training; torch.nan_to_num is a last resort.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "nonfinite/data", grade = error)]
#[kind(example(args = "--model fixtures/models/mlp_default.pt --data fixtures/data/regression_nan_inputs.npz", severity = error, message = "3 of 64 samples of `inputs` hold NaN or Inf (4 NaN, 1 Inf), the first at sample 5"))]
pub struct NonFiniteData {
    pub key: String,
    pub samples: usize,
    pub of: usize,
    pub first_sample: usize,
    pub values: Count,
}

impl Violation for NonFiniteData {
    fn message(&self) -> String {
        format!(
            "{} of {} samples of `{}` hold NaN or Inf ({}), the first at sample {}",
            self.samples,
            self.of,
            self.key,
            self.values.words(),
            self.first_sample
        )
    }
    fn help(&self) -> String {
        format!(
            "fill, clip or drop the samples with NaN / Inf in `{}` before training (look for missing values, \
log(0), or division by a zero std in preprocessing)",
            self.key
        )
    }
}

/// "2 buffers hold NaN or Inf: …": the message of the parameter and buffer kinds.
fn holding(noun: &str, tensors: &[(String, Count, i64)]) -> String {
    let n = tensors.len();
    let verb = if n == 1 { " holds" } else { "s hold" };
    format!("{n} {noun}{verb} NaN or Inf: {}", listed(tensors))
}

/// Parameter or buffer names with their counts, for a message: the first 4 and a count of the rest.
fn listed(tensors: &[(String, Count, i64)]) -> String {
    let described: Vec<String> = tensors
        .iter()
        .map(|(name, c, numel)| format!("{name} ({} of {numel} values)", c.words()))
        .collect();
    crate::finding::first_of(&described, 4)
}

/// Parameters of the model hold NaN or Inf
///
/// # Why
/// NaN or Inf weights poison every output and every gradient: nothing trains. They come from a checkpoint
/// saved after a run diverged, or from custom initialisation code.
///
/// # How
/// Error listing every parameter (trainable or frozen, of any layer) with a NaN or ±Inf value, with the
/// counts. The output and gradients are then not judged: they are NaN because of these.
///
/// # Fix
/// Re-initialise the layers or load a checkpoint from before the run diverged; check the code that set or
/// loaded these weights.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "nonfinite/parameters", grade = error)]
#[kind(example(args = "--model fixtures/models/mlp_nan.pt", severity = error, message = "1 parameter holds NaN or Inf: fc2.weight (3 NaN of 4096 values)"))]
pub struct NonFiniteParameters {
    #[serde(serialize_with = "names")]
    pub parameters: Vec<(String, Count, i64)>,
}

/// The names of (name, count, numel) entries, for the JSON evidence.
fn names<S: serde::Serializer>(v: &[(String, Count, i64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(n, _, _)| n))
}

impl Violation for NonFiniteParameters {
    fn message(&self) -> String {
        holding("parameter", &self.parameters)
    }
    fn help(&self) -> String {
        "re-initialise these layers or load a checkpoint from before the run diverged".to_string()
    }
}

/// Buffers of the model (BatchNorm running statistics) hold NaN or Inf
///
/// # Why
/// BatchNorm's running mean and variance are what eval mode normalises with: a NaN there makes every
/// eval-mode output NaN while training looks fine, and a checkpoint saved after one NaN batch carries them
/// on.
///
/// # How
/// Error listing every floating-point buffer (running_mean, running_var, …) with a NaN or ±Inf value. The
/// eval-mode output is then not judged: it is NaN because of these.
///
/// # Fix
/// Reset the statistics (module.reset_running_stats()) and recompute them with a few train-mode passes over
/// clean data, or load a checkpoint from before the NaN batch.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "nonfinite/buffers", grade = error)]
#[kind(example(args = "--model fixtures/models/bn_nan_stats.pt", severity = error, message = "1 buffer holds NaN or Inf: bn.running_var (2 NaN of 64 values)"))]
pub struct NonFiniteBuffers {
    #[serde(serialize_with = "names")]
    pub buffers: Vec<(String, Count, i64)>,
}

impl Violation for NonFiniteBuffers {
    fn message(&self) -> String {
        holding("buffer", &self.buffers)
    }
    fn help(&self) -> String {
        "reset the running statistics (reset_running_stats()) and recompute them on clean data"
            .to_string()
    }
}

/// The model outputs NaN or Inf on finite inputs
///
/// # Why
/// An op that turns finite values into NaN or Inf (log of 0 or of a negative number, sqrt of a negative, a
/// division by zero, exp overflow) makes the loss NaN on the first batch that reaches it.
///
/// # How
/// An eval-mode forward on the samples whose inputs are finite; when its output holds NaN or Inf, the forward
/// runs again through a copy of the graph with a probe after every op, which names the first op, in execution
/// order, whose output is non-finite, the submodule whose code runs it, and its source line. Not judged when
/// the parameters or buffers are non-finite (reported as those).
///
/// # Fix
/// Guard the op: clamp the argument of log / sqrt / division away from 0 (torch.log(x.clamp_min(1e-6))), use
/// the fused stable forms (log_softmax, logsigmoid, BCEWithLogitsLoss), or remove an activation that feeds
/// log.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "nonfinite/output", grade = error)]
#[kind(example(args = "--model fixtures/models/log_relu_head.pt --data fixtures/data/regression.npz", severity = error, message = "the eval-mode output holds NaN or Inf on 30 of 64 samples with finite inputs (30 Inf); the first op to produce them is aten::log in module `head` (`return torch.log(torch.relu(self.fc(x)))`)"))]
pub struct NonFiniteOutput {
    pub samples: usize,
    pub of: usize,
    pub values: Count,
    pub op: Option<String>,
    pub module: Option<String>,
    pub source: Option<String>,
}

impl NonFiniteOutput {
    fn culprit(&self) -> String {
        let Some(op) = &self.op else {
            return String::new();
        };
        let module = match self.module.as_deref() {
            Some("") | None => "the root module".to_string(),
            Some(m) => format!("module `{m}`"),
        };
        let source = match self.source.as_deref() {
            Some(s) if !s.is_empty() => format!(" (`{s}`)"),
            _ => String::new(),
        };
        format!("; the first op to produce them is {op} in {module}{source}")
    }
}

impl Violation for NonFiniteOutput {
    fn message(&self) -> String {
        format!(
            "the eval-mode output holds NaN or Inf on {} of {} samples with finite inputs ({}){}",
            self.samples,
            self.of,
            self.values.words(),
            self.culprit()
        )
    }
    fn help(&self) -> String {
        let op = self.op.as_deref().unwrap_or("");
        let op = op.rsplit("::").next().unwrap_or(op);
        match op {
            "log" | "log2" | "log10" | "log_" => {
                "clamp the argument of log away from 0 (x.clamp_min(1e-6)), or use log_softmax / logsigmoid"
                    .to_string()
            }
            "sqrt" | "rsqrt" | "pow" => {
                "clamp the argument away from 0 and negatives (x.clamp_min(1e-12)) before this op".to_string()
            }
            "div" | "div_" | "reciprocal" => "add an epsilon to the divisor".to_string(),
            "exp" => "use a numerically stable form (logsumexp, softmax) instead of exp".to_string(),
            _ => "guard this op against the values that make it non-finite (log / sqrt / division near 0, \
exp overflow)"
                .to_string(),
        }
    }
}

/// Parameters get NaN or Inf gradients although the forward pass is finite
///
/// # Why
/// A finite forward can still have a non-finite backward: sqrt at 0 has an infinite derivative, torch.where
/// passes NaN gradients from the branch it did not pick, a custom loss divides by zero. The first optimizer
/// step then writes NaN into the weights.
///
/// # How
/// One train-mode forward and backward pass of the configured loss on the first `batch` samples whose inputs
/// and targets are finite, on a copy of the model; error for the trainable parameters whose gradient holds
/// NaN or Inf (or when the loss itself is non-finite). Only judged when the data, the parameters, the buffers
/// and the eval-mode output are finite, and when the loss fits the output (else gradient-flow reports why).
///
/// # Fix
/// Look for sqrt / pow with a fractional exponent at 0 (add an epsilon), torch.where or masking that hides a
/// NaN branch (compute the unsafe branch on safe values), and divisions in the loss.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "nonfinite/gradients", grade = error)]
#[kind(example(args = "--model fixtures/models/sqrt_where_head.pt --data fixtures/data/regression.npz", severity = error, message = "4 of 4 trainable parameters get NaN or Inf gradients from one backward pass of the mse loss (1.21) on 32 samples whose forward is finite: fc1.weight, fc1.bias, fc.weight, fc.bias"))]
pub struct NonFiniteGradients {
    pub loss: String,
    pub loss_value: f64,
    pub samples: usize,
    pub non_finite: Vec<String>,
    pub trainable: usize,
}

impl Violation for NonFiniteGradients {
    fn message(&self) -> String {
        if !self.loss_value.is_finite() {
            return format!(
                "the {} loss is {} on {} samples whose inputs, targets and output are finite",
                self.loss,
                num(self.loss_value),
                self.samples
            );
        }
        format!(
            "{} of {} trainable parameters get NaN or Inf gradients from one backward pass of the {} loss ({}) \
on {} samples whose forward is finite: {}",
            self.non_finite.len(),
            self.trainable,
            self.loss,
            num(self.loss_value),
            self.samples,
            crate::finding::first_of(&self.non_finite, 8)
        )
    }
    fn help(&self) -> String {
        "add an epsilon under sqrt / fractional pow, and compute torch.where's unsafe branch on safe values \
(its NaN gradient flows even where it is not picked)"
            .to_string()
    }
}

/// The loss log holds NaN or Inf values
///
/// # Why
/// A logged NaN or Inf loss means the run went non-finite at that step: everything after it trained nothing,
/// and the other log checks can judge only the finite rows.
///
/// # How
/// Error for each loss column (the total and the terms) whose file writes NaN or ±Inf in some row (an empty
/// cell or a JSON null is a missing value, not a NaN): the first such step, its value, how many rows are
/// non-finite, and the last finite value before it.
///
/// # Fix
/// Find what changed at that step: lower the learning rate, add gradient clipping (clip_grad_norm_), look for
/// a NaN batch in the data, or guard log / sqrt / division in the loss.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "nonfinite/log", grade = error)]
#[kind(example(args = "--log fixtures/logs/loss_nan.csv", severity = error, message = "the logged `loss` is inf from step 4 (first of 36 non-finite rows of 40; the last finite value was 2.90e15)"))]
pub struct NonFiniteLog {
    pub column: String,
    pub first_step: f64,
    pub value: f64,
    pub rows: usize,
    pub of: usize,
    pub last_finite: Option<f64>,
}

impl Violation for NonFiniteLog {
    fn message(&self) -> String {
        let before = match self.last_finite {
            Some(v) => format!("; the last finite value was {}", num(v)),
            None => "; no finite value comes before it".to_string(),
        };
        format!(
            "the logged `{}` is {} from step {} (first of {} non-finite rows of {}{before})",
            self.column,
            num(self.value),
            num(self.first_step),
            self.rows,
            self.of
        )
    }
    fn help(&self) -> String {
        "lower the learning rate or clip gradients (clip_grad_norm_), and look for a NaN batch or an \
unguarded log / sqrt / division in the loss"
            .to_string()
    }
}

/// Every floating-point tensor of `tensors` that holds NaN or Inf, with its counts and size.
fn non_finite_tensors(tensors: &[NamedTensor]) -> Result<Vec<(String, Count, i64)>, CheckError> {
    let mut out = Vec::new();
    for (name, t) in tensors {
        let c = Count::of(&t.f_detach()?)?;
        if c.total() > 0 {
            out.push((name.clone(), c, t.numel() as i64));
        }
    }
    Ok(out)
}

/// Findings for the inputs and the targets; the indices of the samples whose inputs (`.0`) and whose
/// inputs and targets (`.1`) are finite.
fn judge_data(
    data: &Dataset,
    findings: &mut Vec<Finding>,
) -> Result<(Vec<i64>, Vec<i64>), CheckError> {
    let inputs_ok = finite_samples(&data.inputs)?;
    let targets_ok = finite_samples(&data.targets)?;
    for (key, tensor, ok) in [
        (&data.input_key, &data.inputs, &inputs_ok),
        (&data.target_key, &data.targets, &targets_ok),
    ] {
        let bad: Vec<usize> = (0..ok.len()).filter(|&i| !ok[i]).collect();
        if let Some(&first) = bad.first() {
            let v = NonFiniteData {
                key: key.clone(),
                samples: bad.len(),
                of: ok.len(),
                first_sample: first,
                values: Count::of(tensor)?,
            };
            findings.push(Finding::new(
                &v,
                Location::data(key, Some((first, first + 1))),
            ));
        }
    }
    let finite_inputs = (0..inputs_ok.len())
        .filter(|&i| inputs_ok[i])
        .map(|i| i as i64)
        .collect::<Vec<_>>();
    let finite_both = finite_inputs
        .iter()
        .copied()
        .filter(|&i| targets_ok.get(i as usize).copied().unwrap_or(true))
        .collect();
    Ok((finite_inputs, finite_both))
}

/// The eval-mode output on the finite-input samples; a finding naming the first non-finite op.
fn judge_output(
    ctx: &Context,
    model: &dyn Model,
    data: &Dataset,
    finite_inputs: &[i64],
) -> Result<Option<Finding>, CheckError> {
    let prediction = ctx.prediction()?;
    let n = prediction.size().first().copied().unwrap_or(0);
    if n as usize != data.len() || finite_inputs.is_empty() {
        return Ok(None);
    }
    let index = Tensor::from_slice(finite_inputs).to_device(prediction.device());
    let output = prediction.f_index_select(0, &index)?;
    let ok = finite_samples(&output)?;
    let bad: Vec<i64> = (0..ok.len())
        .filter(|&i| !ok[i])
        .map(|i| finite_inputs[i])
        .collect();
    if bad.is_empty() {
        return Ok(None);
    }
    // The probe runs on a few of the offending samples: enough to show the op, cheap on a big model.
    let probe_rows = Tensor::from_slice(&bad[..bad.len().min(8)]);
    let x = data.inputs.f_index_select(0, &probe_rows)?;
    let (_, op): (Tensor, Option<NonFiniteOp>) = model.predict_tracing_non_finite(&x)?;
    let v = NonFiniteOutput {
        samples: bad.len(),
        of: finite_inputs.len(),
        values: Count::of(&output)?,
        op: op.as_ref().map(|o| o.op.clone()),
        module: op.as_ref().map(|o| o.module.clone()),
        source: op.as_ref().map(|o| o.source.clone()),
    };
    let first = bad[0] as usize;
    let location = match op.as_ref().map(|o| o.module.as_str()) {
        Some(m) => Location {
            samples: Some((first, first + 1)),
            data_key: Some(data.input_key.clone()),
            ..Location::module(m)
        },
        None => Location::data(&data.input_key, Some((first, first + 1))),
    };
    Ok(Some(Finding::new(&v, location)))
}

/// One train-mode forward / backward on the first `batch` samples of `rows`.
fn judge_gradients(
    ctx: &Context,
    model: &dyn Model,
    data: &Dataset,
    rows: &[i64],
    batch: usize,
) -> Result<Option<Finding>, CheckError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let rows = &rows[..rows.len().min(batch)];
    let index = Tensor::from_slice(rows);
    let device = model.device();
    let x = data.inputs.f_index_select(0, &index)?.f_to_device(device)?;
    let y = data
        .targets
        .f_index_select(0, &index)?
        .f_to_device(device)?;
    let loss_kind = ctx.setup.resolved_loss(Some(data));
    let mut copy = model.trainable_copy()?;
    let params = copy.parameters()?;
    let trainable: Vec<&NamedTensor> = params.iter().filter(|(_, p)| p.requires_grad()).collect();
    if trainable.is_empty() {
        return Ok(None);
    }
    let prediction = copy.forward(&x, Mode::Train)?;
    if Count::of(&prediction.f_detach()?)?.total() > 0 {
        // Finite in eval mode, non-finite in train mode: BatchNorm's batch statistics or dropout;
        // the forward's own problem, not a backward one. Judged by the output stage only.
        return Ok(None);
    }
    let loss = train::loss(loss_kind, &prediction, &y)?;
    let loss_value = loss.f_double_value(&[])?;
    let mut v = NonFiniteGradients {
        loss: loss_kind.as_str().to_string(),
        loss_value,
        samples: rows.len(),
        non_finite: Vec::new(),
        trainable: trainable.len(),
    };
    let at = |v: &NonFiniteGradients| {
        v.non_finite
            .first()
            .map_or_else(Location::default, |n| Location::parameter(n))
    };
    if !loss_value.is_finite() {
        return Ok(Some(Finding::new(&v, at(&v))));
    }
    if !loss.requires_grad() {
        return Ok(None);
    }
    loss.f_backward()?;
    for (name, p) in &trainable {
        let g = p.grad();
        if g.defined() && Count::of(&g)?.total() > 0 {
            v.non_finite.push(name.clone());
        }
    }
    Ok((!v.non_finite.is_empty()).then(|| Finding::new(&v, at(&v))))
}

/// One finding per loss column with NaN / Inf rows.
fn judge_log(log: &LossLog, findings: &mut Vec<Finding>) {
    let columns = log.total.iter().chain(log.terms.iter());
    for column in columns {
        let Some(rows) = log.non_finite.get(column) else {
            continue;
        };
        let (Some(&first), Some(values)) = (rows.first(), log.columns.get(column)) else {
            continue;
        };
        let last_finite = values[..first]
            .iter()
            .rev()
            .find(|v| v.is_finite())
            .copied();
        let step = log.steps.get(first).copied().unwrap_or(first as f64);
        let last_step = rows
            .last()
            .and_then(|&r| log.steps.get(r).copied())
            .unwrap_or(step);
        let v = NonFiniteLog {
            column: column.clone(),
            first_step: step,
            value: values[first],
            rows: rows.len(),
            of: log.steps.len(),
            last_finite,
        };
        findings.push(Finding::new(&v, Location::log(column, (step, last_step))));
    }
}

impl Check for Nonfinite {
    type Options = NonfiniteOptions;

    const INFO: &'static CheckInfo = &INFO;

    fn run(&self, ctx: &Context, options: &NonfiniteOptions) -> CheckOutput {
        let (model, data, log) = (ctx.model, ctx.data, ctx.log);
        if model.is_none() && data.is_none() && log.is_none() {
            return Err(CheckError::missing(Input::Model));
        }
        let mut findings = Vec::new();
        let mut rows = None;
        if let Some(data) = data {
            rows = Some(judge_data(data, &mut findings)?);
        }
        if let Some(model) = model {
            let params = non_finite_tensors(&model.parameters()?)?;
            let buffers = non_finite_tensors(&model.buffers()?)?;
            let state_ok = params.is_empty() && buffers.is_empty();
            if let Some((name, _, _)) = params.first() {
                let at = Location::parameter(name);
                findings.push(Finding::new(
                    &NonFiniteParameters { parameters: params },
                    at,
                ));
            }
            if let Some((name, _, _)) = buffers.first() {
                let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
                let at = Location {
                    buffer: Some(name.clone()),
                    ..Location::module(module)
                };
                findings.push(Finding::new(&NonFiniteBuffers { buffers }, at));
            }
            if let (true, Some(data), Some((finite_inputs, finite_both))) = (state_ok, data, &rows)
            {
                match judge_output(ctx, model, data, finite_inputs)? {
                    Some(f) => findings.push(f),
                    None => {
                        let gradients =
                            judge_gradients(ctx, model, data, finite_both, options.batch);
                        // A loss that does not fit the output (gradient-flow and overfit-batch
                        // report that) leaves the gradients unjudged, not the whole check failed.
                        if let Ok(Some(f)) = gradients {
                            findings.push(f);
                        }
                    }
                }
            }
        }
        if let Some(log) = log {
            judge_log(log, &mut findings);
        }
        Ok(CheckResult::with_findings(findings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tell_nan_from_inf_and_integers_are_finite() {
        let t = Tensor::from_slice(&[1.0f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0]);
        let c = Count::of(&t).unwrap();
        assert_eq!((c.nan, c.inf), (1, 2));
        assert_eq!(c.words(), "1 NaN, 2 Inf");
        assert_eq!(
            Count::of(&Tensor::from_slice(&[1i64, 2])).unwrap().total(),
            0
        );
        let x = Tensor::from_slice(&[1.0f32, 2.0, f32::NAN, 4.0, 5.0, 6.0]).reshape([3, 2]);
        assert_eq!(finite_samples(&x).unwrap(), vec![true, false, true]);
    }

    #[test]
    fn a_log_reports_each_loss_column_from_its_first_non_finite_row() {
        let mut log = LossLog {
            steps: vec![0.0, 10.0, 20.0, 30.0],
            total: Some("loss".into()),
            ..LossLog::default()
        };
        log.columns
            .insert("loss".into(), vec![2.0, 1.5, f64::INFINITY, f64::NAN]);
        log.columns.insert("lr".into(), vec![f64::NAN; 4]);
        log.non_finite.insert("loss".into(), vec![2, 3]);
        log.non_finite.insert("lr".into(), vec![0, 1, 2, 3]);
        let mut findings = Vec::new();
        judge_log(&log, &mut findings);
        assert_eq!(findings.len(), 1, "only loss columns are judged");
        assert_eq!(
            findings[0].message,
            "the logged `loss` is inf from step 20 (first of 2 non-finite rows of 4; the last finite value was 1.5)"
        );
        assert_eq!(findings[0].location.log_steps, Some((20.0, 30.0)));
    }
}
