// TorchScript introspection that tch's CModule does not offer: buffers, submodule kinds and training
// flags, an independent deep copy, a forward that leaves the module's flags as it found them, and the
// forward graph's final op.
//
// Every extern "C" entry returns NULL on success or a malloc'd error message the caller frees with
// tl_free_string: an exception escaping into Rust would abort the process.
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/script.h>

#include <cmath>
#include <optional>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

using torch::jit::Module;

struct tl_module {
  Module module;
};

typedef void (*tl_tensor_cb)(void* ctx, const char* name, at::Tensor* tensor);
typedef void (*tl_module_cb)(void* ctx, const char* name, const char* kind, int training);

static char* dup_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

#define TL_GUARD(body)                                     \
  try {                                                    \
    body;                                                  \
    return nullptr;                                        \
  } catch (const c10::Error& e) {                          \
    return dup_message(e.what_without_backtrace());        \
  } catch (const std::exception& e) {                      \
    return dup_message(e.what());                          \
  } catch (...) {                                          \
    return dup_message("unknown C++ exception in libtorch"); \
  }

// The last component of a qualified type name without TorchScript's mangling:
// "__torch__.torch.nn.modules.batchnorm.___torch_mangle_3.BatchNorm2d" -> "BatchNorm2d".
static std::string module_kind(const Module& m) {
  auto name = m.type()->name();
  if (!name) return "";
  std::string q = name->qualifiedName();
  auto dot = q.rfind('.');
  return dot == std::string::npos ? q : q.substr(dot + 1);
}

static at::Tensor pick_output(const c10::IValue& out, const std::string& key) {
  if (out.isTensor()) return out.toTensor();
  if (out.isTuple() || out.isList()) {
    auto elems = out.isTuple() ? out.toTupleRef().elements().vec() : out.toListRef().vec();
    size_t index = 0;
    if (!key.empty()) index = std::stoul(key);
    TORCH_CHECK(index < elems.size(), "forward returned ", elems.size(), " values; output index ", index,
                " does not exist");
    TORCH_CHECK(elems[index].isTensor(), "forward's output ", index, " is not a tensor");
    return elems[index].toTensor();
  }
  if (out.isGenericDict()) {
    auto dict = out.toGenericDict();
    TORCH_CHECK(dict.size() > 0, "forward returned an empty dict");
    if (key.empty()) {
      auto first = dict.begin()->value();
      TORCH_CHECK(first.isTensor(), "forward's first dict entry is not a tensor");
      return first.toTensor();
    }
    for (const auto& entry : dict) {
      if (entry.key().isString() && entry.key().toStringRef() == key) {
        TORCH_CHECK(entry.value().isTensor(), "forward's output '", key, "' is not a tensor");
        return entry.value().toTensor();
      }
    }
    TORCH_CHECK(false, "forward's output dict has no key '", key, "'");
  }
  TORCH_CHECK(false, "forward returned ", out.tagKind(), ", not a tensor, tuple or dict");
}

// ---------------------------------------------------------------- forward
// Puts back every submodule's own training flag when it goes out of scope, exceptions included.
// Module::train() is recursive, so restoring through it would erase a submodule saved in eval mode
// inside a model saved in train mode; each flag is set on its own module instead.
class TrainingFlagsRestorer {
 public:
  explicit TrainingFlagsRestorer(const Module& root) {
    for (const Module& sub : root.modules()) {
      if (sub.hasattr("training")) saved_.emplace_back(sub, sub.attr("training").toBool());
    }
  }
  ~TrainingFlagsRestorer() {
    for (auto& [sub, flag] : saved_) {
      try {
        sub.setattr("training", flag);
      } catch (...) {
        // setattr only throws for a missing or mistyped attribute, which the constructor ruled out.
      }
    }
  }
  TrainingFlagsRestorer(const TrainingFlagsRestorer&) = delete;
  TrainingFlagsRestorer& operator=(const TrainingFlagsRestorer&) = delete;

 private:
  std::vector<std::pair<Module, bool>> saved_;
};

// mode: -1 keeps the module's flags, 0 eval, 1 train (recursive, as nn.Module.train()).
// grad: -1 keeps the caller's grad mode (a no_grad guard on the Rust side holds), 0 off, 1 on.
static at::Tensor run_forward(Module& module, const at::Tensor& input, int mode, int grad,
                              const std::string& output_key) {
  if (mode >= 0) module.train(mode == 1);
  std::optional<at::AutoGradMode> grad_mode;
  if (grad >= 0) grad_mode.emplace(grad != 0);
  std::vector<c10::IValue> inputs{input};
  c10::IValue result = module.forward(inputs);
  return pick_output(result, output_key);
}

// Ops that pass a value through without changing its range: the activation sits before them.
static bool passes_range_through(const std::string& kind) {
  static const char* ops[] = {"aten::view",      "aten::reshape", "aten::flatten",    "aten::squeeze",
                              "aten::unsqueeze", "aten::contiguous", "aten::permute", "aten::transpose",
                              "aten::clone",     "aten::to",      "aten::dropout",    "aten::feature_dropout",
                              "aten::type_as",   "aten::detach",  "aten::alias"};
  for (const char* op : ops)
    if (kind == op) return true;
  return false;
}

static double constant_or_nan(torch::jit::Value* v) {
  auto iv = torch::jit::toIValue(v);
  if (iv && (iv->isDouble() || iv->isInt())) return iv->toScalar().toDouble();
  return std::nan("");
}

extern "C" {

void tl_free_string(char* s) { std::free(s); }

char* tl_load(const char* path, const char* device, tl_module** out) {
  TL_GUARD({
    Module m = torch::jit::load(std::string(path), c10::Device(std::string(device)));
    *out = new tl_module{m};
  })
}

void tl_free(tl_module* m) { delete m; }

// An independent copy whose parameters are leaves of their own: a plain deepcopy with grad mode on
// records CloneBackward, so gradients would flow back into the original's parameters.
char* tl_deepcopy(const tl_module* m, tl_module** out) {
  TL_GUARD({
    Module copy = [&] {
      torch::NoGradGuard no_grad;
      return m->module.deepcopy();
    }();
    auto originals = m->module.parameters(true);
    auto copies = copy.parameters(true);
    auto o = originals.begin();
    for (auto c = copies.begin(); c != copies.end() && o != originals.end(); ++c, ++o) {
      (*c).requires_grad_((*o).requires_grad());
    }
    *out = new tl_module{copy};
  })
}

// libtorch prints warnings (deprecations, non-leaf .grad access) to stderr; trainlint's output stays
// its own report.
struct SilentHandler : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

void tl_silence_warnings() {
  static SilentHandler handler;
  c10::WarningUtils::set_warning_handler(&handler);
}

// A forward in `mode` (see run_forward) that leaves the flags as it set them: for a trained copy.
char* tl_forward(tl_module* m, const at::Tensor* input, int mode, int grad, const char* output_key,
                 at::Tensor** out) {
  TL_GUARD({ *out = new at::Tensor(run_forward(m->module, *input, mode, grad, std::string(output_key))); })
}

// An eval-mode forward without gradients that leaves every module's training flag as it was, even
// when forward throws. It runs on the module itself (no copy): eval-mode BatchNorm and Dropout change
// no buffer; only a forward that assigns its own attributes would leave a trace.
char* tl_predict(tl_module* m, const at::Tensor* input, const char* output_key, at::Tensor** out) {
  TL_GUARD({
    TrainingFlagsRestorer restore(m->module);
    *out = new at::Tensor(run_forward(m->module, *input, /*mode=*/0, /*grad=*/0, std::string(output_key)));
  })
}

char* tl_named_parameters(const tl_module* m, void* ctx, tl_tensor_cb cb) {
  TL_GUARD({
    for (const auto& p : m->module.named_parameters(true)) cb(ctx, p.name.c_str(), new at::Tensor(p.value));
  })
}

char* tl_named_buffers(const tl_module* m, void* ctx, tl_tensor_cb cb) {
  TL_GUARD({
    for (const auto& b : m->module.named_buffers(true)) cb(ctx, b.name.c_str(), new at::Tensor(b.value));
  })
}

char* tl_named_modules(const tl_module* m, void* ctx, tl_module_cb cb) {
  TL_GUARD({
    for (const auto& sub : m->module.named_modules()) {
      cb(ctx, sub.name.c_str(), module_kind(sub.value).c_str(), sub.value.is_training() ? 1 : 0);
    }
  })
}

// The op that produces `v`, walking back through shape-only ops and, for an `If` whose condition is not
// constant, into both branches (the op they agree on). `lo`/`hi` carry constant clamp bounds.
static std::string producer_op(torch::jit::Value* v, int output_index, double* lo, double* hi, int depth) {
  if (depth > 64) return "unknown";
  torch::jit::Node* n = v->node();
  std::string kind = n->kind().toQualString();
  if (kind == "prim::TupleConstruct" || kind == "prim::ListConstruct") {
    size_t i = static_cast<size_t>(output_index) < n->inputs().size() ? output_index : 0;
    return producer_op(n->inputs()[i], 0, lo, hi, depth + 1);
  }
  if (kind == "prim::DictConstruct") {
    return producer_op(n->inputs().size() >= 2 ? n->inputs()[1] : n->inputs()[0], 0, lo, hi, depth + 1);
  }
  if (passes_range_through(kind) && !n->inputs().empty()) {
    return producer_op(n->inputs()[0], output_index, lo, hi, depth + 1);
  }
  if (kind == "prim::If") {
    size_t which = v->offset();
    std::string agreed;
    for (auto* block : n->blocks()) {
      if (which >= block->outputs().size()) return kind;
      std::string op = producer_op(block->outputs()[which], output_index, lo, hi, depth + 1);
      if (!agreed.empty() && op != agreed) return kind;
      agreed = op;
    }
    return agreed.empty() ? kind : agreed;
  }
  if ((kind == "aten::clamp" || kind == "aten::hardtanh") && n->inputs().size() >= 3) {
    *lo = constant_or_nan(n->inputs()[1]);
    *hi = constant_or_nan(n->inputs()[2]);
  }
  return kind;
}

// The forward graph with submodule calls inlined and, where freezing works, attributes folded into
// constants, so `if self.act == "sigmoid"` resolves to its branch.
static std::shared_ptr<torch::jit::Graph> resolved_forward_graph(const Module& m) {
  try {
    Module frozen = torch::jit::freeze_module(m.clone());
    auto graph = frozen.get_method("forward").graph()->copy();
    torch::jit::Inline(*graph);
    torch::jit::ConstantPropagation(graph);
    torch::jit::EliminateDeadCode(graph);
    return graph;
  } catch (...) {
    auto graph = m.get_method("forward").graph()->copy();
    torch::jit::Inline(*graph);
    return graph;
  }
}

// The op that produces forward's returned value (entry `output_index` of a tuple).
char* tl_output_op(const tl_module* m, int output_index, char** op, double* lo, double* hi) {
  TL_GUARD({
    auto graph = resolved_forward_graph(m->module);
    *lo = std::nan("");
    *hi = std::nan("");
    *op = dup_message(producer_op(graph->outputs()[0], output_index, lo, hi, 0));
  })
}

}  // extern "C"
