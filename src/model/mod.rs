//! TorchScript models behind the checks' `Model` port, through the C++ shim in `shim.cpp`.
use std::cell::OnceCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};
use trainlint_checks::ports::{Mode, NamedTensor};
use trainlint_checks::{CheckError, Model, ModuleInfo, OutputActivation, TrainableModel};

#[repr(C)]
struct RawModule {
    _private: [u8; 0],
}

type TensorCb = extern "C" fn(*mut c_void, *const c_char, *mut torch_sys::C_tensor);
type ModuleCb = extern "C" fn(*mut c_void, *const c_char, *const c_char, c_int);

extern "C" {
    fn tl_free_string(s: *mut c_char);
    fn tl_silence_warnings();
    fn tl_load(path: *const c_char, device: *const c_char, out: *mut *mut RawModule)
        -> *mut c_char;
    fn tl_free(m: *mut RawModule);
    fn tl_deepcopy(m: *const RawModule, out: *mut *mut RawModule) -> *mut c_char;
    fn tl_forward(
        m: *mut RawModule,
        input: *const torch_sys::C_tensor,
        mode: c_int,
        grad: c_int,
        output_key: *const c_char,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn tl_predict(
        m: *mut RawModule,
        input: *const torch_sys::C_tensor,
        output_key: *const c_char,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn tl_named_parameters(m: *const RawModule, ctx: *mut c_void, cb: TensorCb) -> *mut c_char;
    fn tl_named_buffers(m: *const RawModule, ctx: *mut c_void, cb: TensorCb) -> *mut c_char;
    fn tl_named_modules(m: *const RawModule, ctx: *mut c_void, cb: ModuleCb) -> *mut c_char;
    fn tl_check_output(m: *const RawModule, output_key: *const c_char) -> *mut c_char;
    fn tl_output_op(
        m: *const RawModule,
        output_key: *const c_char,
        op: *mut *mut c_char,
        lo: *mut f64,
        hi: *mut f64,
    ) -> *mut c_char;
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error("{path} is not a TorchScript model ({reason}); export it with torch.jit.script(model).save(...) or torch.jit.trace(model, example).save(...)")]
    NotTorchScript { path: PathBuf, reason: String },
    #[error("cannot load {path}: {reason}")]
    Load { path: PathBuf, reason: String },
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

/// Take the shim's error message (NULL = success).
fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .trim()
        .to_string();
    unsafe { tl_free_string(err) };
    Err(user_message(&msg))
}

/// A libtorch message cut down to what a user can act on: one line, no C++ stack.
fn user_message(msg: &str) -> String {
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
    let out = unsafe { &mut *(ctx as *mut Vec<NamedTensor>) };
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    out.push((name, unsafe { Tensor::from_ptr(t) }));
}

extern "C" fn collect_module(
    ctx: *mut c_void,
    name: *const c_char,
    kind: *const c_char,
    training: c_int,
) {
    let out = unsafe { &mut *(ctx as *mut Vec<ModuleInfo>) };
    out.push(ModuleInfo {
        path: unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
        kind: unsafe { CStr::from_ptr(kind) }
            .to_string_lossy()
            .into_owned(),
        training: training != 0,
    });
}

/// An owned TorchScript module.
struct Handle(*mut RawModule);

impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { tl_free(self.0) }
    }
}

impl Handle {
    fn tensors(&self, parameters: bool) -> Result<Vec<NamedTensor>, CheckError> {
        let mut out: Vec<NamedTensor> = Vec::new();
        let ctx = &mut out as *mut Vec<NamedTensor> as *mut c_void;
        let err = unsafe {
            if parameters {
                tl_named_parameters(self.0, ctx, collect_tensor)
            } else {
                tl_named_buffers(self.0, ctx, collect_tensor)
            }
        };
        check(err).map_err(CheckError::Model)?;
        Ok(out)
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, String> {
        let mut out: Vec<ModuleInfo> = Vec::new();
        let ctx = &mut out as *mut Vec<ModuleInfo> as *mut c_void;
        check(unsafe { tl_named_modules(self.0, ctx, collect_module) })?;
        Ok(out)
    }

    /// `grad`: None keeps the caller's grad mode.
    fn forward(
        &self,
        input: &Tensor,
        mode: Mode,
        grad: Option<bool>,
        output_key: &CString,
    ) -> Result<Tensor, CheckError> {
        let mode = match mode {
            Mode::AsSaved => -1,
            Mode::Eval => 0,
            Mode::Train => 1,
        };
        let mut out = std::ptr::null_mut();
        let grad = grad.map_or(-1, c_int::from);
        let err = unsafe {
            tl_forward(
                self.0,
                input.as_ptr(),
                mode,
                grad,
                output_key.as_ptr(),
                &mut out,
            )
        };
        check(err).map_err(CheckError::Model)?;
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// An eval-mode forward without gradients. The shim flips the training flags for the call and
    /// restores each module's own flag afterwards (exceptions included), so behind `&self` nothing
    /// observable changes: parameters, buffers (eval-mode BatchNorm reads its stats) and flags stay.
    fn predict(&self, input: &Tensor, output_key: &CString) -> Result<Tensor, CheckError> {
        let mut out = std::ptr::null_mut();
        let err = unsafe { tl_predict(self.0, input.as_ptr(), output_key.as_ptr(), &mut out) };
        check(err).map_err(CheckError::Model)?;
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    fn deepcopy(&self) -> Result<Handle, CheckError> {
        let mut out = std::ptr::null_mut();
        check(unsafe { tl_deepcopy(self.0, &mut out) }).map_err(CheckError::Model)?;
        Ok(Handle(out))
    }
}

/// Keep libtorch's warnings out of the terminal: the report is trainlint's output.
pub fn silence_libtorch_warnings() {
    unsafe { tl_silence_warnings() }
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

/// A TorchScript model loaded from a file. The file is only read.
pub struct TorchScriptModel {
    handle: Handle,
    device: Device,
    output_key: CString,
    modules: Vec<ModuleInfo>,
    /// Resolving the final op freezes a clone of the module; several checks ask, it is done once.
    output_activation: OnceCell<Result<OutputActivation, String>>,
}

impl TorchScriptModel {
    /// `output` selects the prediction when forward returns a tuple (an index) or a dict (a key); a
    /// selector that names no output of the model is refused here, before any check runs.
    pub fn load(path: &Path, device: &str, output: &str) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::Missing(path.to_path_buf()));
        }
        let dev = parse_device(device)?;
        let output_key = CString::new(output).map_err(|_| ModelError::OutputNul)?;
        let c_path = CString::new(path.to_string_lossy().as_bytes()).expect("path without NUL");
        let c_device = CString::new(device).expect("device without NUL");
        let mut raw = std::ptr::null_mut();
        check(unsafe { tl_load(c_path.as_ptr(), c_device.as_ptr(), &mut raw) })
            .map_err(|reason| classify_load_error(path, reason))?;
        let handle = Handle(raw);
        check(unsafe { tl_check_output(handle.0, output_key.as_ptr()) })
            .map_err(ModelError::Output)?;
        // Read the training flags now: later eval/train calls change them.
        let modules = handle.modules().map_err(|reason| ModelError::Load {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(TorchScriptModel {
            handle,
            device: dev,
            output_key,
            modules,
            output_activation: OnceCell::new(),
        })
    }

    /// The final op of the output `model.output` selects, the same one `predict` returns. Freezes a
    /// clone of the module: `output_activation` caches it.
    fn resolve_output_activation(&self) -> Result<OutputActivation, String> {
        let (mut op, mut lo, mut hi) = (std::ptr::null_mut(), f64::NAN, f64::NAN);
        check(unsafe {
            tl_output_op(
                self.handle.0,
                self.output_key.as_ptr(),
                &mut op,
                &mut lo,
                &mut hi,
            )
        })?;
        let name = unsafe { CStr::from_ptr(op) }.to_string_lossy().into_owned();
        unsafe { tl_free_string(op) };
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

fn classify_load_error(path: &Path, reason: String) -> ModelError {
    let not_script = [
        "constants.pkl",
        "PytorchStreamReader",
        "central directory",
        "archive",
        "code/",
    ];
    let zip_magic = std::fs::read(path)
        .map(|b| b.starts_with(b"PK\x03\x04"))
        .unwrap_or(false);
    let is_state_dict = zip_magic && reason.contains("constants.pkl");
    if is_state_dict {
        return ModelError::NotTorchScript {
            path: path.to_path_buf(),
            reason: "it looks like a torch.save checkpoint or state_dict, which holds weights but no code".into(),
        };
    }
    if !zip_magic || not_script.iter().any(|s| reason.contains(s)) {
        let why = if zip_magic {
            format!("the archive is damaged or incomplete: {reason}")
        } else {
            "it is not a TorchScript zip archive (a pickle, a truncated file or another format)"
                .into()
        };
        return ModelError::NotTorchScript {
            path: path.to_path_buf(),
            reason: why,
        };
    }
    ModelError::Load {
        path: path.to_path_buf(),
        reason,
    }
}

impl Model for TorchScriptModel {
    fn device(&self) -> Device {
        self.device
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle.tensors(true)
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle.tensors(false)
    }
    fn modules(&self) -> &[ModuleInfo] {
        &self.modules
    }
    fn output_activation(&self) -> Result<OutputActivation, CheckError> {
        self.output_activation
            .get_or_init(|| self.resolve_output_activation())
            .clone()
            .map_err(CheckError::Model)
    }
    fn predict(&self, input: &Tensor) -> Result<Tensor, CheckError> {
        self.handle
            .predict(&input.to_device(self.device), &self.output_key)
    }
    fn trainable_copy(&self) -> Result<Box<dyn TrainableModel>, CheckError> {
        Ok(Box::new(TrainableCopy {
            handle: self.handle.deepcopy()?,
            device: self.device,
            output_key: self.output_key.clone(),
        }))
    }
}

/// A deep copy of the module; training it never touches the original or the file.
struct TrainableCopy {
    handle: Handle,
    device: Device,
    output_key: CString,
}

impl TrainableModel for TrainableCopy {
    fn forward(&mut self, input: &Tensor, mode: Mode) -> Result<Tensor, CheckError> {
        self.handle
            .forward(&input.to_device(self.device), mode, None, &self.output_key)
    }
    fn parameters(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle.tensors(true)
    }
    fn buffers(&self) -> Result<Vec<NamedTensor>, CheckError> {
        self.handle.tensors(false)
    }
}
