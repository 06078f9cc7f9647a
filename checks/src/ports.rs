//! What the checks read: the model (a trait, so any backend can serve it), the data sample, the loss
//! log and the training setup. The outer crate fills these from files; Rust users can build them from
//! tch tensors directly.
use std::cell::OnceCell;
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::CheckError;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Auto,
    ImageToImage,
    Classification,
    Regression,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Mse,
    L1,
    SmoothL1,
    Bce,
    BceWithLogits,
    CrossEntropy,
    Nll,
}

impl LossKind {
    pub const NAMES: [&'static str; 7] = [
        "mse",
        "l1",
        "smooth_l1",
        "bce",
        "bce_with_logits",
        "cross_entropy",
        "nll",
    ];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mse" => LossKind::Mse,
            "l1" => LossKind::L1,
            "smooth_l1" => LossKind::SmoothL1,
            "bce" => LossKind::Bce,
            "bce_with_logits" => LossKind::BceWithLogits,
            "cross_entropy" => LossKind::CrossEntropy,
            "nll" => LossKind::Nll,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    pub fn is_classification(self) -> bool {
        matches!(self, LossKind::CrossEntropy | LossKind::Nll)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
}

impl OptimizerKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sgd" => OptimizerKind::Sgd,
            "adam" => OptimizerKind::Adam,
            "adamw" => OptimizerKind::AdamW,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        }
    }
}

/// The training setup as the user described it.
#[derive(Clone, Debug)]
pub struct Setup {
    pub task: Task,
    /// None: not configured (checks that need it infer or skip).
    pub loss: Option<LossKind>,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub shuffle: bool,
    pub temporal: bool,
    pub seed: u64,
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
        }
    }
}

impl Setup {
    /// The task, with `auto` resolved from the data: integer targets are classes; equal input and
    /// target shapes with 3+ dims are image-to-image; the rest regression.
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
            Some(d) if d.inputs.size() == d.targets.size() && d.inputs.dim() >= 3 => {
                Task::ImageToImage
            }
            _ => Task::Regression,
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
    pub prediction: OnceCell<Result<Tensor, String>>,
    /// Called by checks that train, with (step, total steps, current loss), for progress display.
    pub progress: &'a dyn Fn(usize, usize, f64),
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
        }
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
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| CheckError::Model(e.clone()))
    }
}
