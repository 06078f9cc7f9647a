//! What every check file uses.
pub use schemars::JsonSchema;
pub use serde::{Deserialize, Serialize};

pub use crate::finding::{
    as_map, num, skip_serializing_none, Location, Severity, Violation, ViolationMetadata,
};
pub use crate::ports::{Dataset, LossKind, LossLog, Mode, Model, ModuleInfo, NamedTensor, Task};
pub use crate::{
    Check, CheckError, CheckInfo, CheckOutput, CheckResult, Context, Curve, Docs, Finding, Group,
    Input, Level, Need, NoOptions,
};
