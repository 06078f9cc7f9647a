//! `torch.export` programs (`.pt2`, written by `torch.export.save`) read in Rust, without Python,
//! pickle or libtorch's loader: the zip's members, the serialized `ExportedProgram` (JSON, schema
//! `torch/_export/serde/schema.py`), its graph signature, the per-node `nn_module_stack`, and the
//! weights as `tch::Tensor`s, each checked against its storage's bytes before a tensor is made.
//!
//! This is stage 1 of issue 25 (see `spikes/pt2/FINDINGS.md`): the reader. Nothing here runs the
//! graph; [`super::pt2_run`] does.
//!
//! Everything a file declares is untrusted: member sizes go through [`super::archive::inspect`] (the
//! zip-bomb and duplicate-name checks used for TorchScript archives), JSON members are read up to
//! [`super::MAX_SCANNED_RECORD_BYTES`], serde_json's recursion limit bounds nested subgraphs, and every
//! tensor's `storage_offset + Σ (size − 1) · stride` is checked against its storage file's length.
// Stage 1: the interpreter (stage 2) and the Model port read most of what is kept here.
#![allow(dead_code)]
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::archive::{self, ArchiveRecord};

/// The `ExportedProgram` schema major version this reader understands. PyTorch 2.13 writes 8.20
/// (`SCHEMA_VERSION` in `torch/_export/serde/schema.py`); PyTorch's own loader refuses another major
/// and ignores the minor.
pub const SUPPORTED_MAJOR: i64 = 8;
/// The newest minor version seen (PyTorch 2.13). A newer minor is read while every field parses.
pub const NEWEST_KNOWN_MINOR: i64 = 20;

/// Why a `.pt2` could not be read. Each renders as one line without the file's name (the caller
/// adds it).
#[derive(Debug, thiserror::Error)]
pub enum Pt2Error {
    #[error("cannot read the file: {0}")]
    Io(String),
    #[error("it is not a readable zip archive ({0})")]
    NotZip(String),
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    #[error("the archive is damaged: {0}")]
    Directory(#[from] DirectoryError),
    #[error("its members must sit under one folder, found {0}")]
    Layout(String),
    #[error("member `{0}` is missing")]
    MissingMember(String),
    #[error("member `{member}` is {size} bytes, more than trainlint reads ({limit} bytes)")]
    MemberTooLarge {
        member: String,
        size: u64,
        limit: u64,
    },
    #[error("member `{member}` holds {found:?}, expected {expected:?}")]
    Marker {
        member: String,
        found: String,
        expected: &'static str,
    },
    #[error("expected the program models/model.json, optionally with models/eval.json and models/as_saved.json; found {0}")]
    Programs(String),
    #[error("program `{program}` does not match the main program: {source}")]
    Mismatch {
        program: String,
        source: Box<WeightMismatch>,
    },
    #[error("extra/trainlint.json: {0}")]
    Metadata(String),
    #[error("schema version {major}.{minor} is not supported: trainlint reads schema {SUPPORTED_MAJOR}.x (PyTorch 2.13 writes {SUPPORTED_MAJOR}.{NEWEST_KNOWN_MINOR})")]
    SchemaVersion { major: i64, minor: i64 },
    #[error("member `{member}` cannot be parsed: {reason}")]
    Json { member: String, reason: String },
    #[error("the program is not in the training IR (verifiers {0}): export with torch.export.export and do not call run_decompositions()")]
    Verifiers(String),
    #[error("the graph signature is invalid: {0}")]
    Signature(String),
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("node `{node}` reads `{value}`, which no earlier node or input defines")]
    UndefinedValue { node: String, value: String },
    #[error("node `{node}` defines `{value}`, which an earlier node or input already defines")]
    Redefined { node: String, value: String },
    #[error("node `{node}` has a malformed nn_module_stack entry {entry:?}")]
    ModuleStack { node: String, entry: String },
    #[error("tensor {fqn} is stored as a pickle (a tensor subclass or custom object), which trainlint never unpickles")]
    Pickled { fqn: String },
    #[error("tensor {fqn} has {what}")]
    BadTensor { fqn: String, what: String },
    #[error("tensor {fqn} reaches byte {needed} of `{storage}`, which holds {has} bytes")]
    OutOfBounds {
        fqn: String,
        storage: String,
        needed: u128,
        has: u64,
    },
    #[error("tensors {first} and {second} share storage `{storage}` with different views, which trainlint cannot train as parameters")]
    OverlappingViews {
        first: String,
        second: String,
        storage: String,
    },
}

/// Why a zip directory is refused before the zip reader allocates for it ([`check_directory`]).
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("its zip directory lists {members} members in {size} bytes; a program needs at most {MAX_MEMBERS} members in {MAX_DIRECTORY_BYTES} bytes")]
    TooLarge { members: u64, size: u64 },
}

/// How an eval or as-saved program's weights differ from the main program's ([`same_weights`]).
#[derive(Debug, thiserror::Error)]
pub enum WeightMismatch {
    #[error("it reads {0}, which the main program does not hold")]
    Missing(String),
    /// Role, dtype and shape in the main program (`there`) and in this one (`here`).
    #[error("{fqn} is {there} there and {here} here")]
    Differs {
        fqn: String,
        there: String,
        here: String,
    },
}

type Result<T, E = Pt2Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// The serialized schema (the subset of `schema.py` that programs use). Unions are externally tagged
// enums; there is no `#[serde(other)]`: an unknown variant is an error that names it.

/// `{major, minor}` of the serialized `ExportedProgram`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SchemaVersion {
    pub major: i64,
    pub minor: i64,
}

/// A float as the schema writes it: a JSON number, or `"Infinity"`, `"-Infinity"`, `"NaN"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Float(pub f64);

impl<'de> Deserialize<'de> for Float {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ok(Float(v)),
            Raw::Text(s) => match s.as_str() {
                "Infinity" => Ok(Float(f64::INFINITY)),
                "-Infinity" => Ok(Float(f64::NEG_INFINITY)),
                "NaN" => Ok(Float(f64::NAN)),
                other => Err(serde::de::Error::custom(format!(
                    "float {other:?} is not a number, \"Infinity\", \"-Infinity\" or \"NaN\""
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TensorArgument {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymIntArgument {
    AsName(String),
    AsInt(i64),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionalTensorArgument {
    AsTensor(TensorArgument),
    AsNone(bool),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceArgument {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub index: Option<i64>,
}

/// A higher-order op's subgraph (`torch.cond` branches, `no_grad` and autocast blocks).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GraphArgument {
    pub name: String,
    pub graph: Box<Graph>,
}

/// A node's input or output value (`Argument` in the schema: all 31 variants). The variants that
/// carry symbolic or opaque objects keep their JSON as is; a later stage refuses what it cannot run.
// The variant names are the schema's (`as_tensor`, ...), so that serde reads them as written.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Argument {
    AsNone(serde_json::Value),
    AsTensor(TensorArgument),
    AsTensors(Vec<TensorArgument>),
    AsInt(i64),
    AsInts(Vec<i64>),
    AsFloat(Float),
    AsFloats(Vec<Float>),
    AsString(String),
    AsStrings(Vec<String>),
    AsSymInt(SymIntArgument),
    AsSymInts(Vec<SymIntArgument>),
    /// The schema's `ScalarType` code (not c10's numbering: see [`kind_of`]).
    AsScalarType(i64),
    AsMemoryFormat(i64),
    AsLayout(i64),
    AsDevice(DeviceArgument),
    AsBool(bool),
    AsBools(Vec<bool>),
    AsSymBool(serde_json::Value),
    AsSymBools(serde_json::Value),
    AsGraph(GraphArgument),
    AsOptionalTensors(Vec<OptionalTensorArgument>),
    AsCustomObj(serde_json::Value),
    AsOperator(String),
    AsSymFloat(serde_json::Value),
    AsSymFloats(serde_json::Value),
    AsOptionalTensor(OptionalTensorArgument),
    AsComplex(serde_json::Value),
    AsNestedTensors(Vec<Vec<TensorArgument>>),
    AsIntLists(Vec<Vec<i64>>),
    AsStringToArgument(BTreeMap<String, Argument>),
    AsFloatLists(Vec<Vec<Float>>),
}

impl Argument {
    /// The names of the tensor values this argument reads.
    pub(crate) fn tensor_names(&self) -> Vec<&str> {
        match self {
            Argument::AsTensor(t) => vec![&t.name],
            Argument::AsTensors(ts) => ts.iter().map(|t| t.name.as_str()).collect(),
            Argument::AsOptionalTensor(OptionalTensorArgument::AsTensor(t)) => vec![&t.name],
            Argument::AsOptionalTensors(ts) => ts
                .iter()
                .filter_map(|t| match t {
                    OptionalTensorArgument::AsTensor(t) => Some(t.name.as_str()),
                    OptionalTensorArgument::AsNone(_) => None,
                })
                .collect(),
            Argument::AsNestedTensors(tss) => {
                tss.iter().flatten().map(|t| t.name.as_str()).collect()
            }
            Argument::AsStringToArgument(map) => {
                map.values().flat_map(Argument::tensor_names).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The names this argument defines when it is a node's output (tensors and SymInts).
    pub(crate) fn defined_names(&self) -> Vec<&str> {
        match self {
            Argument::AsSymInt(SymIntArgument::AsName(n)) => vec![n],
            Argument::AsSymInts(ns) => ns
                .iter()
                .filter_map(|n| match n {
                    SymIntArgument::AsName(n) => Some(n.as_str()),
                    SymIntArgument::AsInt(_) => None,
                })
                .collect(),
            other => other.tensor_names(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NamedArgument {
    /// The op schema's argument name ("" for higher-order ops).
    pub name: String,
    pub arg: Argument,
    /// 1 positional, 2 keyword.
    #[serde(default)]
    pub kind: Option<i64>,
}

/// One node as serialized. [`Node::target`] parses its `target` string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Node {
    pub target: String,
    pub inputs: Vec<NamedArgument>,
    pub outputs: Vec<Argument>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymInt {
    AsExpr(SymExpr),
    AsInt(i64),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SymExpr {
    pub expr_str: String,
    #[serde(default)]
    pub hint: Option<serde_json::Value>,
}

/// A tensor's metadata: dtype (schema code), sizes, strides, offset, device, layout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TensorMeta {
    pub dtype: i64,
    pub sizes: Vec<SymInt>,
    pub requires_grad: bool,
    pub device: DeviceArgument,
    pub strides: Vec<SymInt>,
    pub storage_offset: SymInt,
    pub layout: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Graph {
    pub inputs: Vec<Argument>,
    pub outputs: Vec<Argument>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub tensor_values: BTreeMap<String, TensorMeta>,
    #[serde(default)]
    pub sym_int_values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub sym_bool_values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub sym_float_values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub custom_obj_values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub is_single_tensor_return: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSpec {
    UserInput {
        arg: Argument,
    },
    Parameter {
        arg: TensorArgument,
        parameter_name: String,
    },
    Buffer {
        arg: TensorArgument,
        buffer_name: String,
        persistent: bool,
    },
    TensorConstant {
        arg: TensorArgument,
        tensor_constant_name: String,
    },
    CustomObj(serde_json::Value),
    Token(serde_json::Value),
    ConstantInput(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSpec {
    UserOutput {
        arg: Argument,
    },
    LossOutput {
        arg: TensorArgument,
    },
    BufferMutation {
        arg: TensorArgument,
        buffer_name: String,
    },
    GradientToParameter(serde_json::Value),
    GradientToUserInput(serde_json::Value),
    UserInputMutation(serde_json::Value),
    Token(serde_json::Value),
    ParameterMutation(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GraphSignature {
    pub input_specs: Vec<InputSpec>,
    pub output_specs: Vec<OutputSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct GraphModuleJson {
    graph: Graph,
    signature: GraphSignature,
    #[serde(default)]
    module_call_graph: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RangeConstraint {
    #[serde(default)]
    pub min_val: Option<i64>,
    #[serde(default)]
    pub max_val: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ExportedProgramJson {
    graph_module: GraphModuleJson,
    schema_version: SchemaVersion,
    #[serde(default)]
    range_constraints: BTreeMap<String, RangeConstraint>,
    #[serde(default)]
    verifiers: Vec<String>,
    #[serde(default)]
    torch_version: String,
}

#[derive(Debug, Deserialize)]
struct VersionOnly {
    schema_version: SchemaVersion,
}

#[derive(Debug, Deserialize)]
struct PayloadConfig {
    config: BTreeMap<String, PayloadMeta>,
}

#[derive(Debug, Deserialize)]
struct PayloadMeta {
    path_name: String,
    #[serde(default)]
    use_pickle: bool,
    #[serde(default)]
    tensor_meta: Option<TensorMeta>,
}

// ---------------------------------------------------------------------------------------------
// The typed program.

/// What a node calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `torch.ops.NS.NAME.OVERLOAD`, e.g. `aten`, `linear`, `default`.
    Op {
        namespace: String,
        name: String,
        overload: String,
    },
    /// `torch.ops.higher_order.NAME` (`cond`, `wrap_with_set_grad_enabled`, ...).
    HigherOrder(String),
    /// `_operator.NAME`: Python arithmetic on SymInts (`mul`, `add`, ...).
    SymOp(String),
}

impl Target {
    /// The target of a node as serialized, or None for one the interpreter does not run: the one
    /// parser of targets, for the load-time check of every node and for the interpreter.
    pub(crate) fn parse(s: &str) -> Option<Target> {
        if let Some(name) = s.strip_prefix("torch.ops.higher_order.") {
            return (!name.is_empty() && !name.contains('.'))
                .then(|| Target::HigherOrder(name.into()));
        }
        if let Some(name) = s.strip_prefix("_operator.") {
            return (!name.is_empty() && !name.contains('.')).then(|| Target::SymOp(name.into()));
        }
        let rest = s.strip_prefix("torch.ops.")?;
        let parts: Vec<&str> = rest.split('.').collect();
        match parts[..] {
            [ns, name, overload] if [ns, name, overload].iter().all(|p| !p.is_empty()) => {
                Some(Target::Op {
                    namespace: ns.into(),
                    name: name.into(),
                    overload: overload.into(),
                })
            }
            _ => None,
        }
    }

    /// `aten.linear` (no overload), `higher_order.cond`, `_operator.mul`: for messages.
    pub fn short(&self) -> String {
        match self {
            Target::Op {
                namespace, name, ..
            } => format!("{namespace}.{name}"),
            Target::HigherOrder(name) => format!("higher_order.{name}"),
            Target::SymOp(name) => format!("_operator.{name}"),
        }
    }
}

/// One frame of a node's `nn_module_stack`: the module's dotted path (as `named_modules()` gives it;
/// "" for the root) and its class (`torch.nn.modules.linear.Linear`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleFrame {
    pub path: String,
    pub class: String,
}

impl ModuleFrame {
    /// The class's last component (`Linear`), as TorchScript's module kinds read.
    pub fn kind(&self) -> &str {
        self.class.rsplit('.').next().unwrap_or(&self.class)
    }
}

/// A parameter, buffer or tensor constant of the program: which graph input it feeds, its metadata
/// and its values.
#[derive(Debug)]
pub struct Weight {
    pub fqn: String,
    pub role: WeightRole,
    /// The graph input it binds (`p_fc1_weight`).
    pub graph_input: String,
    pub dtype: Kind,
    pub sizes: Vec<i64>,
    pub strides: Vec<i64>,
    pub storage_offset: i64,
    pub requires_grad: bool,
    /// The storage file (`weight_0`), under `data/weights/` or `data/constants/`.
    pub storage: String,
    /// The values, contiguous, on the CPU, with `requires_grad` set as stored. Tied weights (the same
    /// storage and view) share one tensor.
    pub tensor: Tensor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRole {
    Parameter,
    Buffer { persistent: bool },
    Constant,
}

/// A `.pt2` program as read: nothing of it has run.
#[derive(Debug)]
pub struct Program {
    pub schema: SchemaVersion,
    pub torch_version: String,
    pub verifiers: Vec<String>,
    pub graph: Graph,
    /// [`Graph::nodes`] targets, parsed, in order (top-level graph).
    pub targets: Vec<Target>,
    pub signature: GraphSignature,
    /// Symbol → (min, max) of the dynamic dims (`s77` → (2, 1024)); None is unbounded.
    pub range_constraints: BTreeMap<String, RangeConstraint>,
    /// Parameters, buffers and constants in the signature's order.
    pub weights: Vec<Weight>,
    /// Groups of FQNs bound to one tensor (same storage file and view): a tied weight.
    pub tied: Vec<Vec<String>>,
    /// Every module of the nodes' `nn_module_stack`, the root first, in order of first appearance.
    pub modules: Vec<ModuleFrame>,
    /// The module paths `module_call_graph` lists (the root is "").
    pub called_modules: Vec<String>,
}

impl Program {
    /// Nodes in the graph and in every subgraph.
    fn node_count(&self) -> usize {
        count_nodes(&self.graph)
    }

    pub fn parameters(&self) -> impl Iterator<Item = &Weight> {
        self.weights
            .iter()
            .filter(|w| w.role == WeightRole::Parameter)
    }

    pub fn buffers(&self) -> impl Iterator<Item = &Weight> {
        self.weights
            .iter()
            .filter(|w| matches!(w.role, WeightRole::Buffer { .. }))
    }

    /// The nn_module_stack of a top-level node, root first.
    fn module_stack(&self, node: usize) -> Vec<ModuleFrame> {
        self.graph
            .nodes
            .get(node)
            .and_then(|n| n.metadata.get("nn_module_stack"))
            .map(|s| parse_module_stack("", s).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The last op node of the top-level graph (what produces the output, usually).
    pub fn final_op(&self) -> Option<&Target> {
        self.targets.last()
    }

    /// One phrase: `schema 8.20, 89 nodes, 62 parameters in 41 modules, final op aten.linear`.
    pub fn summary(&self) -> String {
        let params: Vec<&Weight> = self.parameters().collect();
        let owners: HashSet<&str> = params
            .iter()
            .map(|w| w.fqn.rsplit_once('.').map_or("", |(m, _)| m))
            .collect();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut s = format!(
            "schema {}.{}, {}, {} in {}",
            self.schema.major,
            self.schema.minor,
            plural(self.node_count(), "node", "nodes"),
            plural(params.len(), "parameter", "parameters"),
            plural(owners.len(), "module", "modules"),
        );
        if let Some(op) = self.final_op() {
            s.push_str(&format!(", final op {}", op.short()));
        }
        s
    }
}

fn count_nodes(graph: &Graph) -> usize {
    graph
        .nodes
        .iter()
        .map(|n| {
            1 + n
                .inputs
                .iter()
                .map(|a| match &a.arg {
                    Argument::AsGraph(g) => count_nodes(&g.graph),
                    _ => 0,
                })
                .sum::<usize>()
        })
        .sum()
}

/// The tch dtype of a schema `ScalarType` code (the schema's numbering is not c10's).
pub fn kind_of(code: i64) -> Option<Kind> {
    Some(match code {
        1 => Kind::Uint8,
        2 => Kind::Int8,
        3 => Kind::Int16,
        4 => Kind::Int,
        5 => Kind::Int64,
        6 => Kind::Half,
        7 => Kind::Float,
        8 => Kind::Double,
        12 => Kind::Bool,
        13 => Kind::BFloat16,
        _ => return None,
    })
}

/// The schema's `Layout.Strided`.
const LAYOUT_STRIDED: i64 = 7;

// ---------------------------------------------------------------------------------------------
// Detection and reading.

/// Whether the file at `path` is a `.pt2` archive, judged by its content: a zip whose members sit under
/// one folder with an `archive_format` member. A file that is not a readable zip is not one (callers
/// may still go by the `.pt2` extension).
pub fn is_pt2(path: &Path) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    // Any model file passes here before libtorch reads it: never let the zip reader allocate for a
    // directory larger than a program needs (such a file is left to the TorchScript checks).
    if check_directory(&mut file).is_err() {
        return false;
    }
    let Ok(zip) = zip::ZipArchive::new(file) else {
        return false;
    };
    let found = zip.file_names().any(|n| {
        let mut parts = n.split('/');
        matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(_), Some("archive_format"), None)
        )
    });
    found
}

/// Reads the main program (`models/model.json`) of the `.pt2` at `path`.
pub fn read(path: &Path) -> Result<Program> {
    read_archive(path).map(|a| a.model)
}

/// Reads every program of the `.pt2` at `path` and trainlint's module metadata, when it holds them.
pub fn read_archive(path: &Path) -> Result<Archive> {
    let mut file = std::fs::File::open(path).map_err(|e| Pt2Error::Io(e.to_string()))?;
    check_directory(&mut file)?;
    let file_bytes = file
        .metadata()
        .map_err(|e| Pt2Error::Io(e.to_string()))?
        .len();
    let zip = zip::ZipArchive::new(file).map_err(|e| Pt2Error::NotZip(e.to_string()))?;
    Reader::new(zip, file_bytes)?.archive()
}

/// The programs one `.pt2` may hold. `model` is what `torch.export.save` writes and `torch.export.load`
/// reads; trainlint's exporter adds the same module exported in eval mode and, when the saved training
/// flags are mixed, exported as saved (`package_pt2`, one weights config per program).
pub const PROGRAM_NAMES: [&str; 3] = ["model", "eval", "as_saved"];

/// A `.pt2` as read: the main program (exported in train mode by trainlint's exporter; as the user
/// exported it otherwise), the optional eval and as-saved programs, and the module list trainlint's
/// exporter writes to `extra/trainlint.json` (every module with its class and its training flag as
/// saved, which no program records).
#[derive(Debug)]
pub struct Archive {
    pub model: Program,
    pub eval: Option<Program>,
    pub as_saved: Option<Program>,
    pub modules: Option<Vec<SavedModule>>,
}

/// One module of `extra/trainlint.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedModule {
    pub path: String,
    /// `type(module).__name__`.
    pub kind: String,
    /// The module's training flag when it was exported.
    pub training: bool,
}

#[derive(Deserialize)]
struct Metadata {
    version: i64,
    modules: Vec<SavedModule>,
}

/// The version of `extra/trainlint.json` this reader understands.
pub const METADATA_VERSION: i64 = 1;

/// The most members a program's zip may list (resnet18's has 72; a TorchScript archive one per
/// tensor), and the most bytes of central directory: the zip reader keeps every entry in memory.
const MAX_MEMBERS: u64 = 65_536;
const MAX_DIRECTORY_BYTES: u64 = 16 << 20;

/// Refuses a zip whose end-of-central-directory record (or its zip64 record) lists more members, or
/// a larger directory, than [`MAX_MEMBERS`] / [`MAX_DIRECTORY_BYTES`], before the zip reader
/// allocates for them. (The same check as `data::npz`'s, with a program's limits.) A file without
/// such a record is left to the zip reader, which refuses it.
fn check_directory(file: &mut std::fs::File) -> Result<(), DirectoryError> {
    let Some((members, size)) = crate::zipdir::declared_directory(file)? else {
        return Ok(());
    };
    if members > MAX_MEMBERS || size > MAX_DIRECTORY_BYTES {
        return Err(DirectoryError::TooLarge { members, size });
    }
    Ok(())
}

struct Reader<R: Read + std::io::Seek> {
    zip: zip::ZipArchive<R>,
    /// "train/" for `train.pt2`.
    root: String,
}

impl<R: Read + std::io::Seek> Reader<R> {
    fn new(zip: zip::ZipArchive<R>, file_bytes: u64) -> Result<Self> {
        let mut zip = zip;
        let mut roots: Vec<String> = Vec::new();
        let mut records = Vec::with_capacity(zip.len());
        for i in 0..zip.len() {
            let entry = zip
                .by_index_raw(i)
                .map_err(|e| Pt2Error::Damaged(e.to_string()))?;
            let name = entry.name().to_string();
            let (root, rest) = name.split_once('/').unwrap_or(("", &name));
            if !roots.iter().any(|r| r == root) {
                roots.push(root.to_string());
            }
            records.push(ArchiveRecord {
                name: rest.as_bytes().to_vec(),
                size: entry.size(),
                bytes: None,
            });
        }
        // The same damage checks as for a TorchScript archive: a zip bomb, names that collide.
        // (Nothing here is code or a pickle that loading would run, so `runs_on_load` and
        // `unscanned` do not apply: members are read as data, or not at all.)
        if let Some(reason) = archive::inspect(&records, file_bytes)
            .damaged
            .into_iter()
            .next()
        {
            return Err(Pt2Error::Damaged(reason));
        }
        match &roots[..] {
            [root] if !root.is_empty() => Ok(Reader {
                root: format!("{root}/"),
                zip,
            }),
            _ => Err(Pt2Error::Layout(format!(
                "{} top-level entries ({})",
                roots.len(),
                roots
                    .iter()
                    .take(3)
                    .map(|r| format!("`{}`", r.escape_debug()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn has(&self, member: &str) -> bool {
        self.zip
            .index_for_name(&(self.root.clone() + member))
            .is_some()
    }

    /// The member's bytes, at most `limit`, exactly as many as its header declares.
    fn member(&mut self, member: &str, limit: u64) -> Result<Vec<u8>> {
        let name = self.root.clone() + member;
        let mut entry = match self.zip.by_name(&name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(Pt2Error::MissingMember(member.into()))
            }
            Err(e) => return Err(Pt2Error::Damaged(format!("member `{member}`: {e}"))),
        };
        let size = entry.size();
        if size > limit {
            return Err(Pt2Error::MemberTooLarge {
                member: member.into(),
                size,
                limit,
            });
        }
        // The declared size is checked against the file by `archive::inspect`; still, grow as read.
        let mut bytes = Vec::with_capacity(size.min(1 << 26) as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| Pt2Error::Damaged(format!("member `{member}`: {e}")))?;
        if bytes.len() as u64 != size {
            return Err(Pt2Error::Damaged(format!(
                "member `{member}` holds {} bytes, its header declares {size}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn marker(&mut self, member: &str, expected: &'static str) -> Result<()> {
        let bytes = self.member(member, 64)?;
        let found = String::from_utf8_lossy(&bytes).trim_end().to_string();
        if found != expected {
            return Err(Pt2Error::Marker {
                member: member.into(),
                found,
                expected,
            });
        }
        Ok(())
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, member: &str) -> Result<T> {
        let bytes = self.member(member, super::MAX_SCANNED_RECORD_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|e| Pt2Error::Json {
            member: member.into(),
            reason: short_serde(&e.to_string()),
        })
    }

    fn archive(mut self) -> Result<Archive> {
        self.marker("archive_format", "pt2")?;
        self.marker("archive_version", "0")?;
        self.marker("byteorder", "little")?;
        let programs: Vec<String> = self
            .zip
            .file_names()
            .filter_map(|n| n.strip_prefix(self.root.as_str()))
            .filter_map(|n| n.strip_prefix("models/"))
            .filter_map(|n| n.strip_suffix(".json"))
            .map(str::to_string)
            .collect();
        let known = programs.iter().all(|p| PROGRAM_NAMES.contains(&p.as_str()));
        if !known || !programs.iter().any(|p| p == "model") {
            let shown = if programs.is_empty() {
                "none".to_string()
            } else {
                programs
                    .iter()
                    .map(|p| format!("models/{p}.json"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Pt2Error::Programs(shown));
        }
        let model = self.program("model")?;
        let mut others = [None, None];
        for (slot, name) in others.iter_mut().zip(["eval", "as_saved"]) {
            if programs.iter().any(|p| p == name) {
                let p = self.program(name)?;
                same_weights(&model, &p).map_err(|source| Pt2Error::Mismatch {
                    program: name.into(),
                    source: Box::new(source),
                })?;
                *slot = Some(p);
            }
        }
        let [eval, as_saved] = others;
        let modules = if self.has("extra/trainlint.json") {
            let meta: Metadata = self.json("extra/trainlint.json")?;
            if meta.version != METADATA_VERSION {
                return Err(Pt2Error::Metadata(format!(
                    "version {} is not supported (trainlint reads version {METADATA_VERSION})",
                    meta.version
                )));
            }
            if meta.modules.first().is_none_or(|m| !m.path.is_empty()) {
                return Err(Pt2Error::Metadata(
                    "the module list must start with the root module (path \"\")".into(),
                ));
            }
            Some(meta.modules)
        } else {
            None
        };
        Ok(Archive {
            model,
            eval,
            as_saved,
            modules,
        })
    }

    fn program(&mut self, name: &str) -> Result<Program> {
        let member = format!("models/{name}.json");
        // The version first, so that a file of another major version says so rather than failing
        // on some field that version changed.
        let version: VersionOnly = self.json(&member)?;
        let v = version.schema_version;
        if v.major != SUPPORTED_MAJOR || v.minor < 0 {
            return Err(Pt2Error::SchemaVersion {
                major: v.major,
                minor: v.minor,
            });
        }
        let ep: ExportedProgramJson = self.json(&member).map_err(|e| match e {
            Pt2Error::Json { member, reason } if v.minor > NEWEST_KNOWN_MINOR => Pt2Error::Json {
                member,
                reason: format!(
                    "{reason} (made by a newer PyTorch: schema {}.{}, trainlint knows {SUPPORTED_MAJOR}.{NEWEST_KNOWN_MINOR})",
                    v.major, v.minor
                ),
            },
            other => other,
        })?;
        if ep.verifiers != ["TRAINING"] {
            return Err(Pt2Error::Verifiers(format!("{:?}", ep.verifiers)));
        }
        let GraphModuleJson {
            graph,
            signature,
            module_call_graph,
        } = ep.graph_module;
        let targets = graph
            .nodes
            .iter()
            .map(|n| {
                Target::parse(&n.target)
                    .ok_or_else(|| Pt2Error::Unsupported(format!("node target {:?}", n.target)))
            })
            .collect::<Result<Vec<_>>>()?;
        check_graph(&graph, &mut HashSet::new())?;
        let mut modules: Vec<ModuleFrame> = Vec::new();
        collect_modules(&graph, &mut modules)?;
        check_signature(&graph, &signature)?;
        let weights_member = format!("data/weights/{name}_weights_config.json");
        if !self.has(&weights_member) && self.has(&format!("data/weights/{name}.pt")) {
            return Err(Pt2Error::Unsupported(format!(
                "an archive whose weights are one pickle, data/weights/{name}.pt (the layout PyTorch 2.8 and older write), which trainlint never unpickles: save it again with a newer PyTorch (2.13 and 2.15 are tested)"
            )));
        }
        let weights_cfg: PayloadConfig = self.json(&weights_member)?;
        let constants_member = format!("data/constants/{name}_constants_config.json");
        let constants_cfg: PayloadConfig = if self.has(&constants_member) {
            self.json(&constants_member)?
        } else {
            PayloadConfig {
                config: BTreeMap::new(),
            }
        };
        let (weights, tied) = self.weights(&signature, &weights_cfg, &constants_cfg)?;
        let called_modules = module_call_graph
            .iter()
            .filter_map(|m| m.get("fqn").and_then(|f| f.as_str()).map(str::to_string))
            .collect();
        Ok(Program {
            schema: v,
            torch_version: ep.torch_version,
            verifiers: ep.verifiers,
            graph,
            targets,
            signature,
            range_constraints: ep.range_constraints,
            weights,
            tied,
            modules,
            called_modules,
        })
    }

    /// Loads every parameter, buffer and constant the signature names, one tensor per distinct
    /// (storage, dtype, view).
    fn weights(
        &mut self,
        signature: &GraphSignature,
        weights_cfg: &PayloadConfig,
        constants_cfg: &PayloadConfig,
    ) -> Result<(Vec<Weight>, Vec<Vec<String>>)> {
        type ViewKey = (String, Kind, Vec<i64>, Vec<i64>, i64);
        let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
        let mut views: HashMap<ViewKey, (Tensor, Vec<String>)> = HashMap::new();
        // storage member -> (first FQN, its view) to find different views of one storage
        let mut first_view: HashMap<String, (String, ViewKey)> = HashMap::new();
        let mut order: Vec<ViewKey> = Vec::new();
        let mut out = Vec::new();
        for spec in &signature.input_specs {
            let (fqn, role, arg) = match spec {
                InputSpec::Parameter {
                    arg,
                    parameter_name,
                } => (parameter_name, WeightRole::Parameter, arg),
                InputSpec::Buffer {
                    arg,
                    buffer_name,
                    persistent,
                } => (
                    buffer_name,
                    WeightRole::Buffer {
                        persistent: *persistent,
                    },
                    arg,
                ),
                InputSpec::TensorConstant {
                    arg,
                    tensor_constant_name,
                } => (tensor_constant_name, WeightRole::Constant, arg),
                _ => continue,
            };
            let (folder, meta) = match (
                role,
                weights_cfg.config.get(fqn),
                constants_cfg.config.get(fqn),
            ) {
                (WeightRole::Constant, _, Some(m)) => ("data/constants/", m),
                (WeightRole::Constant, Some(m), None) => ("data/weights/", m),
                (_, Some(m), _) => ("data/weights/", m),
                // A non-persistent buffer may be stored with the constants.
                (WeightRole::Buffer { .. }, None, Some(m)) => ("data/constants/", m),
                _ => {
                    return Err(Pt2Error::Signature(format!(
                        "{fqn} has no entry in the weights or constants config"
                    )))
                }
            };
            if meta.use_pickle {
                return Err(Pt2Error::Pickled { fqn: fqn.clone() });
            }
            let Some(tm) = &meta.tensor_meta else {
                return Err(Pt2Error::BadTensor {
                    fqn: fqn.clone(),
                    what: "no tensor_meta".into(),
                });
            };
            let bad = |what: String| Pt2Error::BadTensor {
                fqn: fqn.clone(),
                what,
            };
            let dtype = kind_of(tm.dtype).ok_or_else(|| {
                bad(format!(
                    "dtype code {}, which trainlint does not read",
                    tm.dtype
                ))
            })?;
            if tm.layout != LAYOUT_STRIDED {
                return Err(bad(format!(
                    "layout code {} (only strided tensors are read)",
                    tm.layout
                )));
            }
            if tm.device.kind != "cpu" && tm.device.kind != "cuda" {
                return Err(bad(format!("device {:?}", tm.device.kind)));
            }
            let ints = |v: &[SymInt], what: &str| -> Result<Vec<i64>> {
                v.iter()
                    .map(|s| match s {
                        SymInt::AsInt(i) if *i >= 0 => Ok(*i),
                        SymInt::AsInt(i) => Err(bad(format!("a negative {what} {i}"))),
                        SymInt::AsExpr(e) => {
                            Err(bad(format!("a symbolic {what} {:?}", e.expr_str)))
                        }
                    })
                    .collect()
            };
            let sizes = ints(&tm.sizes, "size")?;
            let strides = ints(&tm.strides, "stride")?;
            let storage_offset =
                ints(std::slice::from_ref(&tm.storage_offset), "storage offset")?[0];
            if sizes.len() != strides.len() {
                return Err(bad(format!(
                    "{} sizes but {} strides",
                    sizes.len(),
                    strides.len()
                )));
            }
            if sizes.len() > 64 {
                return Err(bad(format!("{} dimensions", sizes.len())));
            }
            let storage = format!("{folder}{}", meta.path_name);
            if !storages.contains_key(&storage) {
                let bytes = self.member(&storage, u64::MAX)?;
                storages.insert(storage.clone(), bytes);
            }
            let bytes = &storages[&storage];
            let key: ViewKey = (
                storage.clone(),
                dtype,
                sizes.clone(),
                strides.clone(),
                storage_offset,
            );
            match first_view.get(&storage) {
                Some((first, view)) if *view != key => {
                    return Err(Pt2Error::OverlappingViews {
                        first: first.clone(),
                        second: fqn.clone(),
                        storage: meta.path_name.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    first_view.insert(storage.clone(), (fqn.clone(), key.clone()));
                }
            }
            // A tied weight (the same view of the same storage) is the first name's tensor.
            let tensor = if let Some((tensor, names)) = views.get_mut(&key) {
                names.push(fqn.clone());
                tensor.shallow_clone()
            } else {
                let tensor = tensor_from_storage(
                    fqn,
                    &storage,
                    bytes,
                    dtype,
                    &sizes,
                    &strides,
                    storage_offset,
                )?;
                let tensor = if tm.requires_grad && is_float(dtype) {
                    tensor
                        .f_set_requires_grad(true)
                        .map_err(|e| bad(super::user_message(&e.to_string())))?
                } else {
                    tensor
                };
                views.insert(key.clone(), (tensor.shallow_clone(), vec![fqn.clone()]));
                order.push(key);
                tensor
            };
            out.push(Weight {
                fqn: fqn.clone(),
                role,
                graph_input: arg.name.clone(),
                dtype,
                sizes,
                strides,
                storage_offset,
                requires_grad: tm.requires_grad,
                storage: meta.path_name.clone(),
                tensor,
            });
        }
        let tied = order
            .iter()
            .filter_map(|k| views.get(k).map(|(_, names)| names.clone()))
            .filter(|names| names.len() > 1)
            .collect();
        Ok((out, tied))
    }
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16
    )
}

/// The tensor `storage.view(dtype).as_strided(sizes, strides, offset)`, copied out of `bytes` after
/// checking that every element it reaches lies inside them.
fn tensor_from_storage(
    fqn: &str,
    storage: &str,
    bytes: &[u8],
    dtype: Kind,
    sizes: &[i64],
    strides: &[i64],
    offset: i64,
) -> Result<Tensor> {
    let elt = dtype.elt_size_in_bytes() as u64;
    let has = bytes.len() as u64;
    let bad = |what: String| Pt2Error::BadTensor {
        fqn: fqn.into(),
        what,
    };
    if !has.is_multiple_of(elt) {
        return Err(bad(format!(
            "a storage `{storage}` of {has} bytes, not a whole number of {elt}-byte elements"
        )));
    }
    // libtorch computes contiguous strides as products of sizes, even for an empty tensor.
    if sizes
        .iter()
        .filter(|&&s| s != 0)
        .try_fold(1i64, |n, &s| n.checked_mul(s))
        .is_none()
    {
        return Err(bad(format!(
            "a shape {sizes:?} whose element count overflows 64 bits"
        )));
    }
    if sizes.contains(&0) {
        return Tensor::f_zeros(sizes, (dtype, tch::Device::Cpu))
            .map_err(|e| bad(super::user_message(&e.to_string())));
    }
    // Sizes, strides and the offset are non-negative i64s (checked by the caller); checked u128
    // arithmetic, so a hostile view cannot wrap around to a small number.
    let needed = sizes
        .iter()
        .zip(strides)
        .try_fold(offset as u128, |last, (&s, &st)| {
            (s as u128 - 1)
                .checked_mul(st as u128)
                .and_then(|reach| last.checked_add(reach))
        })
        .and_then(|last| last.checked_add(1))
        .and_then(|count| count.checked_mul(elt as u128))
        .unwrap_or(u128::MAX);
    if needed > has as u128 {
        return Err(Pt2Error::OutOfBounds {
            fqn: fqn.into(),
            storage: storage.into(),
            needed,
            has,
        });
    }
    if dtype == Kind::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(bad(format!(
            "a bool storage `{storage}` with bytes other than 0 and 1"
        )));
    }
    let base = Tensor::f_from_data_size(bytes, &[(has / elt) as i64], dtype)
        .map_err(|e| bad(super::user_message(&e.to_string())))?;
    base.f_as_strided(sizes, strides, offset)
        .and_then(|v| v.f_contiguous())
        .and_then(|v| v.f_detach_copy())
        .map_err(|e| bad(super::user_message(&e.to_string())))
}

/// Every value a node reads is defined before it (by the graph's inputs or an earlier node);
/// subgraphs are checked in their own scope (a subgraph sees only its own inputs).
fn check_graph(graph: &Graph, defined: &mut HashSet<String>) -> Result<()> {
    for input in &graph.inputs {
        defined.extend(input.defined_names().into_iter().map(str::to_string));
    }
    for node in &graph.nodes {
        let label = node.name.clone().unwrap_or_else(|| node.target.clone());
        if Target::parse(&node.target).is_none() {
            return Err(Pt2Error::Unsupported(format!(
                "node target {:?}",
                node.target
            )));
        }
        for input in &node.inputs {
            if let Argument::AsGraph(sub) = &input.arg {
                check_graph(&sub.graph, &mut HashSet::new())?;
                continue;
            }
            for name in input.arg.tensor_names() {
                if !defined.contains(name) {
                    return Err(Pt2Error::UndefinedValue {
                        node: label,
                        value: name.into(),
                    });
                }
            }
        }
        for output in &node.outputs {
            for name in output.defined_names() {
                if !defined.insert(name.to_string()) {
                    return Err(Pt2Error::Redefined {
                        node: label,
                        value: name.into(),
                    });
                }
            }
        }
    }
    for output in &graph.outputs {
        for name in output.tensor_names() {
            if !defined.contains(name) {
                return Err(Pt2Error::UndefinedValue {
                    node: "output".into(),
                    value: name.into(),
                });
            }
        }
    }
    Ok(())
}

/// The graph's inputs are the signature's input specs, one each, in order; only the kinds trainlint
/// can bind are accepted.
fn check_signature(graph: &Graph, signature: &GraphSignature) -> Result<()> {
    if graph.inputs.len() != signature.input_specs.len() {
        return Err(Pt2Error::Signature(format!(
            "{} graph inputs but {} input specs",
            graph.inputs.len(),
            signature.input_specs.len()
        )));
    }
    for (input, spec) in graph.inputs.iter().zip(&signature.input_specs) {
        let bound = match spec {
            InputSpec::UserInput { arg } => arg.clone(),
            InputSpec::Parameter { arg, .. }
            | InputSpec::Buffer { arg, .. }
            | InputSpec::TensorConstant { arg, .. } => Argument::AsTensor(arg.clone()),
            InputSpec::CustomObj(_) => {
                return Err(Pt2Error::Unsupported(
                    "a custom object input (TorchBind, native code)".into(),
                ))
            }
            InputSpec::Token(_) => {
                return Err(Pt2Error::Unsupported("an effect token input".into()))
            }
            InputSpec::ConstantInput(_) => {
                return Err(Pt2Error::Unsupported("a non-tensor constant input".into()))
            }
        };
        if input.defined_names() != bound.defined_names() {
            return Err(Pt2Error::Signature(format!(
                "graph input {:?} does not match its spec {:?}",
                input.defined_names(),
                bound.defined_names()
            )));
        }
    }
    if graph.outputs.len() != signature.output_specs.len() {
        return Err(Pt2Error::Signature(format!(
            "{} graph outputs but {} output specs",
            graph.outputs.len(),
            signature.output_specs.len()
        )));
    }
    for spec in &signature.output_specs {
        let kind = match spec {
            OutputSpec::UserOutput { .. }
            | OutputSpec::LossOutput { .. }
            | OutputSpec::BufferMutation { .. } => continue,
            OutputSpec::GradientToParameter(_) => "gradient_to_parameter",
            OutputSpec::GradientToUserInput(_) => "gradient_to_user_input",
            OutputSpec::UserInputMutation(_) => "user_input_mutation",
            OutputSpec::Token(_) => "token",
            OutputSpec::ParameterMutation(_) => "parameter_mutation",
        };
        return Err(Pt2Error::Unsupported(format!("a {kind} output")));
    }
    Ok(())
}

/// The modules of every node's `nn_module_stack` (subgraphs included), in order of first appearance.
fn collect_modules(graph: &Graph, out: &mut Vec<ModuleFrame>) -> Result<()> {
    for node in &graph.nodes {
        if let Some(stack) = node.metadata.get("nn_module_stack") {
            let label = node.name.as_deref().unwrap_or(&node.target);
            for frame in parse_module_stack(label, stack)? {
                if !out.contains(&frame) {
                    out.push(frame);
                }
            }
        }
        for input in &node.inputs {
            if let Argument::AsGraph(sub) = &input.arg {
                collect_modules(&sub.graph, out)?;
            }
        }
    }
    Ok(())
}

/// Every weight of `other` (an eval or as-saved program) is a weight of `model` with the same role,
/// dtype and shape: the programs run on one set of tensors.
fn same_weights(model: &Program, other: &Program) -> Result<(), WeightMismatch> {
    for w in &other.weights {
        let Some(m) = model.weights.iter().find(|m| m.fqn == w.fqn) else {
            return Err(WeightMismatch::Missing(w.fqn.clone()));
        };
        let same_role = std::mem::discriminant(&m.role) == std::mem::discriminant(&w.role);
        if !same_role || m.dtype != w.dtype || m.sizes != w.sizes {
            let described = |w: &Weight| format!("{:?} {:?} {:?}", w.role, w.dtype, w.sizes);
            return Err(WeightMismatch::Differs {
                fqn: w.fqn.clone(),
                there: described(m),
                here: described(w),
            });
        }
    }
    Ok(())
}

/// `key,path,class;key,path,class;...` (root first) as `serialize.py` writes it: frames split on
/// `;`, fields on the commas outside `[]` and `()`.
fn parse_module_stack(node: &str, stack: &str) -> Result<Vec<ModuleFrame>> {
    Ok(parse_module_calls(node, stack)?
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}

/// A node's `nn_module_stack` with each frame's key: the key names one call of the module (`L__self__b`,
/// then `L__self__b@1` for its second call), so two calls of one module stay apart.
pub fn parse_module_calls(node: &str, stack: &str) -> Result<Vec<(String, ModuleFrame)>> {
    stack
        .split(';')
        .filter(|f| !f.is_empty())
        .map(|frame| {
            let fields = split_outside_brackets(frame);
            match &fields[..] {
                [key, path, class] if !class.is_empty() => Ok((
                    key.to_string(),
                    ModuleFrame {
                        path: path.to_string(),
                        class: class.to_string(),
                    },
                )),
                _ => Err(Pt2Error::ModuleStack {
                    node: node.into(),
                    entry: frame.chars().take(120).collect(),
                }),
            }
        })
        .collect()
}

fn split_outside_brackets(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// serde's message without the list of every expected variant.
fn short_serde(msg: &str) -> String {
    match msg.split_once(", expected one of") {
        Some((head, tail)) => match tail.rfind(" at line ") {
            Some(at) => format!("{head}{}", &tail[at..]),
            None => head.to_string(),
        },
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/models/pt2")
            .join(name)
    }

    #[test]
    fn targets_parse_into_namespace_name_overload() {
        assert_eq!(
            Target::parse("torch.ops.aten.linear.default"),
            Some(Target::Op {
                namespace: "aten".into(),
                name: "linear".into(),
                overload: "default".into()
            })
        );
        assert_eq!(
            Target::parse("torch.ops.higher_order.cond"),
            Some(Target::HigherOrder("cond".into()))
        );
        assert_eq!(
            Target::parse("_operator.mul"),
            Some(Target::SymOp("mul".into()))
        );
        assert_eq!(Target::parse("builtins.eval"), None);
        assert_eq!(Target::parse("torch.ops.aten.linear"), None);
        assert_eq!(Target::parse("torch.ops.aten..default"), None);
    }

    #[test]
    fn floats_accept_the_schema_strings_for_non_finite_values() {
        let v: Vec<Float> =
            serde_json::from_str(r#"[1.5, "Infinity", "-Infinity", "NaN"]"#).unwrap();
        assert_eq!(v[0].0, 1.5);
        assert_eq!(v[1].0, f64::INFINITY);
        assert_eq!(v[2].0, f64::NEG_INFINITY);
        assert!(v[3].0.is_nan());
        assert!(serde_json::from_str::<Float>(r#""inf""#).is_err());
    }

    #[test]
    fn an_unknown_argument_kind_is_named() {
        let e = serde_json::from_str::<Argument>(r#"{"as_foo": 1}"#).unwrap_err();
        let shown = short_serde(&e.to_string());
        assert!(shown.contains("unknown variant `as_foo`"), "{shown}");
        assert!(!shown.contains("expected one of"), "{shown}");
    }

    #[test]
    fn module_stacks_split_outside_brackets() {
        let frames = parse_module_stack(
            "n",
            "L__self__,,m.Net;L__self__layers[0],layers.0,torch.nn.Linear",
        )
        .unwrap();
        assert_eq!(
            frames,
            vec![
                ModuleFrame {
                    path: "".into(),
                    class: "m.Net".into()
                },
                ModuleFrame {
                    path: "layers.0".into(),
                    class: "torch.nn.Linear".into()
                }
            ]
        );
        assert_eq!(
            split_outside_brackets("a[1,2],b(3,4),c"),
            ["a[1,2]", "b(3,4)", "c"]
        );
        assert!(parse_module_stack("n", "only,two").is_err());
    }

    #[test]
    fn views_past_the_storage_are_refused_before_a_tensor_is_made() {
        let bytes = [0u8; 16]; // four f32
        let ok = tensor_from_storage("w", "s", &bytes, Kind::Float, &[2, 2], &[2, 1], 0).unwrap();
        assert_eq!(ok.size(), [2, 2]);
        // offset 1 + (2-1)*2 + (2-1)*1 = 4: element 4 is past the end
        let e =
            tensor_from_storage("w", "s", &bytes, Kind::Float, &[2, 2], &[2, 1], 1).unwrap_err();
        assert!(
            matches!(
                e,
                Pt2Error::OutOfBounds {
                    needed: 20,
                    has: 16,
                    ..
                }
            ),
            "{e}"
        );
        // a stride that reaches far
        let e =
            tensor_from_storage("w", "s", &bytes, Kind::Float, &[2], &[i64::MAX], 0).unwrap_err();
        assert!(matches!(e, Pt2Error::OutOfBounds { .. }), "{e}");
        // sizes, strides and offset at i64::MAX do not overflow the check
        let e = tensor_from_storage(
            "w",
            "s",
            &bytes,
            Kind::Float,
            &[i64::MAX, 1],
            &[i64::MAX, i64::MAX],
            i64::MAX,
        )
        .unwrap_err();
        assert!(matches!(e, Pt2Error::OutOfBounds { .. }), "{e}");
        let e = tensor_from_storage(
            "w",
            "s",
            &bytes,
            Kind::Float,
            &[i64::MAX, i64::MAX],
            &[1, 1],
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("overflows 64 bits"), "{e}");
        let e =
            tensor_from_storage("w", "s", &bytes[..15], Kind::Float, &[1], &[1], 0).unwrap_err();
        assert!(e.to_string().contains("not a whole number"), "{e}");
        let e = tensor_from_storage("w", "s", &[2u8], Kind::Bool, &[1], &[1], 0).unwrap_err();
        assert!(e.to_string().contains("bool storage"), "{e}");
        // an empty tensor reads nothing
        let empty = tensor_from_storage("w", "s", &[], Kind::Float, &[0, 3], &[3, 1], 0).unwrap();
        assert_eq!(empty.size(), [0, 3]);
        // an empty tensor whose other dims overflow (libtorch's zeros() would throw)
        let e = tensor_from_storage(
            "w",
            "s",
            &[],
            Kind::Float,
            &[0, i64::MAX, i64::MAX],
            &[1, 1, 1],
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("overflows 64 bits"), "{e}");
    }

    #[test]
    fn dtype_codes_follow_the_schema_not_c10() {
        assert_eq!(kind_of(7), Some(Kind::Float)); // c10's Float is 6
        assert_eq!(kind_of(5), Some(Kind::Int64));
        assert_eq!(kind_of(13), Some(Kind::BFloat16));
        assert_eq!(kind_of(0), None);
        assert_eq!(kind_of(10), None); // complex: not read
    }

    /// What `fixtures/make_pt2.py` recorded from PyTorch for one fixture.
    #[derive(Deserialize)]
    struct Expected {
        schema_version: (i64, i64),
        nodes: usize,
        nodes_with_subgraphs: usize,
        parameters: Vec<ExpectedTensor>,
        module_paths: Vec<String>,
        final_op: String,
        tied: Vec<Vec<String>>,
    }

    #[derive(Deserialize)]
    struct ExpectedTensor {
        kind: String,
        name: String,
        graph_input: String,
        dtype: String,
        shape: Vec<i64>,
        requires_grad: bool,
        values: Vec<f64>,
    }

    fn dtype_name(kind: Kind) -> &'static str {
        match kind {
            Kind::Float => "float32",
            Kind::Int64 => "int64",
            _ => "other",
        }
    }

    /// Each fixture reads as PyTorch saw it: version, node count, the signature's parameters and
    /// buffers in order with dtype, shape and requires_grad, their values exactly, module paths, the
    /// final op and the tied weights.
    #[test]
    fn fixtures_read_as_pytorch_wrote_them() {
        for name in ["mlp", "convbn", "tied", "nograd"] {
            let p =
                read(&fixture(&format!("{name}.pt2"))).unwrap_or_else(|e| panic!("{name}: {e}"));
            let text = std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap();
            let want: Expected = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (p.schema.major, p.schema.minor),
                want.schema_version,
                "{name}"
            );
            assert_eq!(p.graph.nodes.len(), want.nodes, "{name}");
            assert_eq!(p.node_count(), want.nodes_with_subgraphs, "{name}");
            let got: Vec<&Weight> = p
                .weights
                .iter()
                .filter(|w| w.role != WeightRole::Constant)
                .collect();
            assert_eq!(got.len(), want.parameters.len(), "{name}");
            for (w, e) in got.iter().zip(&want.parameters) {
                assert_eq!(w.fqn, e.name, "{name}");
                assert_eq!(w.graph_input, e.graph_input, "{name} {}", e.name);
                let kind = match w.role {
                    WeightRole::Parameter => "parameter",
                    WeightRole::Buffer { .. } => "buffer",
                    WeightRole::Constant => "constant",
                };
                assert_eq!(kind, e.kind, "{name} {}", e.name);
                assert_eq!(dtype_name(w.dtype), e.dtype, "{name} {}", e.name);
                assert_eq!(w.sizes, e.shape, "{name} {}", e.name);
                assert_eq!(w.tensor.size(), e.shape, "{name} {}", e.name);
                assert_eq!(w.requires_grad, e.requires_grad, "{name} {}", e.name);
                assert_eq!(
                    w.tensor.requires_grad(),
                    e.requires_grad,
                    "{name} {}",
                    e.name
                );
                let values: Vec<f64> =
                    Vec::try_from(w.tensor.to_kind(Kind::Double).reshape([-1])).unwrap();
                assert_eq!(
                    values, e.values,
                    "{name} {}: values differ from PyTorch's",
                    e.name
                );
            }
            let mut paths: Vec<String> = p.modules.iter().map(|m| m.path.clone()).collect();
            paths.sort();
            assert_eq!(paths, want.module_paths, "{name}");
            assert_eq!(p.modules[0].path, "", "{name}: the root comes first");
            let final_op = match p.final_op().unwrap() {
                Target::Op {
                    namespace,
                    name,
                    overload,
                } => format!("{namespace}.{name}.{overload}"),
                other => panic!("{name}: final op {other:?}"),
            };
            assert_eq!(final_op, want.final_op, "{name}");
            assert_eq!(p.tied, want.tied, "{name}");
        }
    }

    #[test]
    fn a_tied_weight_is_one_tensor_under_two_names() {
        let p = read(&fixture("tied.pt2")).unwrap();
        let enc = p.weights.iter().find(|w| w.fqn == "enc.weight").unwrap();
        let dec = p.weights.iter().find(|w| w.fqn == "dec.weight").unwrap();
        assert_eq!(enc.storage, dec.storage);
        assert_eq!(enc.tensor.data_ptr(), dec.tensor.data_ptr());
        assert_ne!(enc.graph_input, dec.graph_input);
        let frozen = p.weights.iter().find(|w| w.fqn == "frozen.weight").unwrap();
        assert!(!frozen.requires_grad && !frozen.tensor.requires_grad());
        assert_eq!(p.tied, [["enc.weight", "dec.weight"]]);
    }

    #[test]
    fn node_module_stacks_give_paths_and_classes() {
        let p = read(&fixture("convbn.pt2")).unwrap();
        let bn = p
            .targets
            .iter()
            .position(|t| t.short() == "aten.batch_norm")
            .expect("a batch_norm node");
        let stack = p.module_stack(bn);
        assert_eq!(stack.len(), 2, "{stack:?}");
        assert_eq!(stack[0].path, "");
        assert!(stack[0].class.ends_with("ConvBN"), "{stack:?}");
        assert_eq!(stack[1].path, "bn");
        assert_eq!(stack[1].class, "torch.nn.modules.batchnorm.BatchNorm2d");
        assert_eq!(p.buffers().count(), 3);
        assert!(
            p.called_modules.iter().any(|m| m == "bn"),
            "{:?}",
            p.called_modules
        );
    }

    #[test]
    fn a_no_grad_block_is_a_nested_graph() {
        let p = read(&fixture("nograd.pt2")).unwrap();
        let hop = p
            .targets
            .iter()
            .position(|t| *t == Target::HigherOrder("wrap_with_set_grad_enabled".into()))
            .expect("the no_grad block");
        let sub = p.graph.nodes[hop]
            .inputs
            .iter()
            .find_map(|a| match &a.arg {
                Argument::AsGraph(g) => Some(&g.graph),
                _ => None,
            })
            .expect("its subgraph");
        let inner: Vec<String> = sub
            .nodes
            .iter()
            .map(|n| Target::parse(&n.target).unwrap().short())
            .collect();
        assert_eq!(inner, ["aten.linear", "aten.sigmoid"]);
        assert_eq!(p.node_count(), p.graph.nodes.len() + 2);
        // `t` is called only inside the block: its module comes from the subgraph's nodes.
        assert!(p.modules.iter().any(|m| m.path == "t"), "{:?}", p.modules);
    }

    #[test]
    fn the_mlp_fixture_reads() {
        let p = read(&fixture("mlp.pt2")).unwrap();
        assert_eq!(
            p.schema,
            SchemaVersion {
                major: 8,
                minor: 20
            }
        );
        assert_eq!(p.node_count(), 3);
        assert_eq!(
            p.summary(),
            "schema 8.20, 3 nodes, 4 parameters in 2 modules, final op aten.linear"
        );
        assert!(is_pt2(&fixture("mlp.pt2")));
        assert!(!is_pt2(&fixture("mlp.expected.json")));
    }
}
