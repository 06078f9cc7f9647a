// TorchScript introspection that tch's CModule does not offer: buffers, submodule kinds and training
// flags, an independent deep copy, a forward that leaves the module's flags as it found them, and the
// forward graph's final op; and, for the side-effect scan of an untrusted model, its source records and
// every node of every graph it holds.
//
// Every extern "C" entry returns NULL on success or a malloc'd error message the caller frees with
// tl_free_string: an exception escaping into Rust would abort the process.
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/script.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using torch::jit::Module;

struct tl_module {
  Module module;
};

typedef void (*tl_tensor_cb)(void* ctx, const char* name, at::Tensor* tensor);
typedef void (*tl_module_cb)(void* ctx, const char* name, const char* kind, int training);
typedef void (*tl_source_cb)(void* ctx, const char* name, const char* text, size_t len);
typedef void (*tl_node_cb)(void* ctx, const char* kind, const char* schema, const char* method,
                           const char* module);

static char* dup_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// A `model.output` that names no output of this model: the user's mistake, reported as such.
struct SelectorError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

// ---------------------------------------------------------------- model.output: one reading of it
// The forward pass (pick_output), the graph walk (producer_op) and the check at load
// (tl_check_output) all resolve `model.output` with these two functions, so they agree on the head.

// `key` as an index into a tuple or list of `n`: empty means the first; anything but 0..n-1 is an error.
static size_t sequence_index(const std::string& key, size_t n, const char* what) {
  if (n == 0) throw SelectorError(std::string("forward returns an empty ") + what);
  if (key.empty()) return 0;
  bool digits = key.size() <= 18;
  for (char c : key) digits = digits && std::isdigit(static_cast<unsigned char>(c));
  if (digits) {
    size_t index = std::stoull(key);
    if (index < n) return index;
  }
  std::ostringstream msg;
  msg << "model.output = \"" << key << "\": forward returns a " << what << " of " << n << "; use ";
  if (n == 1)
    msg << "index 0";
  else
    msg << "an index 0.." << n - 1;
  throw SelectorError(msg.str());
}

static std::string missing_key(const std::string& key, const std::vector<std::string>& keys) {
  std::ostringstream msg;
  msg << "model.output = \"" << key << "\": forward's output dict has no such key; its keys are ";
  for (size_t i = 0; i < keys.size(); ++i) msg << (i ? ", " : "") << '"' << keys[i] << '"';
  return msg.str();
}

// The position of `key` among a dict's keys in insertion order (empty key: the first entry), or
// nullopt when a key cannot be read (not a constant string): only running forward can tell then.
static std::optional<size_t> dict_position(const std::string& key,
                                           const std::vector<std::optional<std::string>>& keys) {
  if (keys.empty()) throw SelectorError("forward returns an empty dict");
  if (key.empty()) return 0;
  std::vector<std::string> known;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!keys[i]) return std::nullopt;
    if (*keys[i] == key) return i;
    known.push_back(*keys[i]);
  }
  throw SelectorError(missing_key(key, known));
}

static at::Tensor pick_output(const c10::IValue& out, const std::string& key) {
  if (out.isTensor()) return out.toTensor();
  if (out.isTuple() || out.isList()) {
    auto elems = out.isTuple() ? out.toTupleRef().elements().vec() : out.toListRef().vec();
    size_t index = sequence_index(key, elems.size(), out.isTuple() ? "tuple" : "list");
    TORCH_CHECK(elems[index].isTensor(), "forward's output ", index, " is not a tensor");
    return elems[index].toTensor();
  }
  if (out.isGenericDict()) {
    auto dict = out.toGenericDict();
    std::vector<std::optional<std::string>> keys;
    std::vector<c10::IValue> values;
    for (const auto& entry : dict) {
      keys.push_back(entry.key().isString() ? std::optional<std::string>(entry.key().toStringRef())
                                            : std::nullopt);
      values.push_back(entry.value());
    }
    auto pos = dict_position(key, keys);
    TORCH_CHECK(pos.has_value(), "model.output = \"", key, "\": forward's output dict has keys that are not strings");
    TORCH_CHECK(values[*pos].isTensor(), "forward's output '", key, "' is not a tensor");
    return values[*pos].toTensor();
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

// ---------------------------------------------------------------- the forward graph's final op
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

// The keys of a prim::DictConstruct, whose inputs are key, value, key, value...
static std::vector<std::optional<std::string>> dict_construct_keys(torch::jit::Node* n) {
  std::vector<std::optional<std::string>> keys;
  for (size_t i = 0; i + 1 < n->inputs().size(); i += 2) {
    auto iv = torch::jit::toIValue(n->inputs()[i]);
    keys.push_back(iv && iv->isString() ? std::optional<std::string>(iv->toStringRef()) : std::nullopt);
  }
  return keys;
}

// The graph value that `model.output` picks out of `v`, the value forward returns, when `v` is built
// by a tuple, list or dict construct; nullptr when it is not (nothing to pick yet) or when a dict key
// cannot be read from the graph.
static torch::jit::Value* select_in_construct(torch::jit::Value* v, const std::string& key) {
  torch::jit::Node* n = v->node();
  if (n->kind() == c10::prim::TupleConstruct || n->kind() == c10::prim::ListConstruct) {
    const char* what = n->kind() == c10::prim::TupleConstruct ? "tuple" : "list";
    return n->inputs()[sequence_index(key, n->inputs().size(), what)];
  }
  if (n->kind() == c10::prim::DictConstruct) {
    auto pos = dict_position(key, dict_construct_keys(n));
    return pos ? n->inputs()[2 * *pos + 1] : nullptr;
  }
  return nullptr;
}

// The op that produces `v`, walking back through shape-only ops and, for an `If` whose condition is not
// constant, into both branches (the op they agree on). `key` is model.output until a tuple, list or
// dict construct consumes it; nested containers below that give their first entry. `lo`/`hi` carry
// constant clamp bounds.
static std::string producer_op(torch::jit::Value* v, const std::string* key, double* lo, double* hi, int depth) {
  if (depth > 64) return "unknown";
  torch::jit::Node* n = v->node();
  std::string kind = n->kind().toQualString();
  if (kind == "prim::TupleConstruct" || kind == "prim::ListConstruct" || kind == "prim::DictConstruct") {
    torch::jit::Value* picked = select_in_construct(v, key ? *key : std::string());
    if (picked == nullptr) return "unknown";
    return producer_op(picked, nullptr, lo, hi, depth + 1);
  }
  if (passes_range_through(kind) && !n->inputs().empty()) {
    return producer_op(n->inputs()[0], key, lo, hi, depth + 1);
  }
  if (kind == "prim::If") {
    size_t which = v->offset();
    std::string agreed;
    for (auto* block : n->blocks()) {
      if (which >= block->outputs().size()) return kind;
      std::string op = producer_op(block->outputs()[which], key, lo, hi, depth + 1);
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

// ---------------------------------------------------------------- every node, for the side-effect scan
// Calls `visit` on every node of `block` and of the blocks nested in it (If / Loop bodies) and of
// subgraphs held as attributes (fusion groups), depth first.
static void visit_nodes(torch::jit::Block* block, const std::function<void(torch::jit::Node*)>& visit,
                        int depth = 0) {
  TORCH_CHECK(depth < 256, "graph nested more than 256 blocks deep");
  for (torch::jit::Node* n : block->nodes()) {
    visit(n);
    for (torch::jit::Block* sub : n->blocks()) visit_nodes(sub, visit, depth + 1);
    if (n->hasAttribute(c10::attr::Subgraph) && n->kindOf(c10::attr::Subgraph) == torch::jit::AttributeKind::g)
      visit_nodes(n->g(c10::attr::Subgraph)->block(), visit, depth + 1);
  }
}

// Reports each node of `fn`'s graph as sitting in `method` of `module`, and, under the same place, the
// nodes of the free functions and of the (non-module) class methods it calls, recursively: that is
// where they run. Calls into submodules are not followed (each submodule is walked on its own, under its
// own path), nor calls through interfaces (their implementations are walked as modules or through the
// compilation unit).
static void report_function(torch::jit::Function& fn, const std::string& method, const std::string& module,
                            void* ctx, tl_node_cb cb, std::vector<const torch::jit::Function*>& stack) {
  torch::jit::GraphFunction* graph_fn = torch::jit::tryToGraphFunction(fn);
  if (graph_fn == nullptr) return;  // a builtin implemented in C++, not code from the archive
  for (const torch::jit::Function* caller : stack)
    if (caller == &fn) return;  // recursion: already being walked
  TORCH_CHECK(stack.size() < 256, "calls nested more than 256 deep");
  stack.push_back(&fn);
  std::shared_ptr<torch::jit::Graph> graph = graph_fn->graph();
  visit_nodes(graph->block(), [&](torch::jit::Node* n) {
    std::string schema;
    if (const c10::FunctionSchema* s = n->maybeSchema()) {
      std::ostringstream text;
      text << *s;
      schema = text.str();
    }
    cb(ctx, n->kind().toQualString(), schema.c_str(), method.c_str(), module.c_str());
    if (n->kind() == c10::prim::CallFunction && !n->inputs().empty()) {
      if (auto callee = n->input(0)->type()->cast<c10::FunctionType>())
        report_function(*callee->function(), method, module, ctx, cb, stack);
    } else if (n->kind() == c10::prim::CallMethod && !n->inputs().empty()) {
      auto cls = n->input(0)->type()->cast<c10::ClassType>();
      if (cls && !cls->is_module()) {
        if (torch::jit::Function* callee = cls->findMethod(n->s(c10::attr::name)))
          report_function(*callee, method, module, ctx, cb, stack);
      }
    }
  });
  stack.pop_back();
}

static void report_function(torch::jit::Function& fn, const std::string& method, const std::string& module,
                            void* ctx, tl_node_cb cb) {
  std::vector<const torch::jit::Function*> stack;
  report_function(fn, method, module, ctx, cb, stack);
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

// Whether `output_key` names an output of forward, from the declared return type and the returning
// construct, without running anything: a tuple's length is in its type, a dict's keys in its
// prim::DictConstruct. Reports only a wrong selector; whatever it cannot tell here (a list's length, a
// dict built step by step) the forward pass checks with the same rules.
char* tl_check_output(const tl_module* m, const char* output_key) {
  try {
    const std::string key(output_key);
    auto graph = m->module.get_method("forward").graph();
    torch::jit::Value* v = graph->outputs()[0];
    if (auto tuple = v->type()->cast<c10::TupleType>()) {
      sequence_index(key, tuple->elements().size(), "tuple");
    } else {
      select_in_construct(v, key);
    }
    return nullptr;
  } catch (const SelectorError& e) {
    return dup_message(e.what());
  } catch (...) {
    return nullptr;
  }
}

// The op that produces the output `output_key` selects (as the forward pass does). Freezes a clone of
// the module each call: the caller keeps the answer.
char* tl_output_op(const tl_module* m, const char* output_key, char** op, double* lo, double* hi) {
  TL_GUARD({
    auto graph = resolved_forward_graph(m->module);
    const std::string key(output_key);
    *lo = std::nan("");
    *hi = std::nan("");
    *op = dup_message(producer_op(graph->outputs()[0], &key, lo, hi, 0));
  })
}

// The source records (`*.py`) of a TorchScript archive, read with the reader torch::jit::load uses, so
// both see the same files. Runs nothing: this is how `__setstate__`, which load runs, is found first.
char* tl_archive_sources(const char* path, void* ctx, tl_source_cb cb) {
  TL_GUARD({
    caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
    for (const std::string& name : reader.getAllRecords()) {
      if (name.size() < 3 || name.compare(name.size() - 3, 3, ".py") != 0) continue;
      auto record = reader.getRecord(name);
      cb(ctx, name.c_str(), static_cast<const char*>(std::get<0>(record).get()), std::get<1>(record));
    }
  })
}

// Every node of every graph the module can run: each method and forward hook of the module and of
// each submodule (with its path; "" is the root) with the functions they call, then every function of
// the compilation unit that is not one of those methods or hooks (free functions, class methods, what
// no module method reaches), named by its qualified name with an empty module path.
char* tl_graph_nodes(const tl_module* m, void* ctx, tl_node_cb cb) {
  TL_GUARD({
    std::vector<const torch::jit::Function*> walked;
    for (const auto& sub : m->module.named_modules()) {
      for (const torch::jit::Method& method : sub.value.get_methods()) {
        walked.push_back(&method.function());
        report_function(method.function(), method.name(), sub.name, ctx, cb);
      }
      for (torch::jit::Function* hook : sub.value.type()->getForwardPreHooks()) {
        walked.push_back(hook);
        report_function(*hook, "forward pre-hook " + hook->name(), sub.name, ctx, cb);
      }
      for (torch::jit::Function* hook : sub.value.type()->getForwardHooks()) {
        walked.push_back(hook);
        report_function(*hook, "forward hook " + hook->name(), sub.name, ctx, cb);
      }
    }
    for (torch::jit::Function* fn : m->module._ivalue()->compilation_unit()->get_functions()) {
      if (std::find(walked.begin(), walked.end(), fn) != walked.end()) continue;
      report_function(*fn, fn->qualname().qualifiedName(), "", ctx, cb);
    }
  })
}

}  // extern "C"

// ================================================================ nonfinite (issue 10): the first op
// whose output holds NaN or Inf. A copy of the inlined forward graph gets a pass-through op,
// trainlint::probe, after every node that produces a tensor (nested If / Loop blocks included, found
// depth first); the probe records the first node, in execution order, whose output is non-finite. The
// graph runs on the interpreter directly (no executor, so no pass removes or fuses the probes).
#include <torch/csrc/jit/runtime/interpreter.h>
#include <torch/library.h>

namespace tl_probe {
thread_local int64_t first_hit = -1;

at::Tensor probe(const at::Tensor& x, int64_t id) {
  if (first_hit < 0 && x.defined() && (x.is_floating_point() || x.is_complex()) && x.numel() > 0 &&
      !x.isfinite().all().item<bool>()) {
    first_hit = id;
  }
  return x;
}
}  // namespace tl_probe

TORCH_LIBRARY(trainlint, m) { m.def("probe(Tensor(a) x, int id) -> Tensor(a)", tl_probe::probe); }

// The dotted path of the submodule whose method the inlined node came from ("" for the root).
static std::string node_module_path(torch::jit::Node* n) {
  std::string path;
  if (auto cs = n->callstack()) {
    for (const auto& entry : (*cs)->vec()) {
      const auto& info = std::get<2>(entry);
      if (!info) continue;
      std::string name = info->instance_name();
      // A module's own helper methods (Conv2d._conv_forward) run under the instance name SELF.
      if (name.empty() || name == "self" || name == "SELF") continue;
      path += path.empty() ? name : "." + name;
    }
  }
  return path;
}

// The line of source code the node comes from, trimmed, at most 120 characters.
static std::string node_source(torch::jit::Node* n) {
  std::string text;
  try {
    // The model's own Python line when the archive kept its debug records; else the serialized code.
    torch::jit::SourceRange range = n->sourceRange();
    if (auto original = range.findSourceRangeThatGenerated()) range = *original;
    if (!range.source()) return "";
    text = range.source()->get_line(range.source()->lineno_for_offset(range.start())).str();
  } catch (...) {
    return "";
  }
  auto nl = text.find('\n');
  if (nl != std::string::npos) text = text.substr(0, nl);
  auto start = text.find_first_not_of(" \t");
  if (start == std::string::npos) return "";
  text = text.substr(start);
  if (text.size() > 120) text = text.substr(0, 117) + "...";
  return text;
}

// An eval-mode forward without gradients, like tl_predict, through a probed copy of the forward graph:
// `*out` is the selected output; when some op's output held NaN or Inf, `*found` is 1 and `op`,
// `module` and `source` name the first such op (kind, submodule path, source line).
static void first_nonfinite(tl_module* m, const at::Tensor* input, const char* output_key, int* found,
                            char** op, char** module, char** source, at::Tensor** out) {
  {
    *found = 0;
    TrainingFlagsRestorer restore(m->module);
    m->module.train(false);
    at::NoGradGuard no_grad;
    auto graph = m->module.get_method("forward").graph()->copy();
    torch::jit::Inline(*graph);
    std::vector<torch::jit::Node*> nodes;
    visit_nodes(graph->block(), [&](torch::jit::Node* n) {
      if (n->kind() == c10::prim::Constant || n->kind() == c10::prim::GetAttr ||
          n->kind() == c10::prim::Param || n->kind() == c10::prim::Return)
        return;
      nodes.push_back(n);
    });
    const c10::Symbol probe_kind = c10::Symbol::fromQualString("trainlint::probe");
    struct Probed {
      std::string op, module, source;
    };
    std::vector<Probed> probed;
    for (torch::jit::Node* n : nodes) {
      for (torch::jit::Value* v : n->outputs()) {
        if (!v->type()->isSubtypeOf(*c10::TensorType::get())) continue;
        torch::jit::WithInsertPoint guard(n->next());
        torch::jit::Value* id = graph->insertConstant(static_cast<int64_t>(probed.size()));
        torch::jit::Node* p = graph->create(probe_kind, {v, id}, 1);
        p->insertAfter(id->node());
        p->output()->setType(v->type());
        v->replaceAllUsesAfterNodeWith(p, p->output());
        probed.push_back({n->kind().toQualString(), node_module_path(n), node_source(n)});
      }
    }
    torch::jit::Code code(graph, "trainlint_probe");
    torch::jit::InterpreterState state(code);
    torch::jit::Stack stack{m->module._ivalue(), *input};
    tl_probe::first_hit = -1;
    try {
      state.run(stack);
    } catch (...) {
      tl_probe::first_hit = -1;
      throw;
    }
    int64_t hit = tl_probe::first_hit;
    tl_probe::first_hit = -1;
    *out = new at::Tensor(pick_output(stack.back(), std::string(output_key)));
    if (hit >= 0 && hit < static_cast<int64_t>(probed.size())) {
      *found = 1;
      *op = dup_message(probed[hit].op);
      *module = dup_message(probed[hit].module);
      *source = dup_message(probed[hit].source);
    }
  }
}

extern "C" {

char* tl_first_nonfinite(tl_module* m, const at::Tensor* input, const char* output_key, int* found,
                         char** op, char** module, char** source, at::Tensor** out) {
  TL_GUARD(first_nonfinite(m, input, output_key, found, op, module, source, out))
}

}  // extern "C"

// ================================================================ input-normalization (issue 10): the
// scale of every layer's output. A probe after every linear / conv / matmul op of a copy of the inlined
// forward graph records the root-mean-square of its output each time it runs, in execution order.
namespace tl_probe {
thread_local std::vector<std::pair<int64_t, double>>* layer_scales = nullptr;

at::Tensor probe_scale(const at::Tensor& x, int64_t id) {
  if (layer_scales != nullptr && x.defined() && x.is_floating_point() && x.numel() > 0) {
    layer_scales->emplace_back(id, x.detach().to(at::kDouble).square().mean().sqrt().item<double>());
  }
  return x;
}
}  // namespace tl_probe

TORCH_LIBRARY_FRAGMENT(trainlint, m) {
  m.def("probe_scale(Tensor(a) x, int id) -> Tensor(a)", tl_probe::probe_scale);
}

static bool is_layer_op(const std::string& kind) {
  static const char* const ops[] = {"aten::linear",          "aten::conv1d",         "aten::conv2d",
                                    "aten::conv3d",          "aten::_convolution",   "aten::convolution",
                                    "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
                                    "aten::addmm",           "aten::matmul",         "aten::mm",
                                    "aten::bmm",             "aten::einsum"};
  for (const char* op : ops)
    if (kind == op) return true;
  return false;
}

typedef void (*tl_scale_cb)(void* ctx, const char* op, const char* module, double rms);

// Clears the recorder when the forward ends, exceptions included.
struct LayerScaleRecorder {
  explicit LayerScaleRecorder(std::vector<std::pair<int64_t, double>>* into) {
    tl_probe::layer_scales = into;
  }
  ~LayerScaleRecorder() { tl_probe::layer_scales = nullptr; }
  LayerScaleRecorder(const LayerScaleRecorder&) = delete;
  LayerScaleRecorder& operator=(const LayerScaleRecorder&) = delete;
};

// A forward of a deep copy of the module in train mode (BatchNorm normalises with the batch's own
// statistics) without gradients, through a copy of the forward graph with a probe after every layer op:
// `cb` gets each layer op's output rms, op and submodule path, in execution order.
static void layer_scales(const tl_module* m, const at::Tensor* input, void* ctx, tl_scale_cb cb) {
  Module copy = [&] {
    torch::NoGradGuard no_grad;
    return m->module.deepcopy();
  }();
  copy.train(true);
  at::NoGradGuard no_grad;
  auto graph = copy.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  std::vector<torch::jit::Node*> nodes;
  visit_nodes(graph->block(), [&](torch::jit::Node* n) {
    if (is_layer_op(n->kind().toQualString())) nodes.push_back(n);
  });
  const c10::Symbol probe_kind = c10::Symbol::fromQualString("trainlint::probe_scale");
  std::vector<std::pair<std::string, std::string>> probed;
  for (torch::jit::Node* n : nodes) {
    if (n->outputs().size() != 1) continue;
    torch::jit::Value* v = n->output();
    if (!v->type()->isSubtypeOf(*c10::TensorType::get())) continue;
    torch::jit::WithInsertPoint guard(n->next());
    torch::jit::Value* id = graph->insertConstant(static_cast<int64_t>(probed.size()));
    torch::jit::Node* p = graph->create(probe_kind, {v, id}, 1);
    p->insertAfter(id->node());
    p->output()->setType(v->type());
    v->replaceAllUsesAfterNodeWith(p, p->output());
    probed.emplace_back(n->kind().toQualString(), node_module_path(n));
  }
  torch::jit::Code code(graph, "trainlint_probe_scale");
  torch::jit::InterpreterState state(code);
  torch::jit::Stack stack{copy._ivalue(), *input};
  std::vector<std::pair<int64_t, double>> scales;
  {
    LayerScaleRecorder record(&scales);
    state.run(stack);
  }
  for (const auto& [id, rms] : scales) {
    if (id < 0 || id >= static_cast<int64_t>(probed.size())) continue;
    cb(ctx, probed[id].first.c_str(), probed[id].second.c_str(), rms);
  }
}

extern "C" {

char* tl_layer_scales(const tl_module* m, const at::Tensor* input, void* ctx, tl_scale_cb cb) {
  TL_GUARD(layer_scales(m, input, ctx, cb))
}

}  // extern "C"
