//! TorchScript models behind the checks' `Model` port, through the C++ shim in `shim.cpp`.
//!
//! Ownership across the boundary: a module belongs to one [`Handle`] (freed on drop); every tensor the
//! shim hands over is a `new at::Tensor` that [`Tensor::from_ptr`] takes over (tch deletes it); every
//! string the shim returns is a [`ShimString`] (freed on drop). Callbacks get a context pointer that is
//! a `&mut Vec` borrowed for the duration of the one call that invokes them.
use std::cell::{OnceCell, Ref, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use tch::{Device, Tensor};

pub mod archive;
#[cfg(test)]
mod fuzz;
mod pickle;
pub mod policy;
pub mod pt2;
pub mod pt2_run;
pub use archive::ArchiveRecord;
use trainlint_checks::graph::ModuleGraph;
use trainlint_checks::ports::{LayerScale, Mode, NamedTensor, NonFiniteOp};
use trainlint_checks::train::side_by_side;
use trainlint_checks::{CheckError, Model, ModuleInfo, OutputActivation, TrainableModel};

#[repr(C)]
struct RawModule {
    _private: [u8; 0],
}

/// A NUL-terminated string the shim allocated with `malloc` (an error message or an op name), owned
/// here and freed exactly once, on drop.
///
/// Only the shim creates these: the externs below return `Option<ShimString>` where C returns a
/// possibly-NULL `char*` (`#[repr(transparent)]` over `NonNull` keeps the ABI of a nullable pointer).
#[repr(transparent)]
struct ShimString(NonNull<c_char>);

impl ShimString {
    fn to_text(&self) -> String {
        // SAFETY: the pointer came from the shim's `dup_message`: non-null, NUL-terminated, and alive
        // until `drop` frees it; `&self` keeps it alive for this read.
        unsafe { CStr::from_ptr(self.0.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for ShimString {
    fn drop(&mut self) {
        // SAFETY: the string was malloc'd by the shim and is owned by this value alone (the type is not
        // Clone/Copy and never built from a borrowed pointer), so it is freed once, with free().
        unsafe { tl_free_string(self.0.as_ptr()) }
    }
}

type TensorCb = extern "C" fn(*mut c_void, *const c_char, *mut torch_sys::C_tensor);
type ModuleCb = extern "C" fn(*mut c_void, *const c_char, *const c_char, c_int);
type RecordCb = extern "C" fn(*mut c_void, *const c_char, usize, u64, *const c_char, usize);
type NodeCb =
    extern "C" fn(*mut c_void, *const c_char, *const c_char, *const c_char, *const c_char);

// Every entry returning `Option<ShimString>` returns None on success and the error message otherwise.
// SAFETY (of the block): these declarations are the only ones: build.rs generates the C header that
// shim.cpp includes from them (with the callback types above), so a definition that differs does not
// compile; `tl_silence_warnings` takes nothing and has no precondition, so it is `safe`.
unsafe extern "C" {
    fn tl_free_string(s: *mut c_char);
    safe fn tl_silence_warnings();
    fn tl_load(
        path: *const c_char,
        device: *const c_char,
        out: *mut *mut RawModule,
    ) -> Option<ShimString>;
    fn tl_free(m: *mut RawModule);
    fn tl_deepcopy(m: *const RawModule, out: *mut *mut RawModule) -> Option<ShimString>;
    fn tl_generator_state(out: *mut *mut torch_sys::C_tensor) -> Option<ShimString>;
    fn tl_set_generator_state(state: *const torch_sys::C_tensor) -> Option<ShimString>;
    fn tl_forward(
        m: *mut RawModule,
        input: *const torch_sys::C_tensor,
        mode: c_int,
        grad: c_int,
        output_key: *const c_char,
        out: *mut *mut torch_sys::C_tensor,
    ) -> Option<ShimString>;
    fn tl_predict(
        m: *mut RawModule,
        input: *const torch_sys::C_tensor,
        output_key: *const c_char,
        out: *mut *mut torch_sys::C_tensor,
    ) -> Option<ShimString>;
    fn tl_named_parameters(
        m: *const RawModule,
        ctx: *mut c_void,
        cb: TensorCb,
    ) -> Option<ShimString>;
    fn tl_named_buffers(m: *const RawModule, ctx: *mut c_void, cb: TensorCb) -> Option<ShimString>;
    fn tl_named_modules(m: *const RawModule, ctx: *mut c_void, cb: ModuleCb) -> Option<ShimString>;
    fn tl_archive_records(
        path: *const c_char,
        max_read: u64,
        ctx: *mut c_void,
        cb: RecordCb,
    ) -> Option<ShimString>;
    fn tl_graph_nodes(m: *const RawModule, ctx: *mut c_void, cb: NodeCb) -> Option<ShimString>;
    fn tl_check_output(
        m: *const RawModule,
        output_key: *const c_char,
        selector: *mut c_int,
    ) -> Option<ShimString>;
    fn tl_output_op(
        m: *const RawModule,
        output_key: *const c_char,
        op: *mut Option<ShimString>,
        lo: *mut f64,
        hi: *mut f64,
    ) -> Option<ShimString>;
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    /// The path is there but cannot be read: permission denied, a symlink loop, an I/O error.
    #[error("cannot read model file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// The path is a folder, a device or a pipe.
    #[error("model path {path} is {what}, not a TorchScript model file")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{path} is not a TorchScript model ({reason}); export it with torch.jit.script(model).save(...) or torch.jit.trace(model, example).save(...)")]
    NotTorchScript { path: PathBuf, reason: String },
    #[error("cannot load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// A `torch.export` program that was read but cannot run here.
    #[error("cannot run the torch.export program {path}: {source}")]
    Pt2Run {
        path: PathBuf,
        source: Box<pt2_run::Pt2RunError>,
    },
    #[error("{path} cannot be read as a torch.export program: {source}")]
    Pt2 {
        path: PathBuf,
        source: pt2::Pt2Error,
    },
    #[error("device {0} requested but CUDA is not available to libtorch on this machine")]
    NoCuda(String),
    #[error("invalid device {0:?}: use cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error("model.output contains a NUL byte")]
    OutputNul,
    /// `model.output` names no output of this model; the message says which ones exist.
    #[error("{0}")]
    Output(String),
}

/// What the shim could not do for a loaded module: libtorch's reason, or why there was no module to
/// ask. Behind the checks' port it is a model error (`CheckError::Model`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShimError {
    /// libtorch's message, cut down to what a user can act on ([`user_message`]).
    #[error("{0}")]
    Libtorch(String),
    /// The module could not be loaded again (a large model's copy held it): the check error's text.
    #[error("{0}")]
    NotLoaded(String),
    /// The shim's JSON module graph does not read as one: serde's reason.
    #[error("the module graph is malformed: {0}")]
    MalformedGraph(String),
}

impl From<ShimError> for CheckError {
    fn from(e: ShimError) -> Self {
        CheckError::Model(e.to_string())
    }
}

/// The shim's error, if any, as a message for the user.
fn check(err: Option<ShimString>) -> Result<(), ShimError> {
    match err {
        None => Ok(()),
        Some(msg) => Err(ShimError::Libtorch(user_message(&msg.to_text()))),
    }
}

/// Why the checks that train run one at a time on this audit's model ([`LoadedModel::side_by_side`]).
#[derive(Debug, thiserror::Error)]
pub enum OneAtATime {
    #[error("one thread: the checks that train run one at a time")]
    OneThread,
    #[error("fewer than two checks that train are selected")]
    FewerThanTwoSelected,
    #[error("no model")]
    NoModel,
    #[error("an exported program trains one check at a time")]
    Exported,
    #[error("on a GPU the checks that train run one at a time")]
    Gpu,
    #[error("the model file is {mb} MB (side by side from below {below_mb} MB): the checks that train run one at a time")]
    Large { mb: u64, below_mb: u64 },
    /// The graph could not be read for its random ops.
    #[error(transparent)]
    Graph(#[from] ShimError),
    #[error("the model's forward calls ops outside libtorch that may draw random numbers ({0}), so the checks that train run one at a time")]
    RandomOpsOutsideLibtorch(String),
}

/// A libtorch message cut down to what a user can act on: one line, no C++ stack.
pub fn user_message(msg: &str) -> String {
    // With TORCH_SHOW_CPP_STACKTRACES (or from some code paths) libtorch appends the C++ stack:
    // "Exception raised from f at file.cpp:12 (most recent call first):" then "frame #0: ..." lines.
    let msg = msg.split("Exception raised from").next().unwrap_or(msg);
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("frame #"))
        .collect();
    // The TorchScript interpreter prints a traceback and puts the cause on the last line.
    if msg.contains("Traceback of TorchScript") {
        if let Some(last) = lines.last() {
            return last.to_string();
        }
    }
    // miniz and friends append paragraphs of advice; the first sentence carries the cause. Messages can
    // span lines (source excerpts); the first two carry the cause.
    let joined = lines.iter().take(2).copied().collect::<Vec<_>>().join(": ");
    joined
        .split(". This ")
        .next()
        .unwrap_or(&joined)
        .to_string()
}

extern "C" fn collect_tensor(ctx: *mut c_void, name: *const c_char, t: *mut torch_sys::C_tensor) {
    // SAFETY: `ctx` is the `&mut Vec<NamedTensor>` that `Handle::tensors` passed for this very call and
    // does not touch until the call returns; `name` is a NUL-terminated string the shim keeps alive
    // during the callback (copied here); `t` is a `new at::Tensor` whose ownership the shim hands over,
    // taken exactly once by `Tensor::from_ptr`.
    let (out, name, tensor) = unsafe {
        (
            &mut *(ctx as *mut Vec<NamedTensor>),
            CStr::from_ptr(name).to_string_lossy().into_owned(),
            Tensor::from_ptr(t),
        )
    };
    out.push((name, tensor));
}

extern "C" fn collect_module(
    ctx: *mut c_void,
    name: *const c_char,
    kind: *const c_char,
    training: c_int,
) {
    // SAFETY: `ctx` is the `&mut Vec<ModuleInfo>` that `Handle::modules` passed for this very call;
    // `name` and `kind` are NUL-terminated strings alive for the duration of the callback (copied here).
    let (out, path, kind) = unsafe {
        (
            &mut *(ctx as *mut Vec<ModuleInfo>),
            CStr::from_ptr(name).to_string_lossy().into_owned(),
            CStr::from_ptr(kind).to_string_lossy().into_owned(),
        )
    };
    out.push(ModuleInfo {
        path,
        kind,
        training: training != 0,
    });
}

/// One node of a graph the model can run: its op (`aten::from_file`), the op's schema when it has one,
/// and where it sits: the method (or a compilation unit function's qualified name) and the module path
/// ("" for the root, or for a function that no module owns).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    pub op: String,
    pub schema: String,
    pub method: String,
    pub module: String,
}

extern "C" fn collect_record(
    ctx: *mut c_void,
    name: *const c_char,
    name_len: usize,
    size: u64,
    bytes: *const c_char,
    len: usize,
) {
    // SAFETY: `ctx` is the `&mut Vec<ArchiveRecord>` that `archive_records` passed for this very call;
    // `name` points to `name_len` readable bytes and `bytes` (when not null) to `len`, both alive for
    // the callback (copied here). A record of length 0 may come with a null pointer: not dereferenced.
    let (out, name, bytes) = unsafe {
        (
            &mut *(ctx as *mut Vec<ArchiveRecord>),
            std::slice::from_raw_parts(name as *const u8, name_len).to_vec(),
            (!bytes.is_null()).then(|| {
                if len == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(bytes as *const u8, len).to_vec()
                }
            }),
        )
    };
    out.push(ArchiveRecord { name, size, bytes });
}

extern "C" fn collect_node(
    ctx: *mut c_void,
    op: *const c_char,
    schema: *const c_char,
    method: *const c_char,
    module: *const c_char,
) {
    // SAFETY: `ctx` is the `&mut Vec<GraphNode>` that `Handle::graph_nodes` passed for this very call;
    // the four strings are NUL-terminated and alive for the duration of the callback (copied here).
    let (out, node) = unsafe {
        let text = |p: *const c_char| CStr::from_ptr(p).to_string_lossy().into_owned();
        (
            &mut *(ctx as *mut Vec<GraphNode>),
            GraphNode {
                op: text(op),
                schema: text(schema),
                method: text(method),
                module: text(module),
            },
        )
    };
    out.push(node);
}

/// Source records and pickles above this size are listed without their bytes, and refused by the scan:
/// a healthy model's largest (`data.pkl` of a model with thousands of tensors) is a few hundred KB.
pub const MAX_SCANNED_RECORD_BYTES: u64 = 64 << 20;

/// Every record of the TorchScript archive at `path`, read with libtorch's own archive reader and
/// without running anything: `__setstate__` methods run *during* `torch::jit::load`, and libtorch
/// trusts each storage's declared size, so both have to be checked before it. Errors are those
/// `TorchScriptModel::load` would give for the same file.
pub fn archive_records(path: &Path) -> Result<Vec<ArchiveRecord>, ModelError> {
    check_model_file(path)?;
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(ModelError::Missing(path.to_path_buf()));
    };
    let mut out: Vec<ArchiveRecord> = Vec::new();
    let ctx = &mut out as *mut Vec<ArchiveRecord> as *mut c_void;
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `ctx` points to `out`, which outlives
    // the call and is not used otherwise until it returns; `collect_record` reads it as that type.
    check(unsafe {
        tl_archive_records(
            c_path.as_ptr(),
            MAX_SCANNED_RECORD_BYTES,
            ctx,
            collect_record,
        )
    })
    .map_err(|reason| classify_load_error(path, reason.to_string()))?;
    // A checkpoint or another zip is not TorchScript: say so, as loading it would, before any scan.
    let names: Vec<String> = out
        .iter()
        .map(|r| format!("archive/{}", String::from_utf8_lossy(&r.name)))
        .collect();
    if zip_layout(names.iter().map(String::as_str)) != ZipLayout::TorchScript {
        return Err(classify_load_error(path, String::new()));
    }
    Ok(out)
}

/// An owned TorchScript module: the pointer is non-null, came from `tl_load` or `tl_deepcopy`, and is
/// freed once, on drop. Send but not Sync: a module may move to another thread with its handle (a
/// check's worker thread), but is never used from two threads at once.
struct Handle(*mut RawModule);

// SAFETY: the handle owns its module alone (see above); libtorch modules carry no thread affinity, and
// moving the handle moves the only way to reach the module, so no two threads use it at once. Not
// Sync: `predict` changes the module's flags for the call behind `&self`.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `self.0` is the module this handle owns (see the type's invariant); no other handle
        // holds it, and nothing uses it after drop.
        unsafe { tl_free(self.0) }
    }
}

impl Handle {
    fn load(path: &CStr, device: &CStr) -> Result<Handle, ShimError> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: both strings are NUL-terminated and outlive the call; `raw` is a valid out-pointer
        // that the shim sets to a new module only on success, which the Handle then owns.
        unsafe { check(tl_load(path.as_ptr(), device.as_ptr(), &mut raw))? };
        Ok(Handle(raw))
    }

    /// What the shim's listing `list` hands to `cb` for this module, in order.
    ///
    /// # Safety
    /// `cb` must read its context pointer as exactly a `Vec<T>`.
    unsafe fn collect<T, C>(
        &self,
        list: unsafe extern "C" fn(*const RawModule, *mut c_void, C) -> Option<ShimString>,
        cb: C,
    ) -> Result<Vec<T>, ShimError> {
        let mut out: Vec<T> = Vec::new();
        let ctx = &mut out as *mut Vec<T> as *mut c_void;
        // SAFETY: `self.0` is a live module; `ctx` points to `out`, which outlives the call and is not
        // used otherwise until it returns; `cb` reads `ctx` as exactly that type (the caller's promise).
        check(unsafe { list(self.0, ctx, cb) })?;
        Ok(out)
    }

    fn tensors(&self, parameters: bool) -> Result<Vec<NamedTensor>, CheckError> {
        let list = if parameters {
            tl_named_parameters
        } else {
            tl_named_buffers
        };
        // SAFETY: `collect_tensor` reads its context as a `Vec<NamedTensor>`.
        Ok(unsafe { self.collect(list, collect_tensor) }?)
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, ShimError> {
        // SAFETY: `collect_module` reads its context as a `Vec<ModuleInfo>`.
        unsafe { self.collect(tl_named_modules, collect_module) }
    }

    fn graph_nodes(&self) -> Result<Vec<GraphNode>, ShimError> {
        // SAFETY: `collect_node` reads its context as a `Vec<GraphNode>`. The shim walks copies of the
        // graphs; nothing runs and the module is not changed.
        unsafe { self.collect(tl_graph_nodes, collect_node) }
    }

    /// A forward that sets `mode` on the module and leaves it so (for trained copies).
    /// `grad`: None keeps the caller's grad mode. It draws from the check's own generator when the
    /// check has one ([`side_by_side::drawing`]).
    fn forward(
        &mut self,
        input: &Tensor,
        mode: Mode,
        grad: Option<bool>,
        output_key: &CStr,
    ) -> Result<Tensor, CheckError> {
        let mode = match mode {
            Mode::AsSaved => -1,
            Mode::Eval => 0,
            Mode::Train => 1,
        };
        let grad = grad.map_or(-1, c_int::from);
        side_by_side::drawing(&CpuGenerator, || {
            let mut out = std::ptr::null_mut();
            // SAFETY: `self.0` is a live module, borrowed mutably; `input` is a live tensor and
            // `output_key` a NUL-terminated string, both outliving the call; on success the shim
            // stores a `new at::Tensor` in `out`, whose ownership `Tensor::from_ptr` takes, once.
            unsafe {
                check(tl_forward(
                    self.0,
                    input.as_ptr(),
                    mode,
                    grad,
                    output_key.as_ptr(),
                    &mut out,
                ))?;
                Ok(Tensor::from_ptr(out))
            }
        })
    }

    /// An eval-mode forward without gradients. The shim flips the training flags for the call and
    /// restores each module's own flag afterwards (exceptions included), so behind `&self` nothing
    /// observable changes: parameters, buffers (eval-mode BatchNorm reads its stats) and flags stay.
    /// An eval-mode forward without gradients that leaves the module as it was: its training flags
    /// (restored by the shim) and its buffers (see `keeping_buffers`).
    fn predict(&self, input: &Tensor, output_key: &CStr) -> Result<Tensor, CheckError> {
        side_by_side::drawing(&CpuGenerator, || {
            self.keeping_buffers(|h| h.predict_moving_buffers(input, output_key))
        })
    }

    /// Runs `f` and puts every buffer back as it was, even when `f` fails. A model traced in train
    /// mode keeps `batch_norm(training=True)` in its graph, so even an eval-mode forward moves its
    /// running statistics.
    fn keeping_buffers<T>(
        &self,
        f: impl FnOnce(&Handle) -> Result<T, CheckError>,
    ) -> Result<T, CheckError> {
        let buffers = self.tensors(false)?;
        let saved = buffers
            .iter()
            .map(|(_, b)| b.f_detach_copy())
            .collect::<Result<Vec<_>, _>>()?;
        let result = f(self);
        let _guard = tch::no_grad_guard();
        for ((_, b), s) in buffers.iter().zip(&saved) {
            b.shallow_clone().f_copy_(s)?;
        }
        result
    }

    fn predict_moving_buffers(
        &self,
        input: &Tensor,
        output_key: &CStr,
    ) -> Result<Tensor, CheckError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `self.0` is a live module; the shim's change to it is undone before it returns and
        // no other reference into the module is in use meanwhile (Handle is neither Send nor Sync).
        // `input` and `output_key` outlive the call; on success `out` holds a `new at::Tensor` that
        // `Tensor::from_ptr` takes over, once.
        unsafe {
            check(tl_predict(
                self.0,
                input.as_ptr(),
                output_key.as_ptr(),
                &mut out,
            ))
            .map_err(CheckError::from)?;
            Ok(Tensor::from_ptr(out))
        }
    }

    fn deepcopy(&self) -> Result<Handle, CheckError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `self.0` is a live module; on success `out` holds a new, independent module that the
        // returned Handle owns.
        unsafe { check(tl_deepcopy(self.0, &mut out)) }.map_err(CheckError::from)?;
        Ok(Handle(out))
    }

    /// Whether `output_key` names an output of forward, as far as the graph tells without running it.
    /// `Err((true, why))`: the selector names no output; `Err((false, why))`: the graph cannot be read.
    fn check_output(&self, output_key: &CStr) -> Result<(), (bool, ShimError)> {
        let mut selector: c_int = 0;
        // SAFETY: `self.0` is a live module, `output_key` a NUL-terminated string outliving the call,
        // and `selector` a valid out-pointer.
        check(unsafe { tl_check_output(self.0, output_key.as_ptr(), &mut selector) })
            .map_err(|why| (selector != 0, why))
    }

    /// The final op of the output `output_key` selects. Freezes a clone of the module: call it once.
    fn output_op(&self, output_key: &CStr) -> Result<OutputActivation, ShimError> {
        let (mut op, mut lo, mut hi) = (None, f64::NAN, f64::NAN);
        // SAFETY: `self.0` is a live module, `output_key` outlives the call, and the three out-pointers
        // are valid; on success the shim stores a malloc'd op name in `op`, owned (and freed) by it.
        check(unsafe { tl_output_op(self.0, output_key.as_ptr(), &mut op, &mut lo, &mut hi) })?;
        let name = op.map(|s| s.to_text()).unwrap_or_default();
        let op = name
            .rsplit("::")
            .next()
            .unwrap_or(&name)
            .trim_end_matches('_')
            .to_string();
        Ok(OutputActivation {
            op,
            clamp: (lo.is_finite() || hi.is_finite()).then_some((lo, hi)),
        })
    }
}

/// Keep libtorch's warnings out of the terminal: the report is trainlint's output.
pub fn silence_libtorch_warnings() {
    tl_silence_warnings()
}

pub fn parse_device(s: &str) -> Result<Device, ModelError> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Device::Cuda(n),
            None => return Err(ModelError::BadDevice(s.to_string())),
        },
    };
    if let Device::Cuda(n) = device {
        if !tch::Cuda::is_available() || n >= tch::Cuda::device_count() as usize {
            return Err(ModelError::NoCuda(s.to_string()));
        }
    }
    Ok(device)
}

/// A model at or above this size (parameters and buffers) is not kept in memory while a check trains
/// a copy of it: the copy is loaded again from the file, and so is the model when a check next reads
/// it. A 200 MB model trained with Adam then peaks near 4× its size (weights, gradients, two moments)
/// instead of 5× or, with a worker thread per check, 6×.
pub const RELOAD_ABOVE_BYTES: u64 = 64 << 20;

/// The checks that train run side by side on models (files) below this size: each holds its copy,
/// with gradients and Adam's moments about 4× the weights, so four checks hold ~16× a 16 MB model
/// (~260 MB) at once. A larger model keeps libtorch's threads busy on its own.
pub const SIDE_BY_SIDE_BELOW_BYTES: u64 = 16 << 20;

/// A TorchScript model loaded from a file. The file is only read.
pub struct TorchScriptModel {
    /// The module; None while a check trains the copy of a large model (loaded again when read).
    handle: RefCell<Option<Handle>>,
    source: Source,
    device: Device,
    output_key: CString,
    modules: Vec<ModuleInfo>,
    /// Resolving the final op freezes a clone of the module; several checks ask, it is done once.
    output_activation: OnceCell<Result<OutputActivation, ShimError>>,
    /// Parameter and buffer bytes, as loaded.
    bytes: u64,
    /// The size from which copies are loaded from the file instead of deep-copied.
    reload_above: u64,
    /// The module graph without shapes, walked once for the checks that read it.
    module_graph: OnceCell<Result<ModuleGraph, ShimError>>,
}

/// What loading the model again needs: the file, the device, and the file's identity when it was
/// first loaded, so a file changed during the audit is refused instead of audited half old, half new.
#[derive(Clone)]
struct Source {
    path: PathBuf,
    c_path: CString,
    c_device: CString,
    stamp: Option<Stamp>,
    /// What a module loaded again must pass, as the loader decided at the first load (`security`);
    /// None: loaded without a policy (the adapter's own tests).
    policy: Option<LoadPolicy>,
}

/// The load policy that `security` decides and passes in: loading the file again (a large model's
/// copies) is vetted as the first load was, without the adapter depending on the policy's owner.
#[derive(Clone, Copy)]
pub struct LoadPolicy {
    /// Vets the archive before libtorch reads it again.
    pub archive: fn(&Path) -> Result<(), Refusal>,
    /// Vets the graph of the module loaded again; None when the user trusts the model.
    pub graph: Option<GraphVet>,
}

/// What the load policy refuses, as its owner's error type (`security::UntrustedModel`), which the
/// adapter does not name.
pub type Refusal = Box<dyn std::error::Error + Send + Sync>;

/// Vets a loaded module's graph nodes: the error says what the policy refuses.
pub type GraphVet = fn(&Path, &[GraphNode]) -> Result<(), Refusal>;

/// A file's identity: device, inode, size, and modification and change times. The change time
/// cannot be set by a user, and any write or rename over the path changes one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(path).ok()?;
            Some(Stamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let m = std::fs::metadata(path).ok()?;
            Some(Stamp {
                dev: 0,
                ino: 0,
                len: m.len(),
                mtime: m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| (d.as_secs() as i64, d.subsec_nanos() as i64))
                    .unwrap_or_default(),
                ctime: (0, 0),
            })
        }
    }
}

impl Source {
    /// The module loaded again from the same, unchanged file, vetted as the first load was.
    fn load_again(&self) -> Result<Handle, CheckError> {
        let changed = || {
            CheckError::Other(format!(
                "the model file {} changed during the audit; run trainlint again",
                self.path.display()
            ))
        };
        if self.stamp.is_none() || Stamp::of(&self.path) != self.stamp {
            return Err(changed());
        }
        if let Some(policy) = &self.policy {
            (policy.archive)(&self.path).map_err(|e| CheckError::Other(e.to_string()))?;
        }
        let handle = Handle::load(&self.c_path, &self.c_device).map_err(CheckError::from)?;
        if Stamp::of(&self.path) != self.stamp {
            return Err(changed());
        }
        if let Some(vet_graph) = self.policy.and_then(|p| p.graph) {
            let nodes = handle.graph_nodes().map_err(CheckError::from)?;
            vet_graph(&self.path, &nodes).map_err(|e| CheckError::Other(e.to_string()))?;
        }
        Ok(handle)
    }
}

impl TorchScriptModel {
    /// `output` selects the prediction when forward returns a tuple (an index) or a dict (a key); a
    /// selector that names no output of the model is refused here, before any check runs.
    pub fn load(path: &Path, device: &str, output: &str) -> Result<Self, ModelError> {
        check_model_file(path)?;
        let dev = parse_device(device)?;
        let output_key = CString::new(output).map_err(|_| ModelError::OutputNul)?;
        // A path with a NUL byte is never a file (is_file above); parse_device accepted the device.
        let (Ok(c_path), Ok(c_device)) = (
            CString::new(path.as_os_str().as_encoded_bytes()),
            CString::new(device),
        ) else {
            return Err(ModelError::Missing(path.to_path_buf()));
        };
        let stamp = Stamp::of(path);
        let handle = Handle::load(&c_path, &c_device)
            .map_err(|reason| classify_load_error(path, reason.to_string()))?;
        let cannot_load = |reason: &dyn std::fmt::Display| ModelError::Load {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        handle
            .check_output(&output_key)
            .map_err(|(selector, reason)| {
                if selector {
                    ModelError::Output(reason.to_string())
                } else {
                    cannot_load(&reason)
                }
            })?;
        // Read the training flags now, as saved.
        let modules = handle.modules().map_err(|e| cannot_load(&e))?;
        let bytes = [true, false]
            .into_iter()
            .map(|p| handle.tensors(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cannot_load(&e))?
            .iter()
            .flatten()
            .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum();
        Ok(TorchScriptModel {
            handle: RefCell::new(Some(handle)),
            source: Source {
                path: path.to_path_buf(),
                c_path,
                c_device,
                stamp,
                policy: None,
            },
            device: dev,
            output_key,
            modules,
            output_activation: OnceCell::new(),
            bytes,
            reload_above: RELOAD_ABOVE_BYTES,
            module_graph: OnceCell::new(),
        })
    }

    /// Loading the model again (for a large model's copies) is vetted by `policy`, as the first load.
    pub(crate) fn vet_when_loaded_again(&mut self, policy: LoadPolicy) {
        self.source.policy = Some(policy);
    }

    /// [`TorchScriptModel::handle`] for a question to the shim: a failure to load the module again
    /// is the shim's error, in the check error's words.
    fn handle_for_shim(&self) -> Result<Ref<'_, Handle>, ShimError> {
        self.handle()
            .map_err(|e| ShimError::NotLoaded(e.to_string()))
    }

    /// The module, loaded again from the file when a large model's copy took its place.
    fn handle(&self) -> Result<Ref<'_, Handle>, CheckError> {
        if self.handle.borrow().is_none() {
            let handle = self.source.load_again()?;
            *self.handle.borrow_mut() = Some(handle);
        }
        Ref::filter_map(self.handle.borrow(), Option::as_ref)
            .map_err(|_| CheckError::Other("the model is not loaded".into()))
    }

    /// A module for a copy: a deep copy, or for a large model the module itself (`take`, when nothing
    /// else will read it) or the file loaded again, with the original released until it is read.
    fn module_for_copy(&self, take: bool) -> Result<Handle, CheckError> {
        if self.bytes < self.reload_above {
            return self.handle()?.deepcopy();
        }
        // What checks read of the model besides its tensors is resolved now, once: read after the
        // release, it would load the whole model again beside its training copy.
        let _ = Model::output_activation(self);
        let _ = self.graph_of(None);
        let held = self.handle.borrow_mut().take();
        match held {
            Some(handle) if take => Ok(handle),
            held => {
                drop(held);
                self.source.load_again()
            }
        }
    }
}

impl TorchScriptModel {
    /// An independent copy (the module deep-copied, flags as saved), for a check that runs on a
    /// thread of its own: nothing it does reaches this model.
    pub fn independent_copy(&self) -> Result<TorchScriptModel, CheckError> {
        let output_activation = OnceCell::new();
        if let Some(resolved) = self.output_activation.get() {
            let _ = output_activation.set(resolved.clone());
        }
        // The copy goes to a worker thread that this thread waits for: a large model moves there
        // rather than being copied, and is loaded again here when a later check reads it.
        Ok(TorchScriptModel {
            handle: RefCell::new(Some(self.module_for_copy(true)?)),
            source: self.source.clone(),
            device: self.device,
            output_key: self.output_key.clone(),
            modules: self.modules.clone(),
            output_activation,
            bytes: self.bytes,
            reload_above: self.reload_above,
            module_graph: self.module_graph.clone(),
        })
    }

    /// Every node of every graph the model can run (methods, hooks and functions of all modules, calls
    /// inlined, nested blocks included), for the side-effect scan. Runs no model code.
    pub fn graph_nodes(&self) -> Result<Vec<GraphNode>, ShimError> {
        self.handle_for_shim()?.graph_nodes()
    }
}

/// Whether `path` is a file trainlint can read, asked before libtorch reads it: libtorch's "open file
/// failed" would otherwise be taken for a format problem. Only a path that is not there "does not
/// exist"; a folder, a device, a symlink loop or a file without permission says what it is.
fn check_model_file(path: &Path) -> Result<(), ModelError> {
    let unreadable = |e: &std::io::Error| ModelError::Unreadable {
        path: path.to_path_buf(),
        reason: crate::data::paths::describe_io(e),
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(_) => ModelError::Unreadable {
                    path: path.to_path_buf(),
                    reason: "it is a symbolic link to a file that does not exist".into(),
                },
                Err(_) => ModelError::Missing(path.to_path_buf()),
            });
        }
        Err(e) => return Err(unreadable(&e)),
    };
    if meta.is_dir() {
        return Err(ModelError::NotAFile {
            path: path.to_path_buf(),
            what: "a folder",
        });
    }
    if !meta.is_file() {
        return Err(ModelError::NotAFile {
            path: path.to_path_buf(),
            what: "not a regular file (a device, a pipe or a socket)",
        });
    }
    std::fs::File::open(path).map_err(|e| unreadable(&e))?;
    Ok(())
}

/// Whether `path` holds a `torch.export` program: a `.pt2` zip by its content, or a file named `.pt2`
/// that is no TorchScript zip (a TorchScript model saved as `x.pt2` still loads as one).
pub fn is_exported_program(path: &Path) -> bool {
    let named_pt2 = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pt2"));
    let not_torchscript = || {
        std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| zip::ZipArchive::new(f).map_err(|e| e.to_string()))
            .map_or(true, |zip| {
                zip_layout(zip.file_names()) != ZipLayout::TorchScript
            })
    };
    pt2::is_pt2(path) || named_pt2 && not_torchscript()
}

/// Reads and compiles the `torch.export` archive at `path` (issue 25): the programs run through
/// libtorch's dispatcher, on the CPU. `trusted` (`--trust-model`) lets ops outside the allowlist run.
pub fn load_exported(
    path: &Path,
    device: &str,
    output: &str,
    trusted: bool,
) -> Result<pt2_run::Pt2Model, ModelError> {
    check_model_file(path)?;
    let cannot_run = |source| ModelError::Pt2Run {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    if parse_device(device)? != Device::Cpu {
        return Err(cannot_run(pt2_run::Pt2RunError::NotCpu(device.to_string())));
    }
    if !output.is_empty() {
        return Err(cannot_run(pt2_run::Pt2RunError::OutputSelector(
            output.to_string(),
        )));
    }
    let archive = pt2::read_archive(path).map_err(|source| ModelError::Pt2 {
        path: path.to_path_buf(),
        source,
    })?;
    pt2_run::Pt2Model::from_archive(archive, trusted).map_err(cannot_run)
}

/// The model a check reads, from either kind of file. (One per run: the size of the larger variant
/// does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum LoadedModel {
    TorchScript(TorchScriptModel),
    Exported(pt2_run::Pt2Model),
}

impl LoadedModel {
    fn inner(&self) -> &(dyn Model + Send) {
        match self {
            LoadedModel::TorchScript(m) => m,
            LoadedModel::Exported(m) => m,
        }
    }

    /// An independent copy for a check run on a thread of its own (see
    /// [`TorchScriptModel::independent_copy`]).
    pub fn independent_copy(&self) -> Result<LoadedModel, CheckError> {
        Ok(match self {
            LoadedModel::TorchScript(m) => LoadedModel::TorchScript(m.independent_copy()?),
            LoadedModel::Exported(m) => LoadedModel::Exported(m.independent_copy()),
        })
    }
}

impl LoadedModel {
    /// Whether checks may train copies of this model side by side ([`crate::run::SideBySide`]), or
    /// why not; when they may, the random ops of a training forward that draws random numbers
    /// (`Some`), or None when it draws none.
    ///
    /// libtorch has one global generator: the draws of two checks at once would interleave by chance,
    /// where each check's own must follow from the seed. So checks on a model that draws each keep a
    /// generator of their own ([`side_by_side::drawing`]), and its forwards run one at a time. A graph
    /// with dropout or stochastic depth draws nothing when the rate is 0 (ATen and torchvision return
    /// the input), as in torchvision's ViT and DenseNet by default: a train-mode forward of a copy on
    /// two samples of `sample` tells, by whether the generator moved, and such a model's forwards
    /// overlap too. Ops outside `aten` and `prim` may draw, or hold state of their own, unseen: such a
    /// model trains one check at a time. Only a TorchScript model (the `.pt2` interpreter runs one
    /// program at a time) on the CPU, below [`SIDE_BY_SIDE_BELOW_BYTES`].
    pub fn side_by_side(&self, sample: Option<&Tensor>) -> Result<Option<String>, OneAtATime> {
        let LoadedModel::TorchScript(m) = self else {
            return Err(OneAtATime::Exported);
        };
        if m.device != Device::Cpu {
            return Err(OneAtATime::Gpu);
        }
        if m.bytes >= SIDE_BY_SIDE_BELOW_BYTES.min(m.reload_above) {
            return Err(OneAtATime::Large {
                mb: m.bytes >> 20,
                below_mb: SIDE_BY_SIDE_BELOW_BYTES >> 20,
            });
        }
        let nodes = m.graph_nodes()?;
        let mut random: Vec<&str> = nodes
            .iter()
            .map(|n| n.op.as_str())
            .filter(|op| draws_random(op))
            .collect();
        random.sort_unstable();
        random.dedup();
        if random.is_empty() {
            return Ok(None);
        }
        let ops = random.join(", ");
        if !random.iter().all(|op| op.starts_with("aten::")) {
            return Err(OneAtATime::RandomOpsOutsideLibtorch(ops));
        }
        let Some(sample) = sample else {
            return Ok(Some(ops));
        };
        let moved = || -> Result<bool, CheckError> {
            const SEED: i64 = 0x5eed;
            let two = sample.f_narrow(0, 0, sample.size()[0].min(2))?;
            let mut copy = Model::trainable_copy(m)?;
            let _guard = tch::no_grad_guard();
            tch::manual_seed(SEED);
            let _ = copy.forward(&two, Mode::Train)?;
            let after = Tensor::f_rand([8], (tch::Kind::Float, Device::Cpu))?;
            tch::manual_seed(SEED);
            let untouched = Tensor::f_rand([8], (tch::Kind::Float, Device::Cpu))?;
            Ok(!after.f_equal(&untouched)?)
        };
        match moved() {
            Ok(false) => Ok(None),
            _ => Ok(Some(ops)),
        }
    }
}

/// libtorch's global CPU generator, whose state a check training side by side keeps as its own.
struct CpuGenerator;

impl side_by_side::GeneratorState for CpuGenerator {
    fn get(&self) -> Result<Tensor, CheckError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: on success the shim stores a `new at::Tensor` in `out`, whose ownership
        // `Tensor::from_ptr` takes, once.
        unsafe {
            check(tl_generator_state(&mut out)).map_err(CheckError::from)?;
            Ok(Tensor::from_ptr(out))
        }
    }
    fn set(&self, state: &Tensor) -> Result<(), CheckError> {
        // SAFETY: `state` is a live tensor outliving the call; the shim copies what it reads.
        check(unsafe { tl_set_generator_state(state.as_ptr()) }).map_err(CheckError::from)
    }
}

/// Whether an op draws from libtorch's global random generator (dropout and its variants, sampling,
/// in-place random fills, RReLU) or may (an op outside `aten` and `prim`).
fn draws_random(op: &str) -> bool {
    let Some((namespace, name)) = op.split_once("::") else {
        return true;
    };
    if namespace != "aten" && namespace != "prim" {
        return true;
    }
    let name = name.trim_end_matches('_');
    name.contains("dropout")
        || name.starts_with("rand")
        || name.starts_with("rrelu")
        || matches!(
            name,
            "bernoulli"
                | "normal"
                | "uniform"
                | "multinomial"
                | "exponential"
                | "geometric"
                | "cauchy"
                | "log_normal"
                | "random"
                | "poisson"
                | "binomial"
                | "_standard_gamma"
                | "_sample_dirichlet"
                | "_fused_dropout"
        )
}

impl Model for LoadedModel {
    fn device(&self) -> Device {
        self.inner().device()
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.inner().parameters()
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.inner().buffers()
    }
    fn modules(&self) -> &[ModuleInfo] {
        self.inner().modules()
    }
    fn output_activation(&self) -> Result<OutputActivation, CheckError> {
        self.inner().output_activation()
    }
    fn predict(&self, input: &Tensor) -> Result<Tensor, CheckError> {
        self.inner().predict(input)
    }
    fn trainable_copy(&self) -> Result<Box<dyn TrainableModel>, CheckError> {
        self.inner().trainable_copy()
    }
    fn module_graph(&self, sample: Option<&Tensor>) -> Result<ModuleGraph, CheckError> {
        self.inner().module_graph(sample)
    }
    fn predict_tracing_non_finite(
        &self,
        input: &Tensor,
    ) -> Result<(Tensor, Option<NonFiniteOp>), CheckError> {
        self.inner().predict_tracing_non_finite(input)
    }
    fn layer_scales(&self, input: &Tensor) -> Result<Vec<LayerScale>, CheckError> {
        self.inner().layer_scales(input)
    }
}

/// What a zip archive holds, from its entry names: a TorchScript model has `<name>/code/` and
/// `<name>/constants.pkl`; `torch.save` writes `<name>/data.pkl` and tensors, and no code.
#[derive(Debug, PartialEq)]
enum ZipLayout {
    TorchScript,
    Checkpoint,
    Other,
}

fn zip_layout<'a>(names: impl IntoIterator<Item = &'a str>) -> ZipLayout {
    let (mut code, mut data_pkl) = (false, false);
    for name in names {
        let mut parts = name.splitn(3, '/');
        let (Some(_top), Some(second)) = (parts.next(), parts.next()) else {
            continue;
        };
        match (second, parts.next()) {
            ("code", Some(_)) | ("constants.pkl", None) => code = true,
            ("data.pkl", None) => data_pkl = true,
            _ => {}
        }
    }
    match (code, data_pkl) {
        (true, _) => ZipLayout::TorchScript,
        (false, true) => ZipLayout::Checkpoint,
        (false, false) => ZipLayout::Other,
    }
}

/// libtorch's message without its `[enforce fail at inline_container.cc:180] . ` source prefix.
fn without_enforce_prefix(reason: &str) -> &str {
    match reason.strip_prefix("[enforce fail at ") {
        Some(rest) => rest
            .split_once(']')
            .map(|(_, tail)| tail.trim_start_matches([' ', '.']).trim_start())
            .unwrap_or(reason),
        None => reason,
    }
}

/// Why libtorch could not load a file that exists and is readable, in words: what the file is (not a
/// zip, a checkpoint, another zip, a damaged archive), from its bytes rather than from libtorch's text.
fn classify_load_error(path: &Path, reason: String) -> ModelError {
    let not_script = |why: String| ModelError::NotTorchScript {
        path: path.to_path_buf(),
        reason: why,
    };
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    match read {
        Err(e) => {
            return ModelError::Unreadable {
                path: path.to_path_buf(),
                reason: crate::data::paths::describe_io(&e),
            }
        }
        Ok(n) if n < 4 || &magic != b"PK\x03\x04" => return not_script(
            "it is not a TorchScript zip archive (a pickle, a truncated file or another format)"
                .into(),
        ),
        Ok(_) => {}
    }
    let reason = without_enforce_prefix(&reason).to_string();
    let layout = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| zip::ZipArchive::new(f).map_err(|e| e.to_string()))
        .map(|archive| zip_layout(archive.file_names()));
    match layout {
        Err(_) => not_script(format!("the archive is damaged or incomplete: {reason}")),
        Ok(ZipLayout::Checkpoint) => not_script(
            "it looks like a torch.save checkpoint or state_dict, which holds weights but no code"
                .into(),
        ),
        Ok(ZipLayout::Other) => not_script(
            "it is a zip archive without code/ or constants.pkl, so it holds no TorchScript code"
                .into(),
        ),
        Ok(ZipLayout::TorchScript) => {
            let damaged = [
                "PytorchStreamReader",
                "central directory",
                "archive",
                "record",
            ];
            if damaged.iter().any(|s| reason.contains(s)) {
                not_script(format!("the archive is damaged or incomplete: {reason}"))
            } else {
                ModelError::Load {
                    path: path.to_path_buf(),
                    reason,
                }
            }
        }
    }
}

impl Model for TorchScriptModel {
    fn device(&self) -> Device {
        self.device
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle()?.tensors(true)
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle()?.tensors(false)
    }
    fn modules(&self) -> &[ModuleInfo] {
        &self.modules
    }
    /// The final op of the head `model.output` selects, the same one `predict` returns.
    fn output_activation(&self) -> Result<OutputActivation, CheckError> {
        self.output_activation
            .get_or_init(|| self.handle_for_shim()?.output_op(&self.output_key))
            .clone()
            .map_err(CheckError::from)
    }
    fn predict(&self, input: &Tensor) -> Result<Tensor, CheckError> {
        self.handle()?
            .predict(&input.to_device(self.device), &self.output_key)
    }
    fn trainable_copy(&self) -> Result<Box<dyn TrainableModel>, CheckError> {
        Ok(Box::new(TrainableCopy {
            handle: self.module_for_copy(false)?,
            device: self.device,
            output_key: self.output_key.clone(),
            layout: Layout::Undecided,
        }))
    }

    // ---- module graph
    fn module_graph(&self, sample: Option<&Tensor>) -> Result<ModuleGraph, CheckError> {
        self.graph_of(sample)
    }

    // ---- nonfinite (issue 10)
    fn predict_tracing_non_finite(
        &self,
        input: &Tensor,
    ) -> Result<(Tensor, Option<NonFiniteOp>), CheckError> {
        self.handle()?
            .first_non_finite(&input.to_device(self.device), &self.output_key)
    }
    // ---- input-normalization (issue 10)
    fn layer_scales(&self, input: &Tensor) -> Result<Vec<LayerScale>, CheckError> {
        self.handle()?.layer_scales(&input.to_device(self.device))
    }
}

/// A deep copy of the module; training it never touches the original or the file.
struct TrainableCopy {
    handle: Handle,
    device: Device,
    output_key: CString,
    layout: Layout,
}

/// `t` with channels-last strides (NHWC in memory, NCHW in shape); any tensor that is not 4-D as it is.
fn channels_last(t: &Tensor) -> Result<Tensor, tch::TchError> {
    if t.dim() != 4 {
        return Ok(t.shallow_clone());
    }
    t.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])
}

/// Moves every 4-D parameter of `handle` to channels-last strides (`to_nhwc`) or back to contiguous
/// ones, in place: the tensors stay the module's (and an optimizer's) parameters.
fn set_layout(handle: &Handle, to_nhwc: bool) -> Result<(), CheckError> {
    let _guard = tch::no_grad_guard();
    for (_, mut p) in handle.tensors(true)? {
        if p.dim() == 4 {
            let moved = if to_nhwc {
                channels_last(&p)?
            } else {
                p.f_contiguous()?
            };
            p.f_set_data(&moved)?;
        }
    }
    Ok(())
}

/// A training copy's memory layout on the CPU. oneDNN's convolutions and batch norm run 10-20%
/// faster per step on channels-last (NHWC) tensors than on contiguous ones (measured on the bench
/// models, and in PyTorch with `memory_format=torch.channels_last`), so a copy fed images trains in
/// that layout. Code that assumes contiguous activations (`x.view(n, -1)` after a convolution) fails
/// on it: then the copy goes back to contiguous tensors for good and the forward runs again.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Not decided yet (no image input seen).
    Undecided,
    ChannelsLast,
    Contiguous,
}

impl TrainableModel for TrainableCopy {
    fn forward(&mut self, input: &Tensor, mode: Mode) -> Result<Tensor, CheckError> {
        let input = input.to_device(self.device);
        if self.layout == Layout::Contiguous || input.dim() != 4 || self.device != Device::Cpu {
            return self.handle.forward(&input, mode, None, &self.output_key);
        }
        // The first image forward tries the layout; a failed train-mode try may have moved BatchNorm's
        // running statistics, which go back to their values before the forward runs again.
        let before = match self.layout {
            Layout::Undecided => {
                set_layout(&self.handle, true)?;
                self.layout = Layout::ChannelsLast;
                let _guard = tch::no_grad_guard();
                let buffers = self.handle.tensors(false)?;
                Some(
                    buffers
                        .iter()
                        .map(|(_, b)| b.f_detach_copy())
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            _ => None,
        };
        match self
            .handle
            .forward(&channels_last(&input)?, mode, None, &self.output_key)
        {
            Ok(out) => Ok(out),
            Err(_) => {
                set_layout(&self.handle, false)?;
                self.layout = Layout::Contiguous;
                if let Some(before) = before {
                    let _guard = tch::no_grad_guard();
                    for ((_, mut b), saved) in self.handle.tensors(false)?.into_iter().zip(before) {
                        b.f_copy_(&saved)?;
                    }
                }
                self.handle.forward(&input, mode, None, &self.output_key)
            }
        }
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle.tensors(true)
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle.tensors(false)
    }
}

// ---------------------------------------------------------------- module graph (graph view,
// unused-parameters, shared-batchnorm)

// SAFETY (of the block): the header shim.cpp includes is generated from this declaration (build.rs).
unsafe extern "C" {
    fn tl_module_graph(
        m: *mut RawModule,
        input: *const torch_sys::C_tensor,
        json: *mut Option<ShimString>,
    ) -> Option<ShimString>;
}

impl Handle {
    /// The module graph as the shim's JSON text. With an input, the shim runs one eval-mode forward
    /// without gradients on the module and restores every training flag (as `predict`).
    fn module_graph(&self, input: Option<&Tensor>) -> Result<String, ShimError> {
        let mut json = None;
        let input = input.map_or(std::ptr::null(), |t| t.as_ptr());
        // SAFETY: `self.0` is a live module; the shim changes its flags only for the forward and
        // restores them before returning (as `predict`); `input` is null or a live tensor outliving
        // the call; on success `json` holds a malloc'd string that `ShimString` owns and frees.
        check(unsafe { tl_module_graph(self.0, input, &mut json) })?;
        Ok(json.map(|s| s.to_text()).unwrap_or_default())
    }
}

impl TorchScriptModel {
    fn parse_graph(json: Result<String, ShimError>) -> Result<ModuleGraph, ShimError> {
        serde_json::from_str(&json?).map_err(|e| ShimError::MalformedGraph(e.to_string()))
    }

    /// The module graph, walked once and kept (without shapes); with a sample, walked again with one
    /// forward for the output shapes.
    fn graph_of(&self, sample: Option<&Tensor>) -> Result<ModuleGraph, CheckError> {
        match sample {
            None => self
                .module_graph
                .get_or_init(|| {
                    Self::parse_graph(self.handle_for_shim().and_then(|h| h.module_graph(None)))
                })
                .clone()
                .map_err(CheckError::from),
            Some(x) => {
                let input = x.to_device(self.device);
                let json = self
                    .handle()?
                    .keeping_buffers(|h| h.module_graph(Some(&input)).map_err(CheckError::from))?;
                Self::parse_graph(Ok(json)).map_err(CheckError::from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/models")
            .join(name)
    }

    fn flags(model: &TorchScriptModel) -> Vec<(String, bool)> {
        let now = model.handle().unwrap().modules().unwrap();
        now.into_iter().map(|m| (m.path, m.training)).collect()
    }

    #[test]
    fn predict_restores_each_flag_even_when_forward_throws() {
        // A model saved in train mode with one BatchNorm saved in eval mode: a recursive train(true)
        // or a forgotten eval() would both show.
        let model = TorchScriptModel::load(&fixture("bn_submodule_eval.pt"), "cpu", "").unwrap();
        let saved: Vec<(String, bool)> = model
            .modules()
            .iter()
            .map(|m| (m.path.clone(), m.training))
            .collect();
        assert!(saved.iter().any(|(_, t)| *t) && saved.iter().any(|(_, t)| !*t));

        let images = Tensor::zeros([2, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
        assert_eq!(model.predict(&images).unwrap().size()[0], 2);
        assert_eq!(flags(&model), saved);

        let wrong = Tensor::zeros([2, 5], (tch::Kind::Float, Device::Cpu));
        assert!(model.predict(&wrong).is_err());
        assert_eq!(flags(&model), saved, "restored when forward throws");
    }

    /// Every parameter's values, to compare a model before and after a copy of it trained.
    fn values(params: Result<Vec<NamedTensor>, CheckError>) -> Vec<(String, Vec<f32>)> {
        params
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
            .collect()
    }

    fn train_a_little(copy: &mut dyn TrainableModel, input: &Tensor) {
        let out = copy.forward(input, Mode::Train).unwrap();
        out.square().sum(tch::Kind::Float).backward();
        let _guard = tch::no_grad_guard();
        for (_, p) in copy.parameters().unwrap() {
            let g = p.grad();
            if g.defined() {
                let _ = p.shallow_clone().f_sub_(&(g * 0.5)).unwrap();
            }
        }
    }

    #[test]
    fn a_large_model_is_released_while_its_copy_trains_then_loaded_again_unchanged() {
        let mut model = TorchScriptModel::load(&fixture("cnn_bn.pt"), "cpu", "").unwrap();
        model.reload_above = 0;
        let images = Tensor::randn([4, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
        let before = values(model.parameters());
        let predicted = model.predict(&images).unwrap();
        let saved = flags(&model);

        let mut copy = model.trainable_copy().unwrap();
        assert!(
            model.handle.borrow().is_none(),
            "released while the copy trains"
        );
        train_a_little(copy.as_mut(), &images);
        assert_ne!(values(copy.parameters()), before, "the copy trained");

        assert!(model
            .predict(&images)
            .unwrap()
            .allclose(&predicted, 0.0, 0.0, false));
        assert_eq!(
            values(model.parameters()),
            before,
            "the model is the file's again"
        );
        assert_eq!(flags(&model), saved);

        // A worker's copy takes the module itself; this side loads it again when it next reads.
        let worker = model.independent_copy().unwrap();
        assert!(model.handle.borrow().is_none());
        assert_eq!(values(worker.parameters()), before);
        assert_eq!(values(model.parameters()), before);
    }

    #[test]
    fn a_small_model_is_deep_copied_and_stays_loaded() {
        let model = TorchScriptModel::load(&fixture("cnn_bn.pt"), "cpu", "").unwrap();
        assert!(model.bytes > 0 && model.bytes < RELOAD_ABOVE_BYTES);
        let images = Tensor::randn([4, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
        let before = values(model.parameters());
        let mut copy = model.trainable_copy().unwrap();
        assert!(model.handle.borrow().is_some());
        train_a_little(copy.as_mut(), &images);
        assert_eq!(values(model.parameters()), before);
    }

    #[test]
    fn a_model_file_changed_during_the_audit_is_refused_not_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pt");
        std::fs::copy(fixture("cnn_bn.pt"), &path).unwrap();
        let mut model = TorchScriptModel::load(&path, "cpu", "").unwrap();
        model.reload_above = 0;
        let _copy = model.trainable_copy().unwrap();
        // Same bytes, rewritten in place: the change time moves, so it is another file now.
        std::fs::write(&path, std::fs::read(&path).unwrap()).unwrap();
        let images = Tensor::randn([2, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
        let err = model.predict(&images).unwrap_err().to_string();
        assert!(err.contains("changed during the audit"), "{err}");
        assert!(model.trainable_copy().is_err());
    }

    #[test]
    fn predict_puts_back_the_statistics_a_train_mode_trace_moves() {
        // torch.jit.trace in train mode records batch_norm(training=True): any forward updates the
        // running statistics, whatever the module's flag says.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/torch_versions/torch-2.13/trace/model.pt");
        let model = TorchScriptModel::load(&path, "cpu", "").unwrap();
        let before = values(model.buffers());
        assert!(before.iter().any(|(n, _)| n.ends_with("running_mean")));
        let input = Tensor::randn([8, 1, 8, 8], (tch::Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let _ = model.predict(&input);
        assert_eq!(values(model.buffers()), before);
    }

    #[test]
    fn output_activation_is_resolved_once() {
        let model = TorchScriptModel::load(&fixture("dict_heads.pt"), "cpu", "pred").unwrap();
        assert!(model.output_activation.get().is_none(), "not at load");
        let first = model.output_activation().unwrap();
        assert_eq!(first.op, "linear");
        assert!(model.output_activation.get().is_some());
        assert_eq!(model.output_activation().unwrap(), first);
    }

    #[test]
    fn an_unreadable_model_says_why_and_a_missing_one_does_not_exist() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            crate::data::paths::describe_io(&denied),
            "permission denied"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = check_model_file(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("is a folder, not a TorchScript model file"),
            "{e}"
        );
        let looped = dir.path().join("loop.pt");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let e = check_model_file(&looped).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read model file") && e.contains("symbolic links"),
            "{e}"
        );
        let dangling = dir.path().join("dangling.pt");
        std::os::unix::fs::symlink(dir.path().join("gone.pt"), &dangling).unwrap();
        let e = check_model_file(&dangling).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link to a file that does not exist"),
            "{e}"
        );
        let e = check_model_file(&dir.path().join("gone.pt")).unwrap_err();
        assert!(matches!(e, ModelError::Missing(_)), "{e}");
    }

    #[test]
    fn a_zip_is_told_apart_by_its_entries() {
        let script = [
            "m/data.pkl",
            "m/code/__torch__.py",
            "m/constants.pkl",
            "m/version",
        ];
        assert_eq!(zip_layout(script), ZipLayout::TorchScript);
        let checkpoint = ["sd/data.pkl", "sd/byteorder", "sd/data/0", "sd/version"];
        assert_eq!(zip_layout(checkpoint), ZipLayout::Checkpoint);
        assert_eq!(zip_layout(["folder/notes.txt"]), ZipLayout::Other);
        assert_eq!(zip_layout(["notes.txt", "data.pkl"]), ZipLayout::Other);
        assert_eq!(
            without_enforce_prefix("[enforce fail at inline_container.cc:180] . file in archive is not in a subdirectory: x"),
            "file in archive is not in a subdirectory: x"
        );
        assert_eq!(without_enforce_prefix("plain"), "plain");
    }

    #[test]
    fn user_messages_lose_the_cpp_stack() {
        let raw = "shape mismatch\nException raised from check at /src/aten/x.cpp:12 (most recent call first):\nframe #0: c10::Error::Error() + 0x1\nframe #1: f + 0x2\n";
        assert_eq!(user_message(raw), "shape mismatch");
        let traced = "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript (most recent call last):\n  File \"code/x.py\", line 3\nRuntimeError: bad input\nException raised from f at a.cpp:1 (most recent call first):\nframe #0: g\n";
        assert_eq!(user_message(traced), "RuntimeError: bad input");
    }
}

// ================================================================ nonfinite (issue 10)
// SAFETY (of the block): the header shim.cpp includes is generated from this declaration (build.rs).
unsafe extern "C" {
    fn tl_first_nonfinite(
        m: *mut RawModule,
        input: *const torch_sys::C_tensor,
        output_key: *const c_char,
        found: *mut c_int,
        op: *mut Option<ShimString>,
        module: *mut Option<ShimString>,
        source: *mut Option<ShimString>,
        out: *mut *mut torch_sys::C_tensor,
    ) -> Option<ShimString>;
}

impl Handle {
    /// An eval-mode forward without gradients (flags restored as in `predict`) through a copy of the
    /// forward graph with a probe after every op: the output, and the first op whose output held NaN
    /// or Inf.
    fn first_non_finite(
        &self,
        input: &Tensor,
        output_key: &CStr,
    ) -> Result<(Tensor, Option<NonFiniteOp>), CheckError> {
        // As `predict`: a module traced in train mode moves its BatchNorm statistics even in eval
        // mode; put the buffers back.
        self.keeping_buffers(|h| h.first_non_finite_moving_buffers(input, output_key))
    }

    fn first_non_finite_moving_buffers(
        &self,
        input: &Tensor,
        output_key: &CStr,
    ) -> Result<(Tensor, Option<NonFiniteOp>), CheckError> {
        let mut out = std::ptr::null_mut();
        let mut found: c_int = 0;
        let (mut op, mut module, mut source) = (None, None, None);
        // SAFETY: as in `predict`: `self.0` is a live module whose flags the shim restores before it
        // returns; `input` and `output_key` outlive the call; the out-pointers are valid; on success
        // `out` holds a `new at::Tensor` taken over once, and the three strings (set when `found` is
        // 1) are malloc'd and owned by their ShimString.
        unsafe {
            check(tl_first_nonfinite(
                self.0,
                input.as_ptr(),
                output_key.as_ptr(),
                &mut found,
                &mut op,
                &mut module,
                &mut source,
                &mut out,
            ))
            .map_err(CheckError::from)?;
            let output = Tensor::from_ptr(out);
            let text = |s: Option<ShimString>| s.map(|s| s.to_text()).unwrap_or_default();
            let first = (found == 1).then(|| NonFiniteOp {
                op: text(op),
                module: text(module),
                source: text(source),
            });
            Ok((output, first))
        }
    }
}

// ================================================================ input-normalization (issue 10)
type ScaleCb = extern "C" fn(*mut c_void, *const c_char, *const c_char, f64);

// SAFETY (of the block): the header shim.cpp includes is generated from this declaration (build.rs).
unsafe extern "C" {
    fn tl_layer_scales(
        m: *const RawModule,
        input: *const torch_sys::C_tensor,
        ctx: *mut c_void,
        cb: ScaleCb,
    ) -> Option<ShimString>;
}

extern "C" fn collect_scale(ctx: *mut c_void, op: *const c_char, module: *const c_char, rms: f64) {
    // SAFETY: `ctx` is the `&mut Vec<LayerScale>` that `layer_scales` lends for this one call; `op` and
    // `module` are NUL-terminated strings the shim keeps alive during the callback.
    let (out, op, module) = unsafe {
        (
            &mut *(ctx as *mut Vec<LayerScale>),
            CStr::from_ptr(op),
            CStr::from_ptr(module),
        )
    };
    out.push(LayerScale {
        rms,
        op: op.to_string_lossy().into_owned(),
        module: module.to_string_lossy().into_owned(),
    });
}

impl Handle {
    /// The rms of every layer op's output in a train-mode forward of a deep copy (the shim copies the
    /// module: nothing reaches this one), in execution order.
    fn layer_scales(&self, input: &Tensor) -> Result<Vec<LayerScale>, CheckError> {
        let mut out: Vec<LayerScale> = Vec::new();
        let ctx = &mut out as *mut Vec<LayerScale> as *mut c_void;
        // SAFETY: `self.0` is a live module that the shim only reads (it runs a deep copy); `input`
        // outlives the call; `ctx` points at `out`, borrowed for this call only.
        check(unsafe { tl_layer_scales(self.0, input.as_ptr(), ctx, collect_scale) })
            .map_err(CheckError::from)?;
        Ok(out)
    }
}

// ---------------------------------------------------------------- memory between checks

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallopt(param: c_int, value: c_int) -> c_int;
    fn malloc_trim(pad: usize) -> c_int;
}

/// Fixes glibc malloc's thresholds at the top of the range it would reach on its own, so that the
/// memory a training step frees is reused by the next step instead of being faulted in again.
///
/// glibc starts with an mmap threshold of 128 KiB and a trim threshold of 128 KiB and raises them only
/// as mapped chunks are freed: libtorch's activations of a few MiB kept being mapped, unmapped, trimmed
/// and faulted back in, page by page. Measured on `resnet_bn.pt` + `cifar_like.npz` (2 threads, whole
/// audit): ~1.0 million page faults and 3.9–4.5 s before, 0.10 million and 2.8–3.2 s after, the same
/// peak resident set; the 200 MB MLP of `tests/memory.rs` peaks at the same ~0.95 GB. Allocations above
/// 32 MiB are still mapped (a larger threshold fragments the heap: 1.14 GB on that MLP), and
/// [`release_free_memory`] still hands free memory back between checks. Called once, at start-up.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only sets two thresholds of glibc's allocator (32 MiB is the largest mmap
        // threshold every glibc accepts; the trim threshold is twice it, as glibc's own rule sets it).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

/// Returns the memory that the allocator keeps after a check frees it to the system.
///
/// libtorch allocates through glibc's malloc: tensors up to 32 MiB live in malloc's heaps (see
/// [`keep_freed_memory`]), and the heaps of the worker threads keep what they free. Across checks this
/// added tens of megabytes to the peak of a 200 MB model's audit (whose training checks hold 4× the
/// model); trimming once per check costs a fraction of a millisecond.
pub fn release_free_memory() {
    // SAFETY: glibc's malloc_trim only hands free memory back to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        malloc_trim(0);
    }
}
