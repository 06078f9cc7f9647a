//! Running a `torch.export` program (issue 25, stage 2): the typed [`Program`] that [`super::pt2`] read
//! is lowered here to the line format of `pt2_shim.cpp` (ops checked against the allowlist, the file's
//! enum codes translated to c10's), which the shim compiles once (every op's schema resolved through
//! the dispatcher) and runs node by node with `callBoxed`, so autograd records the ops as in eager
//! PyTorch. The weights stay Rust tensors: each run binds the array it is given, so one compiled program
//! serves the model and every trainable copy.
//!
//! `trainlint check` and `trainlint graph` run a `.pt2` through [`Pt2Model`] (issue 25, stage 3): each
//! mode runs the program exported in that mode (`model`, `eval`, `as_saved` in one archive, as
//! trainlint's exporter writes it), the module list comes from the exporter's `extra/trainlint.json` or
//! from `nn_module_stack`, and the module graph, the layer scales and the first non-finite op come
//! from the graph and from observing each top-level node's output as the program runs.

use std::ffi::{c_char, c_int, CString};
use std::fmt::Write as _;
use std::ptr::NonNull;
use std::sync::Arc;

use tch::{Device, Tensor};
use trainlint_checks::graph::{CallSite, Edge, ModuleGraph};
use trainlint_checks::ports::{LayerScale, Mode, NamedTensor, NonFiniteOp};
use trainlint_checks::{CheckError, Model, ModuleInfo, OutputActivation, TrainableModel};

use super::pt2::{
    Archive, Argument, Graph, InputSpec, Node, OptionalTensorArgument, OutputSpec, Program, SymInt,
    SymIntArgument, Target, WeightRole,
};
use super::{check, ShimError, ShimString};

/// Why a `torch.export` program cannot run here: what lowering refuses, what the shim reports while
/// compiling or running it, and what the archive's programs disagree on.
#[derive(Debug, thiserror::Error)]
pub enum Pt2RunError {
    /// An op outside the allowlist (or one the policy refuses); `trust_helps`: `--trust-model` runs it.
    #[error("refusing to run {op}: {why}{}", if *trust_helps { "; pass --trust-model to run it anyway" } else { "" })]
    Refused {
        op: String,
        why: String,
        trust_helps: bool,
    },
    #[error("value name {0:?} is not supported")]
    ValueName(String),
    /// A schema enum code (scalar type, memory format, layout) with no c10 counterpart.
    #[error("unknown {what} code {code}")]
    UnknownCode { what: &'static str, code: i64 },
    #[error("device {0} (trainlint runs .pt2 programs on the CPU)")]
    Device(String),
    #[error("argument kind {0} is not supported")]
    ArgumentKind(String),
    #[error("a user input that is not a tensor is not supported")]
    UserInputNotTensor,
    #[error("no metadata for the input {0}")]
    NoInputMetadata(String),
    #[error("input dim {0} is not a plain symbol")]
    InputDim(String),
    /// The graph input spec, as the schema reads it.
    #[error("graph input {0} is not supported")]
    GraphInput(String),
    #[error("no weight for the graph input {0}")]
    NoWeightForInput(String),
    #[error("{0} user inputs: trainlint runs programs of one input tensor")]
    UserInputs(usize),
    #[error("the buffer {0} is written back as an output (a functional IR): export with torch.export.export and do not call run_decompositions()")]
    BufferMutation(String),
    /// The graph output spec, as the schema reads it.
    #[error("graph output {0} is not supported")]
    GraphOutput(String),
    #[error("{0} tensor outputs: trainlint runs programs of one output tensor")]
    Outputs(usize),
    #[error("node target {0}")]
    NodeTarget(String),
    /// An argument of the node with this target cannot be lowered.
    #[error("{target}: {source}")]
    InNode {
        target: String,
        #[source]
        source: Box<Pt2RunError>,
    },
    /// A higher-order op without the shape the interpreter runs (`without a subgraph`).
    #[error("higher_order.{hop} {problem}")]
    HigherOrder { hop: String, problem: &'static str },
    /// One argument of a higher-order op the interpreter runs is not what it takes.
    #[error("higher_order.{hop}: {problem}")]
    HigherOrderArgument {
        hop: &'static str,
        problem: &'static str,
    },
    #[error("autocast on {0}: only CPU autocast runs")]
    Autocast(String),
    #[error("a NUL byte in the program")]
    NulInProgram,
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("the shim compiled no program")]
    NoProgram,
    #[error("{given} weights given, the program takes {takes}")]
    WeightCount { given: usize, takes: usize },
    #[error("the program returned nothing")]
    ReturnedNothing,
    #[error("no weight {0} in the main program")]
    NotInMainProgram(String),
    #[error(transparent)]
    Pt2(#[from] super::pt2::Pt2Error),
    #[error("trainlint runs .pt2 programs on the CPU for now, not {0}; drop --device or export TorchScript")]
    NotCpu(String),
    #[error("model.output = {0:?} selects one output of a TorchScript model; a .pt2 program that trainlint runs has one output tensor, so leave model.output out")]
    OutputSelector(String),
}

type Result<T, E = Pt2RunError> = std::result::Result<T, E>;

#[repr(C)]
struct RawProgram {
    _private: [u8; 0],
}

// SAFETY (of the block): build.rs generates the C header pt2_shim.cpp includes from these declarations,
// so a definition that differs does not compile; every entry catches all C++ exceptions and returns
// them as a message.
unsafe extern "C" {
    fn tl_pt2_compile(text: *const c_char, out: *mut *mut RawProgram) -> Option<ShimString>;
    fn tl_pt2_free(p: *mut RawProgram);
    fn tl_pt2_run_observed(
        p: *mut RawProgram,
        input: *const torch_sys::C_tensor,
        weights: *const *const torch_sys::C_tensor,
        nweights: usize,
        grad: c_int,
        ctx: *mut std::ffi::c_void,
        observe: Option<ObserveCb>,
        out: *mut *mut torch_sys::C_tensor,
    ) -> Option<ShimString>;
}

/// `observe(ctx, node, value)`: top-level node `node` produced `value` (a new tensor handle, owned by
/// the callee).
type ObserveCb = unsafe extern "C" fn(*mut std::ffi::c_void, usize, *mut torch_sys::C_tensor);

/// Hands each observed value to the closure behind `ctx`; a panic in it is caught here (it must not
/// unwind into C++).
unsafe extern "C" fn observe_value(
    ctx: *mut std::ffi::c_void,
    node: usize,
    value: *mut torch_sys::C_tensor,
) {
    // SAFETY: `ctx` is the `&mut &mut dyn FnMut` that `run_observed` passes, alive for the run;
    // `value` is a fresh `new at::Tensor` that this function owns.
    let f = unsafe { &mut *(ctx as *mut &mut dyn FnMut(usize, Tensor)) };
    let t = unsafe { Tensor::from_ptr(value) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(node, t)));
}

/// The higher-order ops the interpreter runs (everything else outside `aten` is refused).
pub const HIGHER_ORDER_OPS: [&str; 3] =
    ["wrap_with_set_grad_enabled", "wrap_with_autocast", "cond"];

/// `_operator` arithmetic on SymInts the interpreter computes itself.
const SYM_OPS: [&str; 6] = ["add", "sub", "mul", "floordiv", "mod", "neg"];

/// The schema's `ScalarType` code → c10's (`c10/core/ScalarType.h`).
fn c10_scalar_type(code: i64) -> Option<i64> {
    Some(match code {
        1..=12 => code - 1,
        13 => 15,
        _ => return None,
    })
}

/// The schema's `MemoryFormat` → c10's (Contiguous, ChannelsLast, ChannelsLast3d, Preserve).
fn c10_memory_format(code: i64) -> Option<i64> {
    Some(match code {
        1 => 0,
        2 => 2,
        3 => 3,
        4 => 1,
        _ => return None,
    })
}

/// The schema's `Layout` → c10's (Strided, Sparse, SparseCsr, SparseCsc, SparseBsr, SparseBsc, Mkldnn).
fn c10_layout(code: i64) -> Option<i64> {
    Some(match code {
        7 => 0,
        1 => 1,
        2 => 3,
        3 => 4,
        4 => 5,
        5 => 6,
        6 => 2,
        _ => return None,
    })
}

/// The first op that the program calls and the interpreter refuses, with why, in the words of
/// [`super::policy`]: an op outside `aten` (custom and library namespaces run arbitrary registered
/// code, and most are absent from libtorch) unless `trusted` (`--trust-model`); an `aten` op that the
/// TorchScript policy refuses (file access, printing, unchecked memory such as `as_strided`) unless
/// `trusted`; a higher-order op or `_operator` the interpreter does not run, trusted or not.
/// The third field: whether `--trust-model` would let it run.
pub fn refused_op(program: &Program, trusted: bool) -> Option<(String, String, bool)> {
    let mut nodes = Vec::new();
    if let Some(bad) = walk(&program.graph, trusted, &mut nodes) {
        return Some(bad);
    }
    if trusted {
        return None;
    }
    super::policy::refused_ops(&nodes)
        .into_iter()
        .next()
        .map(|r| {
            let place = if r.module.is_empty() {
                String::new()
            } else {
                format!(" in module `{}`", r.module)
            };
            (r.op, format!("{}{place}", r.why), true)
        })
}

/// Checks the targets of `graph` (subgraphs included) and collects its ops as the TorchScript policy
/// reads them: the qualified name, a schema listing the string arguments (the policy refuses one named
/// like a file or a path) and the innermost module of the node's `nn_module_stack`.
fn walk(
    graph: &Graph,
    trusted: bool,
    nodes: &mut Vec<super::GraphNode>,
) -> Option<(String, String, bool)> {
    for node in &graph.nodes {
        match Target::parse(&node.target) {
            Some(Target::Op { namespace, name, overload }) => {
                if namespace != "aten" && !trusted {
                    return Some((
                        node.target.clone(),
                        format!("an op from the unknown namespace `{namespace}`"),
                        true,
                    ));
                }
                let strings: Vec<String> = node
                    .inputs
                    .iter()
                    .filter(|a| matches!(a.arg, Argument::AsString(_) | Argument::AsStrings(_)))
                    .map(|a| format!("str {}", a.name))
                    .collect();
                let module = node
                    .metadata
                    .get("nn_module_stack")
                    .and_then(|s| s.rsplit(';').next())
                    .and_then(|frame| frame.split(',').nth(1))
                    .unwrap_or_default()
                    .to_string();
                nodes.push(super::GraphNode {
                    op: format!("{namespace}::{name}"),
                    schema: format!("{namespace}::{name}.{overload}({})", strings.join(", ")),
                    method: "forward".into(),
                    module,
                });
            }
            Some(Target::HigherOrder(name)) if HIGHER_ORDER_OPS.contains(&name.as_str()) => {}
            Some(Target::SymOp(name)) if SYM_OPS.contains(&name.as_str()) => {}
            _ => {
                return Some((
                    node.target.clone(),
                    format!(
                        "trainlint runs the aten ops and the higher-order ops {} of a torch.export program",
                        HIGHER_ORDER_OPS.join(", ")
                    ),
                    false,
                ))
            }
        }
        for input in &node.inputs {
            if let Argument::AsGraph(g) = &input.arg {
                if let Some(bad) = walk(&g.graph, trusted, nodes) {
                    return Some(bad);
                }
            }
        }
    }
    None
}

/// A value name as the line format carries it: a token without spaces, commas or colons.
fn name(n: &str) -> Result<&str> {
    let ok = !n.is_empty()
        && n != "_"
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(n)
    } else {
        Err(Pt2RunError::ValueName(n.to_string()))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unknown(what: &'static str, code: i64) -> Pt2RunError {
    Pt2RunError::UnknownCode { what, code }
}

/// One serialized value in the line format; `rn` renames (a subgraph's values get a prefix).
fn enc(arg: &Argument, rn: &dyn Fn(&str) -> Result<String>) -> Result<String> {
    let list = |items: Vec<String>| items.join(",");
    Ok(match arg {
        Argument::AsNone(_) => "N".into(),
        Argument::AsTensor(t) => format!("T:{}", rn(&t.name)?),
        Argument::AsInt(i) => format!("I:{i}"),
        Argument::AsFloat(f) => format!("F:{:?}", f.0),
        Argument::AsBool(b) => format!("B:{}", u8::from(*b)),
        Argument::AsInts(v) => format!("IL:{}", list(v.iter().map(i64::to_string).collect())),
        Argument::AsFloats(v) => format!(
            "FL:{}",
            list(v.iter().map(|f| format!("{:?}", f.0)).collect())
        ),
        Argument::AsBools(v) => format!(
            "BL:{}",
            list(v.iter().map(|b| u8::from(*b).to_string()).collect())
        ),
        Argument::AsSymInt(SymIntArgument::AsName(n)) => format!("S:{}", rn(n)?),
        Argument::AsSymInt(SymIntArgument::AsInt(i)) => format!("I:{i}"),
        Argument::AsSymInts(v) => {
            let items: Result<Vec<String>> = v
                .iter()
                .map(|e| match e {
                    SymIntArgument::AsName(n) => Ok(format!("n{}", rn(n)?)),
                    SymIntArgument::AsInt(i) => Ok(format!("i{i}")),
                })
                .collect();
            format!("SL:{}", list(items?))
        }
        Argument::AsTensors(v) => {
            let items: Result<Vec<String>> = v.iter().map(|t| rn(&t.name)).collect();
            format!("TL:{}", list(items?))
        }
        Argument::AsOptionalTensors(v) => {
            let items: Result<Vec<String>> = v
                .iter()
                .map(|t| match t {
                    OptionalTensorArgument::AsTensor(t) => rn(&t.name),
                    OptionalTensorArgument::AsNone(_) => Ok("_".into()),
                })
                .collect();
            format!("OTL:{}", list(items?))
        }
        Argument::AsOptionalTensor(OptionalTensorArgument::AsTensor(t)) => {
            format!("OT:{}", rn(&t.name)?)
        }
        Argument::AsOptionalTensor(OptionalTensorArgument::AsNone(_)) => "OT:_".into(),
        Argument::AsScalarType(c) => format!(
            "ST:{}",
            c10_scalar_type(*c).ok_or(unknown("scalar type", *c))?
        ),
        Argument::AsMemoryFormat(c) => format!(
            "MF:{}",
            c10_memory_format(*c).ok_or(unknown("memory format", *c))?
        ),
        Argument::AsLayout(c) => {
            format!("LY:{}", c10_layout(*c).ok_or(unknown("layout", *c))?)
        }
        Argument::AsDevice(d) => {
            if d.kind != "cpu" {
                return Err(Pt2RunError::Device(d.kind.clone()));
            }
            "DV:cpu".into()
        }
        Argument::AsString(s) => format!("STR:{}", percent_encode(s)),
        other => {
            let json = format!("{other:?}");
            let kind = json.split(['(', ' ']).next().unwrap_or("?");
            return Err(Pt2RunError::ArgumentKind(kind.to_string()));
        }
    })
}

/// The program in `pt2_shim.cpp`'s line format, or why it cannot run. `trusted`: `--trust-model`.
pub fn lower(program: &Program, trusted: bool) -> Result<String> {
    if let Some((op, why, trust_helps)) = refused_op(program, trusted) {
        return Err(Pt2RunError::Refused {
            op,
            why,
            trust_helps,
        });
    }
    let mut lines = Vec::new();
    let mut users: usize = 0;
    for spec in &program.signature.input_specs {
        let weight_input = match spec {
            InputSpec::Parameter { arg, .. }
            | InputSpec::Buffer { arg, .. }
            | InputSpec::TensorConstant { arg, .. } => &arg.name,
            InputSpec::UserInput { arg } => {
                users += 1;
                let Argument::AsTensor(t) = arg else {
                    return Err(Pt2RunError::UserInputNotTensor);
                };
                let meta = program
                    .graph
                    .tensor_values
                    .get(&t.name)
                    .ok_or_else(|| Pt2RunError::NoInputMetadata(t.name.clone()))?;
                let dtype =
                    c10_scalar_type(meta.dtype).ok_or(unknown("scalar type", meta.dtype))?;
                let mut dims = Vec::new();
                for d in &meta.sizes {
                    dims.push(match d {
                        SymInt::AsInt(i) => i.to_string(),
                        SymInt::AsExpr(e) => symbol(&e.expr_str)
                            .ok_or_else(|| Pt2RunError::InputDim(e.expr_str.clone()))?,
                    });
                }
                lines.push(format!(
                    "input user {} {dtype} {} {}",
                    name(&t.name)?,
                    dims.len(),
                    dims.join(" ")
                ));
                continue;
            }
            other => return Err(Pt2RunError::GraphInput(format!("{other:?}"))),
        };
        let index = program
            .weights
            .iter()
            .position(|w| &w.graph_input == weight_input)
            .ok_or_else(|| Pt2RunError::NoWeightForInput(weight_input.clone()))?;
        lines.push(format!("input weight {} {index}", name(weight_input)?));
    }
    if users != 1 {
        return Err(Pt2RunError::UserInputs(users));
    }
    for (sym, range) in &program.range_constraints {
        lines.push(format!(
            "range {} {} {}",
            name(sym)?,
            range.min_val.unwrap_or(0),
            range.max_val.unwrap_or(-1)
        ));
    }
    lower_nodes(&program.graph.nodes, "", &mut lines)?;
    let mut outputs: usize = 0;
    for spec in &program.signature.output_specs {
        match spec {
            OutputSpec::UserOutput {
                arg: Argument::AsTensor(t),
            } => {
                outputs += 1;
                lines.push(format!("output user {}", name(&t.name)?));
            }
            OutputSpec::BufferMutation { buffer_name, .. } => {
                return Err(Pt2RunError::BufferMutation(buffer_name.clone()))
            }
            other => return Err(Pt2RunError::GraphOutput(format!("{other:?}"))),
        }
    }
    if outputs != 1 {
        return Err(Pt2RunError::Outputs(outputs));
    }
    Ok(lines.join("\n") + "\n")
}

/// `s77` of `Symbol('s77', positive=True, integer=True)`.
fn symbol(expr: &str) -> Option<String> {
    let rest = expr.strip_prefix("Symbol('")?;
    let (sym, _) = rest.split_once('\'')?;
    name(sym).ok().map(str::to_string)
}

fn lower_nodes(nodes: &[Node], prefix: &str, lines: &mut Vec<String>) -> Result<()> {
    let rn = &prefixed(prefix.to_string());
    for (i, node) in nodes.iter().enumerate() {
        let node_name = node.name.clone().unwrap_or_else(|| format!("node{i}"));
        let target = Target::parse(&node.target)
            .ok_or_else(|| Pt2RunError::NodeTarget(node.target.clone()))?;
        let mut toks: Vec<String> = match &target {
            Target::Op {
                namespace,
                name: op,
                overload,
            } => vec![
                "node".into(),
                format!("{namespace}::{op}"),
                overload.clone(),
                node.inputs.len().to_string(),
            ],
            Target::SymOp(op) => vec!["symop".into(), op.clone(), node.inputs.len().to_string()],
            Target::HigherOrder(hop) if hop == "cond" => {
                lower_cond(node, &format!("{prefix}{}", name(&node_name)?), lines)?;
                continue;
            }
            Target::HigherOrder(hop) => {
                lower_wrap(node, hop, &format!("{prefix}{}", name(&node_name)?), lines)?;
                continue;
            }
        };
        let in_node = |e| Pt2RunError::InNode {
            target: node.target.clone(),
            source: Box::new(e),
        };
        for input in &node.inputs {
            toks.push(name(&input.name)?.to_string());
            toks.push(enc(&input.arg, rn).map_err(in_node)?);
        }
        toks.push(node.outputs.len().to_string());
        for out in &node.outputs {
            toks.push(enc(out, rn).map_err(in_node)?);
        }
        lines.push(toks.join(" "));
    }
    Ok(())
}

/// A subgraph's renaming: its values get the prefix `sp` so they cannot clash with the outer graph's.
fn prefixed(sp: String) -> impl Fn(&str) -> Result<String> {
    move |n: &str| name(n).map(|n| format!("{sp}{n}"))
}

/// Every value of `args` in the line format, renamed by `rn`.
fn enc_all(args: &[Argument], rn: &dyn Fn(&str) -> Result<String>) -> Result<Vec<String>> {
    args.iter().map(|a| enc(a, rn)).collect()
}

fn higher_order(hop: &str, problem: &'static str) -> Pt2RunError {
    Pt2RunError::HigherOrder {
        hop: hop.to_string(),
        problem,
    }
}

fn hop_argument(hop: &'static str, problem: &'static str) -> Pt2RunError {
    Pt2RunError::HigherOrderArgument { hop, problem }
}

fn lower_wrap(node: &Node, hop: &str, path: &str, lines: &mut Vec<String>) -> Result<()> {
    let rn = &prefixed(
        path.rsplit_once('/')
            .map_or(String::new(), |(p, _)| format!("{p}/")),
    );
    let ins = &node.inputs;
    let gi = ins
        .iter()
        .position(|a| matches!(a.arg, Argument::AsGraph(_)))
        .ok_or_else(|| higher_order(hop, "without a subgraph"))?;
    let Argument::AsGraph(sub) = &ins[gi].arg else {
        unreachable!()
    };
    let mut head: Vec<String> = match (hop, &ins[..gi]) {
        ("wrap_with_set_grad_enabled", [en]) => match en.arg {
            Argument::AsBool(b) => vec!["set_grad".into(), u8::from(b).to_string()],
            _ => return Err(hop_argument("wrap_with_set_grad_enabled", "no mode")),
        },
        ("wrap_with_autocast", [device, dtype, enabled, cache]) => {
            match &device.arg {
                Argument::AsString(d) if d == "cpu" => {}
                Argument::AsDevice(d) if d.kind == "cpu" => {}
                other => return Err(Pt2RunError::Autocast(format!("{other:?}"))),
            }
            let dtype = match dtype.arg {
                Argument::AsScalarType(c) => c10_scalar_type(c),
                Argument::AsNone(_) => Some(15), // CPU autocast's default, bfloat16
                _ => None,
            }
            .ok_or(hop_argument("wrap_with_autocast", "bad dtype"))?;
            let flag = |a: &Argument| match a {
                Argument::AsBool(b) => Ok(u8::from(*b).to_string()),
                _ => Err(hop_argument("wrap_with_autocast", "bad flag")),
            };
            vec![
                "autocast".into(),
                dtype.to_string(),
                flag(&enabled.arg)?,
                flag(&cache.arg)?,
            ]
        }
        _ => return Err(higher_order(hop, "with unexpected arguments")),
    };
    let inner = format!("{path}/");
    let rin = &prefixed(inner.clone());
    let args: Result<Vec<String>> = ins[gi + 1..].iter().map(|a| enc(&a.arg, rn)).collect();
    let args = args?;
    let subin = enc_all(&sub.graph.inputs, rin)?;
    let mut toks = vec!["hop".to_string()];
    toks.append(&mut head);
    toks.push(args.len().to_string());
    toks.extend(args);
    toks.push(subin.len().to_string());
    toks.extend(subin);
    lines.push(toks.join(" "));
    lower_nodes(&sub.graph.nodes, &inner, lines)?;
    let subout = enc_all(&sub.graph.outputs, rin)?;
    let outs = enc_all(&node.outputs, rn)?;
    let mut toks = vec!["endhop".to_string(), subout.len().to_string()];
    toks.extend(subout);
    toks.push(outs.len().to_string());
    toks.extend(outs);
    lines.push(toks.join(" "));
    Ok(())
}

fn lower_cond(node: &Node, path: &str, lines: &mut Vec<String>) -> Result<()> {
    let rn = &prefixed(
        path.rsplit_once('/')
            .map_or(String::new(), |(p, _)| format!("{p}/")),
    );
    let [pred, t, f, ops] = &node.inputs[..] else {
        return Err(higher_order("cond", "with unexpected arguments"));
    };
    let (Argument::AsGraph(t), Argument::AsGraph(f)) = (&t.arg, &f.arg) else {
        return Err(higher_order("cond", "without its two branches"));
    };
    let outs = enc_all(&node.outputs, rn)?;
    lines.push(format!(
        "cond {} {} {} {}",
        enc(&pred.arg, rn)?,
        enc(&ops.arg, rn)?,
        outs.len(),
        outs.join(" ")
    ));
    for (branch, which) in [(t, "true"), (f, "false")] {
        let inner = format!("{path}/{which}/");
        let rin = &prefixed(inner.clone());
        let subin = enc_all(&branch.graph.inputs, rin)?;
        lines.push(format!("branch {} {}", subin.len(), subin.join(" ")));
        lower_nodes(&branch.graph.nodes, &inner, lines)?;
        let subout = enc_all(&branch.graph.outputs, rin)?;
        lines.push(format!("endbranch {} {}", subout.len(), subout.join(" ")));
    }
    lines.push("endcond".into());
    Ok(())
}

/// A lowered program, compiled by the shim: every op's schema resolved. Runs on any weight array in
/// the order of [`Program::weights`].
pub struct Interpreter {
    raw: NonNull<RawProgram>,
    weights: usize,
}

// SAFETY: the compiled program is immutable after compile (each run keeps its values in a local
// environment), and libtorch's dispatcher is thread-safe; trainlint runs one forward at a time anyway.
unsafe impl Send for Interpreter {}
// SAFETY: `tl_pt2_run_observed` only reads the compiled program (each run keeps its values in its own
// environment and stack; `OperatorHandle::callBoxed` is const and the dispatcher thread-safe), so
// runs from several threads on one program do not race on it.
unsafe impl Sync for Interpreter {}

impl Drop for Interpreter {
    fn drop(&mut self) {
        // SAFETY: `raw` came from tl_pt2_compile and is freed once, here.
        unsafe { tl_pt2_free(self.raw.as_ptr()) }
    }
}

impl Interpreter {
    /// Lowers and compiles `program`; refuses ops outside the allowlist unless `trusted`.
    pub fn new(program: &Program, trusted: bool) -> Result<Interpreter> {
        Interpreter::compile(lower(program, trusted)?, program.weights.len())
    }

    /// Compiles a lowered program that takes `weights` weight tensors.
    fn compile(text: String, weights: usize) -> Result<Interpreter> {
        let c_text = CString::new(text).map_err(|_| Pt2RunError::NulInProgram)?;
        let mut raw: *mut RawProgram = std::ptr::null_mut();
        // SAFETY: `c_text` is NUL-terminated and outlives the call; `raw` is written on success only.
        check(unsafe { tl_pt2_compile(c_text.as_ptr(), &mut raw) })?;
        let raw = NonNull::new(raw).ok_or(Pt2RunError::NoProgram)?;
        Ok(Interpreter { raw, weights })
    }

    /// The program's output on `input`, with `weights` bound to its parameters, buffers and constants
    /// (live: BatchNorm's running stats move in place in train mode). `grad`: record for autograd.
    pub fn run(&self, input: &Tensor, weights: &[&Tensor], grad: bool) -> Result<Tensor> {
        self.run_with(input, weights, grad, None)
    }

    /// As [`Interpreter::run`], handing `observe` each top-level node's index and first output (when a
    /// tensor) as it runs.
    fn run_observed(
        &self,
        input: &Tensor,
        weights: &[&Tensor],
        grad: bool,
        observe: &mut dyn FnMut(usize, Tensor),
    ) -> Result<Tensor> {
        self.run_with(input, weights, grad, Some(observe))
    }

    fn run_with(
        &self,
        input: &Tensor,
        weights: &[&Tensor],
        grad: bool,
        observe: Option<&mut dyn FnMut(usize, Tensor)>,
    ) -> Result<Tensor> {
        if weights.len() != self.weights {
            return Err(Pt2RunError::WeightCount {
                given: weights.len(),
                takes: self.weights,
            });
        }
        let ptrs: Vec<*const torch_sys::C_tensor> = weights.iter().map(|w| w.as_ptr()).collect();
        let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
        let callback: Option<ObserveCb> = observe.is_some().then_some(observe_value);
        let mut f = observe;
        let ctx = f.as_mut().map_or(std::ptr::null_mut(), |f| {
            f as *mut &mut dyn FnMut(usize, Tensor) as *mut std::ffi::c_void
        });
        // SAFETY: the tensors behind `input` and `ptrs` are alive for the call (borrowed); the shim
        // reads them and writes `out` with a `new at::Tensor` on success, taken once by from_ptr.
        // `ctx` is null without a callback, else it points at `f`, borrowed for this call only, and
        // `observe_value` is the only code that reads it.
        check(unsafe {
            tl_pt2_run_observed(
                self.raw.as_ptr(),
                input.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                c_int::from(grad),
                ctx,
                callback,
                &mut out,
            )
        })?;
        if out.is_null() {
            return Err(Pt2RunError::ReturnedNothing);
        }
        // SAFETY: see above: a fresh heap tensor, owned by nobody else.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

// ---------------------------------------------------------------------------------------------
// The program behind the `Model` port.

/// Shape-only ops the output's range passes through (as the TorchScript side's `passes_range_through`).
const PASSES_RANGE_THROUGH: [&str; 15] = [
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "permute",
    "transpose",
    "clone",
    "to",
    "dropout",
    "feature_dropout",
    "type_as",
    "detach",
    "alias",
];

/// One parameter, buffer or constant of a [`Pt2Model`], in the order of the main program's weights.
struct Slot {
    fqn: String,
    role: WeightRole,
    /// The first FQN of a tied group holds the tensor; the others point at it.
    tied_to: Option<usize>,
}

/// The mode a program was exported in, as its ops say: `batch_norm(training=…)`, `dropout(train=…)`.
#[derive(Clone, Debug, PartialEq)]
enum Specialised {
    /// No op depends on the mode: the program runs the same in train and eval mode.
    Neither,
    /// The first op that takes `training=True` / `train=True`.
    Train(String),
    /// The first op that takes `training=False` (and none takes True).
    Eval(String),
}

/// One compiled program of the archive and what the module view needs of its top-level nodes.
struct Compiled {
    interp: Interpreter,
    /// The main program's slot of each of this program's weights.
    slot_of: Vec<usize>,
    specialised: Specialised,
    /// Per top-level node: its op (`aten::linear`) and its module calls (keys and frames, root first).
    ops: Vec<String>,
    calls: Vec<Vec<(String, super::pt2::ModuleFrame)>>,
    /// The graph, its signature and the graph input each weight binds, for the module graph's
    /// dataflow.
    graph: Graph,
    signature: super::pt2::GraphSignature,
    weight_inputs: Vec<String>,
}

impl Compiled {
    fn new(program: Program, slots: &[Slot], trusted: bool) -> Result<Compiled> {
        let interp = Interpreter::new(&program, trusted)?;
        let slot_of = program
            .weights
            .iter()
            .map(|w| {
                slots
                    .iter()
                    .position(|s| s.fqn == w.fqn)
                    .ok_or_else(|| Pt2RunError::NotInMainProgram(w.fqn.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let specialised = specialised(&program.graph);
        let mut ops = Vec::new();
        let mut calls = Vec::new();
        for node in &program.graph.nodes {
            ops.push(match Target::parse(&node.target) {
                Some(Target::Op {
                    namespace, name, ..
                }) => format!("{namespace}::{name}"),
                Some(t) => t.short(),
                None => node.target.clone(),
            });
            let label = node.name.as_deref().unwrap_or(&node.target);
            calls.push(
                node.metadata
                    .get("nn_module_stack")
                    .map(|s| super::pt2::parse_module_calls(label, s))
                    .transpose()?
                    .unwrap_or_default(),
            );
        }
        Ok(Compiled {
            interp,
            slot_of,
            specialised,
            ops,
            calls,
            weight_inputs: program
                .weights
                .iter()
                .map(|w| w.graph_input.clone())
                .collect(),
            graph: program.graph,
            signature: program.signature,
        })
    }

    /// The innermost module path of top-level node `i` ("" for the root).
    fn module_of(&self, i: usize) -> &str {
        self.calls
            .get(i)
            .and_then(|c| c.last())
            .map_or("", |(_, f)| f.path.as_str())
    }

    fn run(
        &self,
        tensors: &[Tensor],
        input: &Tensor,
        grad: bool,
        observe: Option<&mut dyn FnMut(usize, Tensor)>,
    ) -> Result<Tensor, CheckError> {
        let weights: Vec<&Tensor> = self.slot_of.iter().map(|&i| &tensors[i]).collect();
        let input = input.to_device(Device::Cpu);
        match observe {
            None => self.interp.run(&input, &weights, grad),
            Some(f) => self.interp.run_observed(&input, &weights, grad, f),
        }
        .map_err(|e| CheckError::Model(e.to_string()))
    }
}

/// The programs of one archive, shared by the model and its copies.
struct Programs {
    /// Exported in train mode by trainlint's exporter (as the user exported it otherwise).
    model: Compiled,
    eval: Option<Compiled>,
    as_saved: Option<Compiled>,
    /// The saved training flags are all on (Some(true)), all off (Some(false)) or mixed (None); on
    /// when the archive does not say.
    saved_flags: Option<bool>,
}

impl Programs {
    /// The program that runs `mode`, or why none can.
    fn for_mode(&self, mode: Mode) -> Result<&Compiled, CheckError> {
        let skip = |why: String| Err(CheckError::Skip(why));
        match mode {
            Mode::Train => match &self.model.specialised {
                Specialised::Eval(op) => skip(format!(
                    "the .pt2 program was exported in eval mode ({op} runs in eval mode), so no \
                     train-mode forward can be run from it; export the model in train mode"
                )),
                _ => Ok(&self.model),
            },
            Mode::Eval => match (&self.eval, &self.model.specialised) {
                (Some(eval), _) => Ok(eval),
                (None, Specialised::Train(op)) => skip(format!(
                    "the .pt2 program is specialised to train mode ({op} runs in train mode), so no \
                     eval-mode forward can be run from it; trainlint's exporter adds the eval program"
                )),
                (None, _) => Ok(&self.model),
            },
            Mode::AsSaved => match (&self.as_saved, self.saved_flags) {
                (Some(p), _) => Ok(p),
                (None, Some(true)) => self.for_mode(Mode::Train),
                (None, Some(false)) => self.for_mode(Mode::Eval),
                (None, None) => skip(
                    "the model was saved with mixed training flags and the .pt2 holds no program \
                     exported as saved"
                        .into(),
                ),
            },
        }
    }
}

/// A `torch.export` archive behind trainlint's [`Model`] port.
///
/// A program is specialised to the mode it was exported in. trainlint's exporter writes the module
/// exported in train mode (`model`), in eval mode (`eval`) and, when the saved flags are mixed, as
/// saved (`as_saved`); each mode runs its program on the same weights. A single program exported in
/// train mode with BatchNorm or dropout cannot run an eval-mode forward: those checks skip with that
/// reason instead of guessing.
pub struct Pt2Model {
    programs: Arc<Programs>,
    slots: Arc<Vec<Slot>>,
    tensors: Vec<Tensor>,
    modules: Vec<ModuleInfo>,
    output: OutputActivation,
}

impl Pt2Model {
    /// Compiles `program` alone (refusing ops outside the allowlist unless `trusted`).
    #[cfg(test)]
    pub fn new(program: Program, trusted: bool) -> Result<Pt2Model> {
        Pt2Model::from_archive(
            Archive {
                model: program,
                eval: None,
                as_saved: None,
                modules: None,
            },
            trusted,
        )
    }

    /// Compiles every program of `archive` and takes the main program's weights (the other programs'
    /// copies of the same weights are dropped: every mode runs on one set of tensors).
    pub fn from_archive(archive: Archive, trusted: bool) -> Result<Pt2Model> {
        let Archive {
            mut model,
            eval,
            as_saved,
            modules: saved_modules,
        } = archive;
        let output = output_activation(&model);
        let mut slots = Vec::new();
        let mut tensors = Vec::new();
        for (i, w) in std::mem::take(&mut model.weights).into_iter().enumerate() {
            let tied_to = tensors[..i]
                .iter()
                .position(|t: &Tensor| same_tensor(t, &w.tensor));
            slots.push(Slot {
                fqn: w.fqn.clone(),
                role: w.role,
                tied_to,
            });
            tensors.push(w.tensor.shallow_clone());
            // keep the metadata (graph input, dtype, ...) for lowering, without the values
            model.weights.push(super::pt2::Weight {
                tensor: Tensor::new(),
                ..w
            });
        }
        let frames = model.modules.clone();
        let compile = |p: Program| Compiled::new(p, &slots, trusted);
        let model = compile(model)?;
        let eval = eval.map(compile).transpose()?;
        let as_saved = as_saved.map(compile).transpose()?;
        let modules: Vec<ModuleInfo> = match &saved_modules {
            Some(saved) => saved
                .iter()
                .map(|m| ModuleInfo {
                    path: m.path.clone(),
                    kind: m.kind.clone(),
                    training: m.training,
                })
                .collect(),
            None => module_infos(&frames, !matches!(model.specialised, Specialised::Eval(_))),
        };
        let saved_flags = if modules.iter().all(|m| m.training) {
            Some(true)
        } else if modules.iter().all(|m| !m.training) {
            Some(false)
        } else {
            None
        };
        Ok(Pt2Model {
            programs: Arc::new(Programs {
                model,
                eval,
                as_saved,
                saved_flags,
            }),
            slots: Arc::new(slots),
            tensors,
            modules,
            output,
        })
    }

    /// A model of its own for a check run in isolation (`run::Isolation::model_copy`): the same
    /// compiled programs, every weight cloned (tied groups stay one tensor).
    pub fn independent_copy(&self) -> Pt2Model {
        Pt2Model {
            programs: Arc::clone(&self.programs),
            slots: Arc::clone(&self.slots),
            tensors: copy_weights(&self.slots, &self.tensors),
            modules: self.modules.clone(),
            output: self.output.clone(),
        }
    }

    fn named(&self, tensors: &[Tensor], parameters: bool) -> Vec<NamedTensor> {
        named(&self.slots, tensors, parameters)
    }

    /// The weights for a forward that must leave this model's state alone: parameters shared,
    /// buffers and constants copied.
    fn scratch_weights(&self) -> Vec<Tensor> {
        self.slots
            .iter()
            .zip(&self.tensors)
            .map(|(s, t)| match s.role {
                WeightRole::Parameter => t.shallow_clone(),
                _ => t.detach().copy(),
            })
            .collect()
    }
}

/// Modules from the programs' `nn_module_stack` (the root first), when the archive has no module list:
/// their training flags are the mode the program was exported in.
fn module_infos(frames: &[super::pt2::ModuleFrame], training: bool) -> Vec<ModuleInfo> {
    let mut modules: Vec<ModuleInfo> = Vec::new();
    for frame in frames {
        if modules.iter().all(|m| m.path != frame.path) {
            modules.push(ModuleInfo {
                path: frame.path.clone(),
                kind: frame.kind().to_string(),
                training,
            });
        }
    }
    if modules.first().is_none_or(|m| !m.path.is_empty()) {
        modules.insert(
            0,
            ModuleInfo {
                path: String::new(),
                kind: "Module".into(),
                training,
            },
        );
    }
    modules
}

/// Parameters (or buffers) with their FQNs; a tied group is listed once, under its first FQN (as
/// `named_parameters()` does).
fn named(slots: &[Slot], tensors: &[Tensor], parameters: bool) -> Vec<NamedTensor> {
    slots
        .iter()
        .zip(tensors)
        .filter(|(s, _)| s.tied_to.is_none())
        .filter(|(s, _)| match s.role {
            WeightRole::Parameter => parameters,
            WeightRole::Buffer { .. } => !parameters,
            WeightRole::Constant => false,
        })
        .map(|(s, t)| (s.fqn.clone(), t.shallow_clone()))
        .collect()
}

fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    a.data_ptr() == b.data_ptr() && a.size() == b.size() && a.stride() == b.stride()
}

/// The mode `graph` was exported in, from the first op that takes a `training` / `train` flag.
fn specialised(graph: &Graph) -> Specialised {
    let mut eval = None;
    if let Some(found) = first_mode_op(graph, &mut eval) {
        return Specialised::Train(found);
    }
    eval.map_or(Specialised::Neither, Specialised::Eval)
}

/// The first op (short name) that takes `training=True` / `train=True`; `eval` gets the first that
/// takes False.
fn first_mode_op(graph: &Graph, eval: &mut Option<String>) -> Option<String> {
    for node in &graph.nodes {
        for input in &node.inputs {
            let short = || Target::parse(&node.target).map_or(node.target.clone(), |t| t.short());
            match &input.arg {
                Argument::AsBool(flag) if input.name == "training" || input.name == "train" => {
                    if *flag {
                        return Some(short());
                    }
                    if eval.is_none() {
                        *eval = Some(short());
                    }
                }
                Argument::AsGraph(sub) => {
                    if let Some(op) = first_mode_op(&sub.graph, eval) {
                        return Some(op);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// The op that produces the program's output, through shape-only ops; clamp bounds when constant.
fn output_activation(program: &Program) -> OutputActivation {
    let unknown = OutputActivation {
        op: "unknown".into(),
        clamp: None,
    };
    let Some(mut value) = program.signature.output_specs.iter().find_map(|s| match s {
        OutputSpec::UserOutput {
            arg: Argument::AsTensor(t),
        } => Some(t.name.clone()),
        _ => None,
    }) else {
        return unknown;
    };
    for _ in 0..64 {
        let Some(node) = program.graph.nodes.iter().find(|n| {
            n.outputs
                .iter()
                .any(|o| matches!(o, Argument::AsTensor(t) if t.name == value))
        }) else {
            return unknown;
        };
        let op = match Target::parse(&node.target) {
            Some(Target::Op { name, .. }) => name.trim_end_matches('_').to_string(),
            Some(Target::HigherOrder(name)) => name,
            _ => return unknown,
        };
        if PASSES_RANGE_THROUGH.contains(&op.as_str()) {
            if let Some(Argument::AsTensor(t)) = node.inputs.first().map(|a| &a.arg) {
                value = t.name.clone();
                continue;
            }
        }
        let bound = |names: &[&str]| {
            node.inputs
                .iter()
                .find(|a| names.contains(&a.name.as_str()))
                .and_then(|a| match &a.arg {
                    Argument::AsFloat(f) => Some(f.0),
                    Argument::AsInt(i) => Some(*i as f64),
                    _ => None,
                })
        };
        let clamp = match op.as_str() {
            "hardtanh" => Some((
                bound(&["min_val"]).unwrap_or(-1.0),
                bound(&["max_val"]).unwrap_or(1.0),
            )),
            "clamp" => {
                let (lo, hi) = (bound(&["min"]), bound(&["max"]));
                (lo.is_some() || hi.is_some())
                    .then(|| (lo.unwrap_or(f64::NAN), hi.unwrap_or(f64::NAN)))
            }
            _ => None,
        };
        return OutputActivation { op, clamp };
    }
    unknown
}

/// Fresh tensors for a trainable copy: parameters as new leaves (requires_grad as stored), buffers
/// and constants cloned; a tied group stays one tensor.
fn copy_weights(slots: &[Slot], tensors: &[Tensor]) -> Vec<Tensor> {
    let mut out: Vec<Tensor> = Vec::with_capacity(tensors.len());
    for (slot, t) in slots.iter().zip(tensors) {
        let copy = match slot.tied_to {
            Some(first) => out[first].shallow_clone(),
            None => {
                let c = t.detach().copy();
                if slot.role == WeightRole::Parameter {
                    c.set_requires_grad(t.requires_grad())
                } else {
                    c
                }
            }
        };
        out.push(copy);
    }
    out
}

impl Model for Pt2Model {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        Ok(self.named(&self.tensors, true))
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        Ok(self.named(&self.tensors, false))
    }
    fn modules(&self) -> &[ModuleInfo] {
        &self.modules
    }
    fn output_activation(&self) -> Result<OutputActivation, CheckError> {
        Ok(self.output.clone())
    }
    /// Eval mode, no gradients, no state change: buffers run on copies.
    fn predict(&self, input: &Tensor) -> Result<Tensor, CheckError> {
        let program = self.programs.for_mode(Mode::Eval)?;
        program.run(&self.scratch_weights(), input, false, None)
    }
    fn trainable_copy(&self) -> Result<Box<dyn TrainableModel>, CheckError> {
        Ok(Box::new(Pt2Copy {
            programs: Arc::clone(&self.programs),
            slots: Arc::clone(&self.slots),
            tensors: copy_weights(&self.slots, &self.tensors),
        }))
    }
    fn module_graph(&self, sample: Option<&Tensor>) -> Result<ModuleGraph, CheckError> {
        // The eval program's graph; without one, the main program's (the shapes then say why not).
        let eval = self.programs.for_mode(Mode::Eval);
        let program = eval.as_ref().map_or(&self.programs.model, |p| *p);
        let (mut graph, last_node) = module_graph(program, &self.slots);
        if let Some(x) = sample {
            let mut last: std::collections::HashMap<usize, Vec<i64>> = Default::default();
            let mut observe = |i: usize, t: Tensor| {
                last.insert(i, t.size());
            };
            let ran =
                eval.and_then(|p| p.run(&self.scratch_weights(), x, false, Some(&mut observe)));
            match ran {
                Ok(_) => fill_shapes(&mut graph, &last_node, &last),
                Err(e) => graph.shape_error = e.to_string(),
            }
        }
        Ok(graph)
    }
    fn predict_tracing_non_finite(
        &self,
        input: &Tensor,
    ) -> Result<(Tensor, Option<NonFiniteOp>), CheckError> {
        let program = self.programs.for_mode(Mode::Eval)?;
        let mut first: Option<usize> = None;
        let mut observe = |i: usize, t: Tensor| {
            if first.is_none()
                && t.is_floating_point()
                && t.numel() > 0
                && !t
                    .f_isfinite()
                    .and_then(|f| f.f_all())
                    .is_ok_and(|a| a.int64_value(&[]) != 0)
            {
                first = Some(i);
            }
        };
        let out = program.run(&self.scratch_weights(), input, false, Some(&mut observe))?;
        let found = first.map(|i| NonFiniteOp {
            op: program.ops[i].clone(),
            module: program.module_of(i).to_string(),
            source: String::new(),
        });
        Ok((out, found))
    }
    fn layer_scales(&self, input: &Tensor) -> Result<Vec<LayerScale>, CheckError> {
        let program = self.programs.for_mode(Mode::Train)?;
        let mut scales = Vec::new();
        let mut observe = |i: usize, t: Tensor| {
            if LAYER_OPS.contains(&program.ops[i].as_str())
                && t.is_floating_point()
                && t.numel() > 0
            {
                if let Ok(rms) = t
                    .f_to_kind(tch::Kind::Double)
                    .and_then(|d| d.f_square())
                    .and_then(|d| d.f_mean(tch::Kind::Double))
                    .and_then(|d| d.f_sqrt())
                {
                    scales.push(LayerScale {
                        rms: rms.double_value(&[]),
                        op: program.ops[i].clone(),
                        module: program.module_of(i).to_string(),
                    });
                }
            }
        };
        // A copy's buffers: BatchNorm normalises with the batch's statistics, and nothing moves here.
        let _ = program.run(&self.scratch_weights(), input, false, Some(&mut observe))?;
        Ok(scales)
    }
}

/// The ops whose outputs `layer_scales` measures (as the TorchScript side's `is_layer_op`).
const LAYER_OPS: [&str; 14] = [
    "aten::linear",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::_convolution",
    "aten::convolution",
    "aten::conv_transpose1d",
    "aten::conv_transpose2d",
    "aten::conv_transpose3d",
    "aten::addmm",
    "aten::matmul",
    "aten::mm",
    "aten::bmm",
    "aten::einsum",
];

/// An independent copy of a [`Pt2Model`]'s weights, run by the same compiled programs.
struct Pt2Copy {
    programs: Arc<Programs>,
    slots: Arc<Vec<Slot>>,
    tensors: Vec<Tensor>,
}

impl TrainableModel for Pt2Copy {
    fn forward(&mut self, input: &Tensor, mode: Mode) -> Result<Tensor, CheckError> {
        self.programs
            .for_mode(mode)?
            .run(&self.tensors, input, true, None)
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        Ok(named(&self.slots, &self.tensors, true))
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        Ok(named(&self.slots, &self.tensors, false))
    }
}

// ---------------------------------------------------------------------------------------------
// The module view: call sites from `nn_module_stack`, dataflow from the graph.

/// The module-level dataflow graph of `program`: one call site per distinct `nn_module_stack` key
/// chain (two calls of one module, or the iterations of an unrolled loop, are two call sites), edges
/// between leaf calls through the ops outside any leaf module, and the weights the nodes read.
fn module_graph(program: &Compiled, slots: &[Slot]) -> (ModuleGraph, Vec<Option<usize>>) {
    use std::collections::{BTreeMap, HashMap};
    let mut graph = ModuleGraph::default();
    let mut call_of: HashMap<String, usize> = HashMap::new();
    // (parent call, module, the Python stack of the call's first node) -> call site. The export unrolls
    // loops: a module called again from the same line of code on data that comes from its previous call
    // (`for _ in range(3): x = self.refine(x)`) is one call site run repeatedly, as TorchScript's graph
    // has it; a call from another line, or on data of its own (`cat([self.enc(a), self.enc(b)])`, a
    // siamese encoder), is another call site.
    let mut site_of: HashMap<(Option<usize>, &str, &str), usize> = HashMap::new();
    // per top-level node: its innermost call site (None: the root's own ops), and every call it sits in
    let mut node_call: Vec<Option<usize>> = Vec::new();
    let mut node_calls: Vec<Vec<usize>> = Vec::new();
    // value -> the top-level node that defines it
    let mut producer: HashMap<&str, usize> = HashMap::new();
    // per call site: the last top-level node run inside it
    let mut last_node: Vec<Option<usize>> = Vec::new();
    for (i, frames) in program.calls.iter().enumerate() {
        let node = &program.graph.nodes[i];
        let trace = node.metadata.get("stack_trace").map_or("", String::as_str);
        let mut chain = String::new();
        let mut parent = None;
        let mut ids = Vec::new();
        for (key, frame) in frames.iter().skip_while(|(_, f)| f.path.is_empty()) {
            chain.push(';');
            chain.push_str(key);
            let id = match call_of.get(&chain) {
                Some(&id) => id,
                None => {
                    let site = (parent, frame.path.as_str(), trace);
                    let repeated = site_of.get(&site).copied().filter(|&c| {
                        !trace.is_empty()
                            && depends_on(i, c, &program.graph.nodes, &producer, &node_calls)
                    });
                    let id = match repeated {
                        Some(id) => {
                            graph.calls[id].in_loop = true;
                            id
                        }
                        None => {
                            graph.calls.push(CallSite::leaf(
                                graph.calls.len(),
                                parent,
                                &frame.path,
                                frame.kind(),
                            ));
                            last_node.push(None);
                            site_of.insert(site, graph.calls.len() - 1);
                            graph.calls.len() - 1
                        }
                    };
                    call_of.insert(chain.clone(), id);
                    id
                }
            };
            last_node[id] = Some(i);
            ids.push(id);
            parent = Some(id);
        }
        node_call.push(parent);
        node_calls.push(ids);
        for o in &node.outputs {
            for name in o.defined_names() {
                producer.insert(name, i);
            }
        }
    }
    let parents: Vec<usize> = graph.calls.iter().filter_map(|c| c.parent).collect();
    for p in parents {
        graph.calls[p].leaf = false;
    }
    // The weights each graph input binds, and the user input.
    let mut weight_of: HashMap<&str, usize> = HashMap::new();
    for (input, &slot) in program.weight_inputs.iter().zip(&program.slot_of) {
        weight_of.insert(input.as_str(), slot);
    }
    // value -> its sources (None: the model input) and whether every path from each passed `detach`
    type Sources = BTreeMap<Option<usize>, bool>;
    let mut sources: HashMap<&str, Sources> = HashMap::new();
    for spec in &program.signature.input_specs {
        if let InputSpec::UserInput {
            arg: Argument::AsTensor(t),
        } = spec
        {
            sources.insert(t.name.as_str(), BTreeMap::from([(None, false)]));
        }
    }
    let mut edges: BTreeMap<(Option<usize>, Option<usize>), bool> = BTreeMap::new();
    let mut add_edge = |from: Option<usize>, to: Option<usize>, detached: bool| {
        edges
            .entry((from, to))
            .and_modify(|d| *d = *d && detached)
            .or_insert(detached);
    };
    let mut read_slots = std::collections::BTreeSet::new();
    for (i, node) in program.graph.nodes.iter().enumerate() {
        let mut incoming: Sources = BTreeMap::new();
        for input in &node.inputs {
            for name in input.arg.tensor_names() {
                if let Some(&slot) = weight_of.get(name) {
                    read_slots.insert(slot);
                }
                for (&src, &det) in sources.get(name).into_iter().flatten() {
                    incoming
                        .entry(src)
                        .and_modify(|d| *d = *d && det)
                        .or_insert(det);
                }
            }
        }
        let call = node_call.get(i).copied().flatten();
        let leaf = call.filter(|&c| graph.calls[c].leaf);
        let out: Sources = match leaf {
            Some(l) => {
                for (&src, &det) in &incoming {
                    if src != Some(l) {
                        add_edge(src, Some(l), det);
                    }
                }
                BTreeMap::from([(Some(l), false)])
            }
            None if program.ops[i] == "aten::detach" => {
                incoming.into_keys().map(|s| (s, true)).collect()
            }
            None => incoming,
        };
        for o in &node.outputs {
            for name in o.defined_names() {
                sources.insert(name, out.clone());
            }
        }
    }
    for spec in &program.signature.output_specs {
        if let OutputSpec::UserOutput { arg } = spec {
            for name in arg.tensor_names() {
                for (&src, &det) in sources.get(name).into_iter().flatten() {
                    add_edge(src, None, det);
                }
            }
        }
    }
    graph.edges = edges
        .into_iter()
        .map(|((from, to), detached)| Edge { from, to, detached })
        .collect();
    // A tied group is read when any of its names is.
    for (i, s) in slots.iter().enumerate() {
        let root = s.tied_to.unwrap_or(i);
        if read_slots.contains(&i) || read_slots.contains(&root) {
            graph.reads.insert(s.fqn.clone());
        }
    }
    for (i, s) in slots.iter().enumerate() {
        if let Some(root) = s.tied_to {
            if read_slots.contains(&i) {
                graph.reads.insert(slots[root].fqn.clone());
            }
        }
    }
    (graph, last_node)
}

/// Whether top-level node `i` reads, directly or through earlier nodes, a value computed inside call
/// site `call`.
fn depends_on(
    i: usize,
    call: usize,
    nodes: &[Node],
    producer: &std::collections::HashMap<&str, usize>,
    node_calls: &[Vec<usize>],
) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![i];
    while let Some(n) = stack.pop() {
        for input in &nodes[n].inputs {
            for name in input.arg.tensor_names() {
                let Some(&j) = producer.get(name) else {
                    continue;
                };
                if node_calls[j].contains(&call) {
                    return true;
                }
                if seen.insert(j) {
                    stack.push(j);
                }
            }
        }
    }
    false
}

/// Each call site's output shape: that of the last top-level node run inside it.
fn fill_shapes(
    graph: &mut ModuleGraph,
    last_node: &[Option<usize>],
    shapes: &std::collections::HashMap<usize, Vec<i64>>,
) {
    for (call, node) in graph.calls.iter_mut().zip(last_node) {
        if let Some(shape) = node.and_then(|n| shapes.get(&n)) {
            call.shape = format!("{shape:?}");
        }
    }
}

#[cfg(test)]
mod tests;
