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
#include <ATen/CPUGeneratorImpl.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
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
// One record of an archive: its name, its size, and its bytes when it is source or a pickle (else NULL).
typedef void (*tl_record_cb)(void* ctx, const char* name, size_t name_len, uint64_t size, const char* bytes,
                             size_t len);
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

// "torch.classes.ns.Class" when `cls` is a C++ custom class (registered with torch::class_, its methods
// native code), nullopt for TorchScript classes and modules, whose code the scan reads.
static std::optional<std::string> custom_class(const c10::ClassTypePtr& cls) {
  if (!cls || cls->is_module() || !cls->name()) return std::nullopt;
  const std::string q = cls->name()->qualifiedName();
  const std::string prefix = "__torch__.torch.classes.";
  if (q.compare(0, prefix.size(), prefix) == 0 || torch::getCustomClass(q) != nullptr)
    return "torch.classes." + (q.compare(0, prefix.size(), prefix) == 0 ? q.substr(prefix.size()) : q);
  return std::nullopt;
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
    if (n->kind() == c10::prim::CreateObject && n->outputs().size() == 1) {
      if (std::optional<std::string> name = custom_class(n->output()->type()->cast<c10::ClassType>()))
        cb(ctx, (*name + ".__init__").c_str(), "", method.c_str(), module.c_str());
    }
    if (n->kind() == c10::prim::CallFunction && !n->inputs().empty()) {
      if (auto callee = n->input(0)->type()->cast<c10::FunctionType>())
        report_function(*callee->function(), method, module, ctx, cb, stack);
    } else if (n->kind() == c10::prim::CallMethod && !n->inputs().empty()) {
      auto cls = n->input(0)->type()->cast<c10::ClassType>();
      if (std::optional<std::string> name = custom_class(cls)) {
        // A C++ custom class: its methods are native code, reported as "torch.classes.ns.Class.method".
        cb(ctx, (*name + "." + n->s(c10::attr::name)).c_str(), "", method.c_str(), module.c_str());
      } else if (cls && !cls->is_module()) {
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

// The global CPU generator's state (a byte tensor), and replacing it: checks training side by side on
// a model that draws random numbers each keep the state as their own between forwards.
char* tl_generator_state(at::Tensor** out) {
  TL_GUARD({
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    *out = new at::Tensor(gen.get_state());
  })
}

char* tl_set_generator_state(const at::Tensor* state) {
  TL_GUARD({
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
  })
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
// `*selector` is set to 1 when the message is the user's `model.output` naming no output, and left 0
// when the graph cannot be read (no forward method, a libtorch error): both are errors.
char* tl_check_output(const tl_module* m, const char* output_key, int* selector) {
  *selector = 0;
  try {
    const std::string key(output_key);
    auto graph = m->module.get_method("forward").graph();
    if (graph->outputs().empty()) return dup_message("forward returns nothing");
    torch::jit::Value* v = graph->outputs()[0];
    if (auto tuple = v->type()->cast<c10::TupleType>()) {
      sequence_index(key, tuple->elements().size(), "tuple");
    } else {
      select_in_construct(v, key);
    }
    return nullptr;
  } catch (const SelectorError& e) {
    *selector = 1;
    return dup_message(e.what());
  } catch (const c10::Error& e) {
    return dup_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_message(e.what());
  } catch (...) {
    return dup_message("unknown C++ exception in libtorch");
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
// Every record of the archive at `path` as libtorch's own reader lists it (its names, without the archive's
// folder), with its size, and with its bytes when libtorch could read it as source or as a pickle: a name
// ending in ".py" or ".pkl" in any case, since libtorch finds records by case-insensitive names. Source
// and pickles above `max_read` bytes are listed without bytes. Runs nothing: no pickle is unpickled and
// no source compiled.
char* tl_archive_records(const char* path, uint64_t max_read, void* ctx, tl_record_cb cb) {
  TL_GUARD({
    auto ends_with = [](const std::string& name, const char* suffix) {
      size_t n = std::strlen(suffix);
      if (name.size() < n) return false;
      for (size_t i = 0; i < n; ++i)
        if (std::tolower(static_cast<unsigned char>(name[name.size() - n + i])) != suffix[i]) return false;
      return true;
    };
    caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
    for (const std::string& name : reader.getAllRecords()) {
      uint64_t size = reader.getRecordSize(name);
      if ((ends_with(name, ".py") || ends_with(name, ".pkl")) && size <= max_read) {
        auto record = reader.getRecord(name);
        const char* bytes = static_cast<const char*>(std::get<0>(record).get());
        // An empty record may come without a buffer; NULL would mean "not read".
        cb(ctx, name.c_str(), name.size(), size, bytes != nullptr ? bytes : "", std::get<1>(record));
      } else {
        cb(ctx, name.c_str(), name.size(), size, nullptr, 0);
      }
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

// ================================================================ module graph (graph view, unused-parameters,
// shared-batchnorm). A copy of forward's graph is inlined here call by call, so each submodule call site
// is known with the module it calls (from the prim::GetAttr chain that produced the module value), the
// call sites around it, whether it sits in a loop or a branch, and the values it returns. Dataflow
// between leaf calls (modules that call no other module) is followed through every op in between;
// `aten::detach` marks what flows through it. The attributes read on any path (both branches of every
// If) are recorded. With an input, the inlined graph runs once (eval mode, no grad, flags restored) and
// returns the outputs of the top-level calls as well, for their shapes.
#include <torch/csrc/jit/runtime/interpreter.h>

#include <map>
#include <set>
#include <unordered_map>

namespace tl_graph {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// Where a value comes from: call ids (-1 is the model input) with whether every path from that call
// passes through detach.
using Producers = std::map<int, bool>;

// At most this many producers per value: the most recent calls (highest ids) are kept. A residual stream
// (`x = x + layer(x)` over N layers) otherwise carries every earlier call to every later one, N²/2 edges
// (50 million for 10,000 layers); the edges only draw the graph, and the newest inputs are the ones it shows.
// DenseNet's largest dense block concatenates 48 layers: its oldest inputs lose their edges, nothing else.
static constexpr size_t kMaxProducers = 32;

static void merge(Producers& into, const Producers& from) {
  for (const auto& [id, detached] : from) {
    auto it = into.find(id);
    if (it == into.end()) into.emplace(id, detached);
    else it->second = it->second && detached;
  }
  while (into.size() > kMaxProducers) into.erase(into.begin());
}

struct Call {
  int id = 0;
  int parent = -1;
  std::string module, kind, method, where, branch, shape;
  bool leaf = true;
  bool in_loop = false;
  std::vector<Value*> outputs;
};

static std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

static std::string join_path(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }

// Where a call sits in the user's source, as `file:line:column` (the original Python when the archive has
// debug info), or "" when the graph does not say.
static std::string source_of(Node* n) {
  auto range = n->sourceRange();
  if (auto original = range.findSourceRangeThatGenerated()) range = *original;
  if (auto flc = range.file_line_col()) {
    const std::string& file = std::get<0>(*flc);
    if (file.empty() || std::get<1>(*flc) == 0) return "";  // traced graphs say ":0:0"
    auto slash = file.rfind('/');
    return (slash == std::string::npos ? file : file.substr(slash + 1)) + ":" + std::to_string(std::get<1>(*flc)) +
           ":" + std::to_string(std::get<2>(*flc));
  }
  return "";
}

static std::string shape_of(const c10::IValue& v, int depth = 0) {
  if (v.isTensor()) {
    std::string s = "[";
    auto sizes = v.toTensor().sizes();
    for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
    return s + "]";
  }
  if (depth < 2 && (v.isTuple() || v.isList())) {
    std::vector<c10::IValue> items;
    if (v.isTuple()) items = v.toTupleRef().elements().vec();
    else items = v.toListRef().vec();
    std::string s = "(";
    for (size_t i = 0; i < items.size() && i < 4; ++i) s += (i ? ", " : "") + shape_of(items[i], depth + 1);
    if (items.size() > 4) s += ", …";
    return s + ")";
  }
  return "";
}

struct Walker {
  Module root;
  std::shared_ptr<Graph> graph;
  std::unordered_map<Value*, std::string> module_of;
  std::unordered_map<Value*, Producers> producers;
  std::vector<Call> calls;
  std::map<std::pair<int, int>, bool> edges;  // (from, to) -> detached on every path
  std::set<std::string> reads;                // attributes read: "path.name"
  std::set<std::string> list_reads;           // modules that read a list/tuple attribute (LSTM's _flat_weights)
  std::set<std::string> opaque;               // modules used in ways the walk cannot follow
  std::vector<std::string> unresolved;        // why the graph may be incomplete
  std::vector<int> stack;                     // enclosing calls
  std::vector<std::string> branch;            // "if-id:block" of the enclosing If blocks
  Producers to_output;                        // what reaches forward's output
  int ifs = 0;
  int loops = 0;
  size_t inlined = 0;
  // Bools known when the graph is walked: constants, a module's bool attribute (`self.concat`), and
  // `not` of those. An `if` on one runs one branch only: the other is labelled "id:dead".
  std::unordered_map<Value*, bool> known_bool;
  // Attribute names that some method assigns (prim::SetAttr): their values are not fixed.
  std::set<std::string> assigned;

  std::optional<bool> bool_of(Value* v) {
    auto it = known_bool.find(v);
    if (it != known_bool.end()) return it->second;
    if (v->node()->kind() == c10::prim::Constant) {
      auto c = torch::jit::toIValue(v);
      if (c && c->isBool()) return c->toBool();
    }
    return std::nullopt;
  }

  // The value of bool attribute `name` of the module at `path` (path "" is the root), if it is one.
  std::optional<bool> bool_attribute(const std::string& path, const std::string& name) {
    try {
      Module m = root;
      size_t start = 0;
      while (start < path.size()) {
        size_t dot = path.find('.', start);
        std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        auto sub = m.attr(part);
        if (!sub.isModule()) return std::nullopt;
        m = sub.toModule();
        if (dot == std::string::npos) break;
        start = dot + 1;
      }
      if (!m.hasattr(name)) return std::nullopt;
      auto v = m.attr(name);
      if (v.isBool()) return v.toBool();
    } catch (...) {
    }
    return std::nullopt;
  }

  // The producers of each element of a tuple built in the graph, so unpacking it keeps them apart.
  std::unordered_map<Value*, std::vector<Producers>> tuple_elems;

  Producers of(Value* v) {
    auto it = producers.find(v);
    return it == producers.end() ? Producers{} : it->second;
  }

  // Tuple construction and unpacking keep each element's producers; other nodes join their inputs'.
  bool tuples(Node* n) {
    if (n->kind() == c10::prim::TupleConstruct) {
      std::vector<Producers> elems;
      Producers all;
      for (Value* v : n->inputs()) {
        elems.push_back(of(v));
        merge(all, elems.back());
      }
      tuple_elems[n->output()] = elems;
      producers[n->output()] = all;
      return true;
    }
    auto it = n->inputs().empty() ? tuple_elems.end() : tuple_elems.find(n->input(0));
    if (it == tuple_elems.end()) return false;
    if (n->kind() == c10::prim::TupleUnpack && n->outputs().size() == it->second.size()) {
      for (size_t i = 0; i < n->outputs().size(); ++i) producers[n->output(i)] = it->second[i];
      return true;
    }
    if (n->kind() == c10::prim::TupleIndex && n->inputs().size() == 2) {
      auto index = torch::jit::toIValue(n->input(1));
      if (index && index->isInt()) {
        int64_t i = index->toInt();
        if (i < 0) i += static_cast<int64_t>(it->second.size());
        if (i >= 0 && i < static_cast<int64_t>(it->second.size())) {
          producers[n->output()] = it->second[i];
          return true;
        }
      }
    }
    return false;
  }

  // After a leaf call: what it returns comes from the call, except values that do not depend on its
  // inputs at all (a traced BatchNorm also returns its updated num_batches_tracked: state, not data).
  void from_call(Value* v, int id) {
    auto elems = tuple_elems.find(v);
    if (elems != tuple_elems.end()) {
      for (auto& e : elems->second) e = e.empty() ? Producers{} : Producers{{id, false}};
    }
    producers[v] = Producers{{id, false}};
  }

  // Submodules by path, each parent's children listed once: `Module::attr` scans the class's attributes
  // by name, so looking up each of a Sequential's 10,000 children that way costs 10,000² string compares.
  std::unordered_map<std::string, Module> submodules;
  std::set<std::string> listed;  // paths whose children are in `submodules`

  std::optional<Module> module_at(const std::string& path) {
    if (path.empty()) return root;
    auto hit = submodules.find(path);
    if (hit != submodules.end()) return hit->second;
    Module m = root;
    std::string at;
    size_t start = 0;
    while (start <= path.size()) {
      size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (listed.insert(at).second)
        for (const auto& child : m.named_children()) submodules.emplace(join_path(at, child.name), child.value);
      at = join_path(at, part);
      auto it = submodules.find(at);
      if (it == submodules.end()) return std::nullopt;
      m = it->second;
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    return m;
  }

  void range(Node* first, Node* stop) {
    for (Node* n = first; n != stop;) {
      Node* next = n->next();
      node(n);
      n = next;
    }
  }

  void block(Block* b) { range(b->param_node()->next(), b->return_node()); }

  void generic(Node* n) {
    if (tuples(n)) return;
    Producers in;
    for (Value* v : n->inputs()) merge(in, of(v));
    for (Block* b : n->blocks()) block(b);
    if (n->kind() == c10::aten::detach)
      for (auto& [id, detached] : in) detached = true;
    for (Value* out : n->outputs()) producers[out] = in;
    // An op that writes into an input (`outs.append(y)`, a list of futures filled in a loop, `x.add_(y)`)
    // passes what it reads on to that input's later uses.
    if (const c10::FunctionSchema* schema = n->maybeSchema()) {
      for (size_t i = 0; i < schema->arguments().size() && i < n->inputs().size(); ++i) {
        const c10::AliasInfo* alias = schema->arguments()[i].alias_info();
        if (alias != nullptr && alias->isWrite()) merge(producers[n->input(i)], in);
      }
    }
  }

  // What an inlined call's outputs were replaced by (the call node and its values are gone).
  std::unordered_map<Value*, Value*> replaced;

  Value* resolve(Value* v) {
    for (auto it = replaced.find(v); it != replaced.end(); it = replaced.find(v)) v = it->second;
    return v;
  }

  // Inlines call `n` and records what its outputs became; returns them.
  std::vector<Value*> inline_call(Node* n, torch::jit::GraphFunction* fn) {
    std::vector<Value*> old(n->outputs().begin(), n->outputs().end());
    std::vector<Value*> outs = torch::jit::inlineCallTo(n, fn, /*inline_optimized_graph=*/false);
    for (size_t i = 0; i < old.size() && i < outs.size(); ++i) {
      // A freed value's address can come back for a new one: forget what was known about it.
      producers.erase(old[i]);
      tuple_elems.erase(old[i]);
      module_of.erase(old[i]);
      if (old[i] != outs[i]) replaced[old[i]] = outs[i];
    }
    return outs;
  }

  void node(Node* n) {
    for (Value* out : n->outputs()) {
      producers.erase(out);
      tuple_elems.erase(out);
      module_of.erase(out);
      replaced.erase(out);
    }
    auto kind = n->kind();
    if (kind == c10::prim::GetAttr) {
      auto it = module_of.find(n->input(0));
      if (it == module_of.end()) return generic(n);
      std::string name = join_path(it->second, n->s(c10::attr::name));
      auto cls = n->output()->type()->cast<c10::ClassType>();
      if (cls && cls->is_module()) {
        module_of[n->output()] = name;
      } else {
        reads.insert(name);
        if (!assigned.count(n->s(c10::attr::name))) {
          if (auto b = bool_attribute(it->second, n->s(c10::attr::name))) known_bool[n->output()] = *b;
        }
        auto type = n->output()->type();
        if (type->kind() == c10::TypeKind::ListType || type->kind() == c10::TypeKind::TupleType)
          list_reads.insert(it->second);
        if (n->output()->type()->cast<c10::InterfaceType>()) opaque.insert(name);
      }
      return;
    }
    if (kind == c10::prim::ModuleContainerIndex) {
      auto it = module_of.find(n->input(0));
      if (it != module_of.end()) opaque.insert(it->second);
      else unresolved.push_back("a module container indexed at run time");
      return generic(n);
    }
    if (kind == c10::prim::CallMethod) return call(n);
    if (n->hasAttribute(c10::attr::Subgraph) && n->kindOf(c10::attr::Subgraph) == torch::jit::AttributeKind::g)
      return subgraph(n);
    if (kind == c10::aten::__not__ && n->inputs().size() == 1) {
      if (auto b = bool_of(n->input(0))) known_bool[n->output()] = !*b;
      return generic(n);
    }
    if (kind == c10::prim::If) {
      Producers cond = of(n->input(0));
      int id = ifs++;
      // On a condition fixed when the model was saved (`if self.concat:`) one block runs: it is walked
      // unconditionally, the other under a "dead" label (its calls never run; what it reads still counts
      // as read, so a layer kept for another configuration is not called unused).
      std::optional<bool> fixed = n->blocks().size() == 2 ? bool_of(n->input(0)) : std::nullopt;
      std::vector<Producers> outs(n->outputs().size());
      for (size_t b = 0; b < n->blocks().size(); ++b) {
        bool taken = fixed && b == (*fixed ? 0u : 1u);
        bool dead = fixed && !taken;
        if (!taken) branch.push_back(std::to_string(id) + ":" + (dead ? std::string("dead") : std::to_string(b)));
        block(n->blocks()[b]);
        if (!taken) branch.pop_back();
        if (dead) continue;
        auto* blk = n->blocks()[b];
        for (size_t i = 0; i < outs.size() && i < blk->outputs().size(); ++i) merge(outs[i], of(blk->outputs()[i]));
      }
      for (size_t i = 0; i < outs.size(); ++i) producers[n->outputs()[i]] = outs[i];
      return;
    }
    if (kind == c10::prim::Loop && n->blocks().size() == 1) {
      Block* body = n->blocks()[0];
      // inputs: max trip count, condition, carried...; body inputs: iteration, carried...
      for (size_t k = 0; k + 2 < n->inputs().size() && k + 1 < body->inputs().size(); ++k)
        producers[body->inputs()[k + 1]] = of(n->inputs()[k + 2]);
      ++loops;
      block(body);
      --loops;
      for (size_t k = 0; k < n->outputs().size(); ++k) {
        Producers p = k + 2 < n->inputs().size() ? of(n->inputs()[k + 2]) : Producers{};
        if (k + 1 < body->outputs().size()) merge(p, of(body->outputs()[k + 1]));
        producers[n->outputs()[k]] = p;
      }
      return;
    }
    generic(n);
  }

  // A node that runs a graph of its own: `torch.jit.fork(self.head, x)` is a prim::fork whose Subgraph
  // calls the head, with the fork's inputs as the subgraph's; its output (a future) carries what the
  // subgraph returns, and `aten::wait` passes that on like any other op. The subgraph is walked in place
  // (its calls inlined into it, on a private copy), so its calls, reads and dataflow count as forward's.
  void subgraph(Node* n) {
    std::shared_ptr<Graph> g = n->g(c10::attr::Subgraph)->copy();
    n->g_(c10::attr::Subgraph, g);
    for (size_t i = 0; i < g->inputs().size() && i < n->inputs().size(); ++i) {
      Value* outer = n->input(i);
      Value* inner = g->inputs()[i];
      auto m = module_of.find(outer);
      if (m != module_of.end()) module_of[inner] = m->second;
      producers[inner] = of(outer);
    }
    block(g->block());
    Producers out;
    for (Value* v : g->outputs()) merge(out, of(v));
    for (Value* v : n->outputs()) producers[v] = out;
  }

  void call(Node* n) {
    auto cls = n->input(0)->type()->cast<c10::ClassType>();
    auto it = module_of.find(n->input(0));
    if (!cls || !cls->is_module()) {
      if (it != module_of.end()) opaque.insert(it->second);  // an interface: the implementation is unknown
      return generic(n);
    }
    if (it == module_of.end()) {
      unresolved.push_back("a call on a module value the graph does not name");
      return generic(n);
    }
    const std::string path = it->second;
    const std::string method = n->s(c10::attr::name);
    auto module = module_at(path);
    torch::jit::Function* fn = module ? module->type()->findMethod(method) : nullptr;
    torch::jit::GraphFunction* graph_fn = fn ? torch::jit::tryToGraphFunction(*fn) : nullptr;
    if (graph_fn == nullptr || stack.size() > 200 || ++inlined > 100000) {
      opaque.insert(path);
      return generic(n);
    }
    // A module calling its own methods (BatchNorm's _check_input_dim, a helper of forward) stays one
    // call: inline it in place.
    bool own_method = stack.empty() ? path.empty() : calls[stack.back()].module == path;
    if (own_method) {
      Node* before = n->prev();
      Node* after = n->next();
      inline_call(n, graph_fn);
      range(before->next(), after);
      return;
    }
    Call c;
    c.id = static_cast<int>(calls.size());
    c.parent = stack.empty() ? -1 : stack.back();
    c.module = path;
    c.kind = module_kind(*module);
    c.method = method;
    c.where = source_of(n);
    c.in_loop = loops > 0;
    for (size_t i = 0; i < branch.size(); ++i) c.branch += (i ? "/" : "") + branch[i];
    if (c.parent >= 0) calls[c.parent].leaf = false;
    Producers args;
    for (size_t i = 1; i < n->inputs().size(); ++i) merge(args, of(n->input(i)));
    calls.push_back(c);

    Node* before = n->prev();
    Node* after = n->next();
    std::vector<Value*> outs = inline_call(n, graph_fn);
    stack.push_back(c.id);
    range(before->next(), after);
    stack.pop_back();
    for (Value*& v : outs) v = resolve(v);
    calls[c.id].outputs = outs;
    if (calls[c.id].leaf) {
      for (const auto& [from, detached] : args) {
        auto e = edges.find({from, c.id});
        if (e == edges.end()) edges.emplace(std::make_pair(from, c.id), detached);
        else e->second = e->second && detached;
      }
      for (Value* v : outs) from_call(v, c.id);
    }
  }

  // The outputs of every call whose value lives in the top-level block, returned next to forward's own
  // output by one run of the inlined graph: their shapes on `input`.
  void shapes(const at::Tensor& input) {
    std::vector<std::pair<int, Value*>> wanted;
    for (const Call& c : calls) {
      if (c.outputs.size() != 1) continue;
      Value* v = resolve(c.outputs[0]);
      if (v->node()->owningBlock() == graph->block()) wanted.emplace_back(c.id, v);
    }
    if (wanted.empty()) return;
    std::vector<Value*> values;
    for (auto& w : wanted) values.push_back(w.second);
    Node* extra = graph->createTuple(values);
    extra->insertBefore(graph->return_node());
    Node* both = graph->createTuple({graph->outputs()[0], extra->output()});
    both->insertBefore(graph->return_node());
    graph->eraseOutput(0);
    graph->registerOutput(both->output());
    TrainingFlagsRestorer restore(root);
    root.train(false);
    torch::NoGradGuard no_grad;
    torch::jit::Code code(graph, "trainlint_graph_view");
    torch::jit::InterpreterState state(code);
    torch::jit::Stack stack{root._ivalue(), input};
    state.run(stack);
    auto result = stack.back().toTupleRef().elements()[1].toTupleRef().elements();
    for (size_t i = 0; i < wanted.size() && i < result.size(); ++i) calls[wanted[i].first].shape = shape_of(result[i]);
  }

  std::string json(const std::string& shape_error) const {
    std::ostringstream o;
    o << "{\"calls\":[";
    for (size_t i = 0; i < calls.size(); ++i) {
      const Call& c = calls[i];
      o << (i ? "," : "") << "{\"id\":" << c.id << ",\"parent\":" << (c.parent < 0 ? "null" : std::to_string(c.parent))
        << ",\"module\":" << json_string(c.module) << ",\"kind\":" << json_string(c.kind)
        << ",\"method\":" << json_string(c.method) << ",\"source\":" << json_string(c.where)
        << ",\"branch\":" << json_string(c.branch) << ",\"leaf\":" << (c.leaf ? "true" : "false")
        << ",\"in_loop\":" << (c.in_loop ? "true" : "false") << ",\"shape\":" << json_string(c.shape) << "}";
    }
    o << "],\"edges\":[";
    bool first = true;
    auto edge = [&](int from, int to, bool detached) {
      o << (first ? "" : ",") << "{\"from\":" << (from < 0 ? "null" : std::to_string(from))
        << ",\"to\":" << (to < 0 ? "null" : std::to_string(to)) << ",\"detached\":" << (detached ? "true" : "false") << "}";
      first = false;
    };
    for (const auto& [key, detached] : edges) edge(key.first, key.second, detached);
    for (const auto& [from, detached] : to_output) edge(from, -2, detached);
    auto list = [&](const char* name, const auto& items) {
      o << ",\"" << name << "\":[";
      bool f = true;
      for (const auto& s : items) {
        o << (f ? "" : ",") << json_string(s);
        f = false;
      }
      o << "]";
    };
    o << "]";
    list("reads", reads);
    list("list_reads", list_reads);
    list("opaque", opaque);
    list("unresolved", unresolved);
    o << ",\"shape_error\":" << json_string(shape_error) << "}";
    return o.str();
  }
};

// The walk of forward (and, with an input, the shapes) as JSON.
static std::string module_graph_json(Module& module, const at::Tensor* input) {
  Walker w;
  w.root = module;
  w.graph = module.get_method("forward").graph()->copy();
  // The model input is forward's first argument after self; later arguments count as inputs too.
  Producers model_input{{-1, false}};
  for (size_t i = 1; i < w.graph->inputs().size(); ++i) w.producers[w.graph->inputs()[i]] = model_input;
  w.module_of[w.graph->inputs()[0]] = "";
  // Attribute names that any method of any module assigns: those are not fixed, whatever their value now.
  for (const auto& sub : module.modules()) {
    for (const auto& method : sub.get_methods()) {
      visit_nodes(method.graph()->block(), [&](Node* n) {
        if (n->kind() == c10::prim::SetAttr) w.assigned.insert(n->s(c10::attr::name));
      });
    }
  }
  w.block(w.graph->block());
  for (Value* out : w.graph->outputs()) merge(w.to_output, w.of(out));
  std::string shape_error;
  if (input != nullptr) {
    try {
      w.shapes(*input);
    } catch (const c10::Error& e) {
      shape_error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      shape_error = e.what();
    }
  }
  return w.json(shape_error);
}

}  // namespace tl_graph

extern "C" {

// The module-level dataflow graph of forward as JSON (see tl_graph::Walker); `input` may be NULL (no
// shapes). A forward that fails on `input` leaves the shapes out and says why in "shape_error".
char* tl_module_graph(tl_module* m, const at::Tensor* input, char** json) {
  TL_GUARD({ *json = dup_message(tl_graph::module_graph_json(m->module, input)); })
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
// Routes every later use of `v` (the output of `n`) through `kind(v, id)`, a pass-through op that
// records what it sees under `id`.
static void insert_probe(torch::jit::Graph& graph, torch::jit::Node* n, torch::jit::Value* v,
                         c10::Symbol kind, int64_t id) {
  torch::jit::WithInsertPoint guard(n->next());
  torch::jit::Value* id_value = graph.insertConstant(id);
  torch::jit::Node* p = graph.create(kind, {v, id_value}, 1);
  p->insertAfter(id_value->node());
  p->output()->setType(v->type());
  v->replaceAllUsesAfterNodeWith(p, p->output());
}

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
        tl_probe::insert_probe(*graph, n, v, probe_kind, static_cast<int64_t>(probed.size()));
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
    tl_probe::insert_probe(*graph, n, v, probe_kind, static_cast<int64_t>(probed.size()));
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
