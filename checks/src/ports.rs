//! What the checks read: the model (a trait, so any backend can serve it), the data sample, the loss
//! log and the training setup. The outer crate fills these from files; Rust users can build them from
//! tch tensors directly.
use std::cell::OnceCell;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{CheckError, Input};

/// A named tensor: a parameter or buffer path such as `encoder.0.weight`.
pub type NamedTensor = (String, Tensor);

#[derive(Clone, Debug, PartialEq)]
pub struct ModuleInfo {
    /// Dotted path from the root; empty for the root itself.
    pub path: String,
    /// The last component of the module's type name, e.g. `BatchNorm2d`.
    pub kind: String,
    /// The training flag as saved in the file.
    pub training: bool,
}

impl ModuleInfo {
    /// The normalisation its kind performs, if any: the one classifier of module kinds.
    pub fn norm(&self) -> Option<crate::norm::Norm> {
        crate::norm::Norm::of(&self.kind)
    }
}

/// The final op of the forward graph: what bounds the output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputActivation {
    /// The op without namespace: `sigmoid`, `tanh`, `softmax`, `linear`, `conv2d`, …
    pub op: String,
    /// Constant bounds of clamp / hardtanh, when the graph holds them.
    pub clamp: Option<(f64, f64)>,
}

/// How to run a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
    /// Keep every module's training flag as it is (as saved, on a fresh copy).
    AsSaved,
}

pub trait Model {
    fn device(&self) -> Device;
    /// Every parameter (read-only views; do not modify them).
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError>;
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError>;
    /// Every module with its kind and its training flag as saved; the root first.
    fn modules(&self) -> &[ModuleInfo];
    fn output_activation(&self) -> Result<OutputActivation, CheckError>;
    /// An eval-mode forward without gradients that changes no state.
    fn predict(&self, input: &Tensor) -> Result<Tensor, CheckError>;
    /// An independent copy for checks that train or run train-mode passes.
    fn trainable_copy(&self) -> Result<Box<dyn TrainableModel>, CheckError>;

    // ---- module graph (graph view, unused-parameters, shared-batchnorm)
    /// The module-level dataflow graph of forward, with each call's output shape on `sample` when one
    /// is given (an eval-mode forward that changes no state). Backends without a graph skip.
    fn module_graph(
        &self,
        _sample: Option<&Tensor>,
    ) -> Result<crate::graph::ModuleGraph, CheckError> {
        Err(CheckError::Skip(
            "this model backend has no forward graph".into(),
        ))
    }

    // ---- nonfinite (issue 10)
    /// An eval-mode forward like [`Model::predict`] that also names the first op, in execution order,
    /// whose output holds NaN or Inf (`None` when every op's output is finite, or when the backend
    /// cannot look inside forward).
    fn predict_tracing_non_finite(
        &self,
        input: &Tensor,
    ) -> Result<(Tensor, Option<NonFiniteOp>), CheckError> {
        Ok((self.predict(input)?, None))
    }

    // ---- input-normalization (issue 10)
    /// A train-mode forward without gradients on an independent copy (BatchNorm normalises with the
    /// batch's statistics; nothing of it reaches this model) that measures the output of every linear
    /// / conv / matmul op, in execution order. Empty when the backend cannot look inside forward.
    fn layer_scales(&self, input: &Tensor) -> Result<Vec<LayerScale>, CheckError> {
        let _ = input;
        Ok(Vec::new())
    }
}

/// The output of one layer op of a forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerScale {
    /// The root-mean-square of the op's output.
    pub rms: f64,
    /// The op's qualified name, e.g. `aten::linear`.
    pub op: String,
    /// The dotted path of the submodule whose code runs the op; empty for the root module.
    pub module: String,
}

/// The first op of a forward pass whose output holds NaN or Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFiniteOp {
    /// The op's qualified name, e.g. `aten::log`.
    pub op: String,
    /// The dotted path of the submodule whose code runs the op; empty for the root module.
    pub module: String,
    /// The op's line of source code, when the model file holds it.
    pub source: String,
}

pub trait TrainableModel {
    /// A forward with gradients enabled.
    fn forward(&mut self, input: &Tensor, mode: Mode) -> Result<Tensor, CheckError>;
    /// The copy's parameters, sharing storage with it (optimizers update them in place).
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError>;
    /// The copy's buffers, sharing storage with it.
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError>;
}

/// The data sample, samples along dim 0 in the order a non-shuffling loader would feed them.
pub struct Dataset {
    pub path: String,
    pub input_key: String,
    pub target_key: String,
    pub inputs: Tensor,
    pub targets: Tensor,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.inputs.size().first().copied().unwrap_or(0) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn targets_are_classes(&self) -> bool {
        matches!(
            self.targets.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 | Kind::Bool
        )
    }

    /// Whether the targets are class probabilities (issue 22, 4): float `[N, K, …]` with K ≥ 2 classes
    /// along dim 1, every value in [0, 1] and each sample's K values (each position's, for dense
    /// targets) summing to 1 ± [`crate::targets::PROBABILITY_SUM_TOLERANCE`]: one-hot, label-smoothed,
    /// mixup / cutmix or distillation targets, which cross_entropy reads as probabilities.
    pub fn targets_are_probabilities(&self) -> bool {
        let t = &self.targets;
        if !t.is_floating_point() || t.dim() < 2 || t.size()[1] < 2 || t.numel() == 0 {
            return false;
        }
        // The first sample decides most float targets (regression values, images) cheaply.
        let is_probabilities =
            |t: &Tensor| matches!(crate::targets::probability_problem(t), Ok(None));
        t.f_narrow(0, 0, 1)
            .is_ok_and(|first| is_probabilities(&first))
            && is_probabilities(t)
    }

    /// Why the classification loss `loss` cannot read these targets, in one line, or None: float targets
    /// with a class dim (as many dims as `prediction`, the model's output on the inputs) that are not
    /// class probabilities, or not shaped like the output. The checks that compute the loss skip with
    /// this reason; a caller can refuse the run with it before any check runs.
    pub fn class_probability_problem(&self, loss: LossKind, prediction: &Tensor) -> Option<String> {
        if !loss.is_classification()
            || !crate::targets::holds_probabilities(prediction, &self.targets)
        {
            return None;
        }
        match crate::targets::check_probability_targets(prediction, &self.targets) {
            Ok(()) => None,
            Err(CheckError::Skip(reason)) => Some(reason),
            Err(e) => Some(e.to_string()),
        }
    }
}

/// A loss log: one x axis (the `step` column or the row number) and named loss columns.
#[derive(Clone, Debug, Default)]
pub struct LossLog {
    pub path: String,
    pub steps: Vec<f64>,
    /// Column name -> values (NaN where a row lacked it).
    pub columns: BTreeMap<String, Vec<f64>>,
    /// The column holding the total loss, if any.
    pub total: Option<String>,
    /// The columns holding the loss terms (two or more for a multi-term loss).
    pub terms: Vec<String>,
    /// Column name -> the rows (indices into `steps`) whose value the file wrote as NaN or ±Inf; a
    /// missing cell is NaN in `columns` but not listed here. Columns without such rows are absent.
    pub non_finite: BTreeMap<String, Vec<usize>>,
}

/// What the model is trained to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    Auto,
    ImageToImage,
    Classification,
    Regression,
}

/// The training loss, as PyTorch names its functional form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    Mse,
    L1,
    SmoothL1,
    Bce,
    BceWithLogits,
    CrossEntropy,
    Nll,
}

/// A name that is none of an enum's variants: the name, and the accepted ones.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not one of {}", choices.join(", "))]
pub struct NotAChoice {
    pub value: String,
    pub choices: Vec<String>,
}

/// Parse a unit variant from its serde name; the error lists the accepted names.
pub fn parse_choice<T: serde::de::DeserializeOwned + JsonSchema>(s: &str) -> Result<T, NotAChoice> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| NotAChoice {
        value: s.to_string(),
        choices: choices::<T>(),
    })
}

/// The accepted names of an enum, from its schema.
pub fn choices<T: JsonSchema>() -> Vec<String> {
    let schema = crate::options::schema_of::<T>();
    schema["enum"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl LossKind {
    /// The name users write (the serde name; a test keeps the two equal).
    pub fn as_str(self) -> &'static str {
        match self {
            LossKind::Mse => "mse",
            LossKind::L1 => "l1",
            LossKind::SmoothL1 => "smooth_l1",
            LossKind::Bce => "bce",
            LossKind::BceWithLogits => "bce_with_logits",
            LossKind::CrossEntropy => "cross_entropy",
            LossKind::Nll => "nll",
        }
    }
    pub fn is_classification(self) -> bool {
        matches!(self, LossKind::CrossEntropy | LossKind::Nll)
    }
}

/// The optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
}

impl OptimizerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        }
    }
}

/// How the model is trained (`[setup]` in trainlint.toml).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Setup {
    /// auto: integer targets or class-probability rows = classification; input shape = target shape = image-to-image; else regression
    pub task: Task,
    /// The training loss; unset: cross_entropy for classification, mse otherwise
    pub loss: Option<LossKind>,
    /// The optimizer
    pub optimizer: OptimizerKind,
    /// Learning rate
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    /// SGD momentum
    #[schemars(range(min = 0, max = 1))]
    pub momentum: f64,
    /// Weight decay
    #[schemars(range(min = 0))]
    pub weight_decay: f64,
    /// Batch size
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Whether the data loader shuffles
    pub shuffle: bool,
    /// Whether the task needs the samples in order (optical flow, odometry)
    pub temporal: bool,
    /// Seed for everything random (set from `[run] seed`)
    #[serde(skip)]
    pub seed: u64,
    /// Seconds each check that trains may spend before it reports its verdict undecided (set from
    /// `[run] check_budget`; 0: no limit)
    #[serde(skip)]
    pub check_budget: f64,
    /// The training keys (`optimizer`, `lr`, `batch_size`, `momentum`) the config left unset, whose
    /// defaults the checks that train assume: messages that rest on them say so.
    #[serde(skip)]
    pub assumed: Vec<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            task: Task::Auto,
            loss: None,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 32,
            shuffle: true,
            temporal: false,
            seed: 0,
            check_budget: 0.0,
            assumed: Vec::new(),
        }
    }
}

impl Setup {
    /// The task, with `auto` resolved from the data: integer targets are classes, and so are float
    /// rows of class probabilities when no loss is named ([`Dataset::targets_are_probabilities`]);
    /// equal input and target shapes with 3+ dims are image-to-image; the rest regression.
    pub fn resolved_task(&self, data: Option<&Dataset>) -> Task {
        if self.task != Task::Auto {
            return self.task;
        }
        if let Some(loss) = self.loss {
            if loss.is_classification() {
                return Task::Classification;
            }
        }
        match data {
            Some(d) if d.targets_are_classes() => Task::Classification,
            // Rows of class probabilities with no loss named: cross_entropy's soft targets. A named
            // regression or binary loss keeps them float targets (a one-hot matrix for bce).
            Some(d) if self.loss.is_none() && d.targets_are_probabilities() => Task::Classification,
            Some(d) if d.inputs.size() == d.targets.size() && d.inputs.dim() >= 3 => {
                Task::ImageToImage
            }
            _ => Task::Regression,
        }
    }

    /// " (assumed: setup.optimizer and setup.lr are not set)" for those of `keys` the config left
    /// unset; empty when it set them all.
    pub fn assumed_note(&self, keys: &[&str]) -> String {
        let unset: Vec<String> = keys
            .iter()
            .filter(|k| self.assumed.contains(k))
            .map(|k| format!("setup.{k}"))
            .collect();
        match unset.len() {
            0 => String::new(),
            1 => format!(" (assumed: {} is not set)", unset[0]),
            n => format!(
                " (assumed: {} and {} are not set)",
                unset[..n - 1].join(", "),
                unset[n - 1]
            ),
        }
    }

    /// The loss, with a default by task when none is configured.
    pub fn resolved_loss(&self, data: Option<&Dataset>) -> LossKind {
        self.loss.unwrap_or(match self.resolved_task(data) {
            Task::Classification => LossKind::CrossEntropy,
            _ => LossKind::Mse,
        })
    }
}

/// Everything a check may read. Ports that are absent make the checks that need them skip.
pub struct Context<'a> {
    pub model: Option<&'a dyn Model>,
    pub data: Option<&'a Dataset>,
    pub log: Option<&'a LossLog>,
    pub setup: &'a Setup,
    /// The eval-mode prediction on the whole sample, computed once and shared by read-only checks.
    pub prediction: OnceCell<Result<Tensor, PredictionError>>,
    /// Called by checks that train, with (step, total steps, current loss), for progress display.
    pub progress: &'a dyn Fn(usize, usize, f64),
    /// Checks that cannot use this data sample, by id, with the reason (a sample too small for
    /// BatchNorm's batch statistics, a single class that any constant fits). The caller finds these
    /// once, before the checks run; [`crate::Rule::run_with`] reports each such check as skipped.
    pub sample_skips: BTreeMap<&'static str, String>,
}

impl<'a> Context<'a> {
    pub fn new(setup: &'a Setup) -> Self {
        Context {
            model: None,
            data: None,
            log: None,
            setup,
            prediction: OnceCell::new(),
            progress: &|_, _, _| {},
            sample_skips: BTreeMap::new(),
        }
    }

    /// The model, or a skip saying how to give one.
    pub fn model(&self) -> Result<&'a dyn Model, CheckError> {
        self.model.ok_or(CheckError::missing(Input::Model))
    }

    /// The data sample, or a skip saying how to give one.
    pub fn data(&self) -> Result<&'a Dataset, CheckError> {
        self.data.ok_or(CheckError::missing(Input::Data))
    }

    /// The loss log, or a skip saying how to give one.
    pub fn log(&self) -> Result<&'a LossLog, CheckError> {
        self.log.ok_or(CheckError::missing(Input::Log))
    }

    /// The shared eval-mode prediction on the data sample.
    pub fn prediction(&self) -> Result<&Tensor, CheckError> {
        let (Some(model), Some(data)) = (self.model, self.data) else {
            return Err(CheckError::Other("no model or no data".into()));
        };
        self.prediction
            .get_or_init(|| {
                model
                    .predict(&data.inputs.to_device(model.device()))
                    .map_err(|e| match e {
                        CheckError::Skip(reason) => PredictionError::Skip(reason),
                        other => PredictionError::Failed(other.to_string()),
                    })
            })
            .as_ref()
            .map_err(|e| match e {
                PredictionError::Skip(reason) => CheckError::Skip(reason.clone()),
                PredictionError::Failed(msg) => CheckError::Model(msg.clone()),
            })
    }
}

/// Why the shared prediction is missing: the model cannot give one for a reason that makes the
/// checks that need it skip (a `.pt2` program specialised to train mode has no eval-mode forward),
/// or the forward failed.
#[derive(Clone, Debug, PartialEq)]
pub enum PredictionError {
    Skip(String),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_messages_are_the_names_users_write() {
        for name in choices::<LossKind>() {
            assert_eq!(parse_choice::<LossKind>(&name).unwrap().as_str(), name);
        }
        for name in choices::<OptimizerKind>() {
            assert_eq!(parse_choice::<OptimizerKind>(&name).unwrap().as_str(), name);
        }
        assert_eq!(
            choices::<Task>(),
            ["auto", "image-to-image", "classification", "regression"]
        );
        let e = parse_choice::<LossKind>("mae").unwrap_err();
        assert_eq!(e.value, "mae");
        assert!(
            e.to_string()
                .starts_with("\"mae\" is not one of mse, l1, smooth_l1"),
            "{e}"
        );
    }

    fn dataset(targets: Tensor) -> Dataset {
        let n = targets.size()[0];
        Dataset {
            path: "mem".into(),
            input_key: "inputs".into(),
            target_key: "targets".into(),
            inputs: Tensor::zeros([n, 5], (Kind::Float, Device::Cpu)),
            targets,
        }
    }

    #[test]
    fn auto_reads_rows_of_class_probabilities_as_classification_with_cross_entropy() {
        let one_hot = Tensor::from_slice(&[0i64, 2, 1, 1])
            .one_hot(3)
            .to_kind(Kind::Float);
        let smoothed = &one_hot * 0.9 + 0.1 / 3.0;
        let auto = Setup::default();
        for t in [one_hot.shallow_clone(), smoothed] {
            let d = dataset(t);
            assert!(d.targets_are_probabilities());
            assert_eq!(auto.resolved_task(Some(&d)), Task::Classification);
            assert_eq!(auto.resolved_loss(Some(&d)), LossKind::CrossEntropy);
        }
        // A named binary or regression loss keeps them float targets.
        let bce = Setup {
            loss: Some(LossKind::BceWithLogits),
            ..Setup::default()
        };
        assert_eq!(
            bce.resolved_task(Some(&dataset(one_hot.shallow_clone()))),
            Task::Regression
        );
        // Rows that do not sum to 1, values outside [0, 1], one column, no class dim: regression.
        for t in [
            Tensor::from_slice(&[0.2f32, 0.3, 0.9, 0.1]).reshape([2, 2]),
            Tensor::from_slice(&[1.5f32, -0.5, 0.5, 0.5]).reshape([2, 2]),
            Tensor::ones([4, 1], (Kind::Float, Device::Cpu)),
            Tensor::from_slice(&[0.5f32, 1.0]),
        ] {
            let d = dataset(t);
            assert!(!d.targets_are_probabilities());
            assert_eq!(auto.resolved_task(Some(&d)), Task::Regression);
        }
    }

    #[test]
    fn a_classification_loss_on_float_rows_that_are_not_probabilities_is_named() {
        let d = dataset(Tensor::from_slice(&[0.2f32, 0.3, 0.9, 0.1]).reshape([2, 2]));
        let logits = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        let problem = d
            .class_probability_problem(LossKind::CrossEntropy, &logits)
            .unwrap();
        assert!(
            problem.contains("the 2 probabilities of sample 0 sum to 0.5"),
            "{problem}"
        );
        assert_eq!(d.class_probability_problem(LossKind::Mse, &logits), None);
        let ok = dataset(Tensor::from_slice(&[0.2f32, 0.8, 0.9, 0.1]).reshape([2, 2]));
        assert_eq!(
            ok.class_probability_problem(LossKind::CrossEntropy, &logits),
            None
        );
    }
}
