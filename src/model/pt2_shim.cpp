// The torch.export (.pt2) interpreter (issue 25, stage 2), ported from spikes/pt2/interp.cpp: runs the
// training-IR graph node by node through c10::Dispatcher::findSchemaOrThrow(...).callBoxed(stack), so
// autograd records every op as in eager PyTorch.
//
// Rust (src/model/pt2_run.rs) lowers the typed program that src/model/pt2.rs read into the line format
// below (already checked: op allowlist, enums in c10's numbering) and owns the weight tensors; this file
// resolves every op's schema once (tl_pt2_compile) and runs the program on an input and a weight array
// (tl_pt2_run_observed), so one compiled program serves the model and each trainable copy.
//
// One record per line, tokens separated by single spaces (names never hold spaces):
//   input weight NAME IDX                      graph input NAME is weights[IDX] at run time
//   input user NAME C10DTYPE NDIM DIM*NDIM     DIM: an int, or a symbol of a `range` line
//   range SYMBOL MIN MAX                       MAX -1: unbounded
//   node NS::NAME OVERLOAD NIN (ARGNAME VALUE)*NIN NOUT VALUE*NOUT
//   symop add|sub|mul|floordiv|mod|neg NIN (ARGNAME VALUE)*NIN 1 S:NAME
//   hop set_grad 0|1 NARGS VALUE*NARGS NSUBIN VALUE*NSUBIN  (body) endhop NSUBOUT VALUE* NOUT VALUE*
//   hop autocast C10DTYPE ENABLED CACHE NARGS ...          (body) endhop ...
//   cond T:PRED TL:OPERANDS NOUT VALUE*NOUT, twice (branch NSUBIN VALUE* (body) endbranch NSUBOUT
//        VALUE*), endcond
//   output user NAME
// VALUE: N | T:name | I:int | F:float | B:0|1 | S:symname | IL:a,b | FL:a,b | BL:0,1 | SL:i8,nsym |
//        TL:a,b | OTL:a,_,b | OT:name|OT:_ | ST:c10code | MF:c10code | LY:c10code | DV:type[:index] |
//        STR:%XX-escaped
//
// Every extern "C" entry returns NULL on success or a malloc'd error message (freed with
// tl_free_string, defined in shim.cpp): no exception crosses into Rust.
#include <ATen/ScalarOps.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/script.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

using c10::IValue;

namespace tl_pt2 {

static char* dup_message(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

#define TL_PT2_GUARD(body)                                   \
  try {                                                      \
    body;                                                    \
    return nullptr;                                          \
  } catch (const c10::Error& e) {                            \
    return tl_pt2::dup_message(e.what_without_backtrace());          \
  } catch (const std::exception& e) {                        \
    return tl_pt2::dup_message(e.what());                            \
  } catch (...) {                                            \
    return tl_pt2::dup_message("unknown C++ exception in libtorch"); \
  }

[[noreturn]] static void fail(const std::string& m) { throw std::runtime_error(m); }

static std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

// std::stoll / std::stod throw std::invalid_argument with a bare "stoll": name the token instead.
static int64_t to_int(const std::string& s) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size()) fail("lowered program: `" + s + "` is not an integer");
  return v;
}

static double to_float(const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size()) fail("lowered program: `" + s + "` is not a number");
  return v;
}

struct ArgPlan {
  enum Kind { Const, Slot, SymList, TensorList, OptTensorList } kind = Const;
  IValue value;
  int slot = -1;
  std::vector<std::pair<int, int64_t>> items;
};

struct OutPlan {
  enum Kind { Skip, One, ListSplit } kind = Skip;
  std::vector<int> slots;
};

struct PNode {
  std::string qualname, overload;
  std::optional<c10::OperatorHandle> op;
  char symop = 0;
  std::vector<ArgPlan> args;
  std::vector<OutPlan> outs;
  bool hop = false, grad_enabled = true;
  bool autocast = false, autocast_enabled = false, autocast_cache = true;
  c10::ScalarType autocast_dtype = c10::kBFloat16;
  std::vector<int> hop_outer_in, hop_inner_in, hop_inner_out;
  std::vector<PNode> body;
  bool cond = false;
  int cond_pred = -1;
  std::vector<PNode> branches;
};

struct Program {
  std::unordered_map<std::string, int> slot_of;
  int nslots = 0;
  std::vector<std::pair<int, size_t>> weight_inputs;  // slot, weight index
  std::vector<PNode> nodes;
  int user_out = -1, user_in = -1;
  int user_dtype = -1;
  std::vector<std::string> user_dims;
  std::map<std::string, std::pair<int64_t, int64_t>> ranges;
  std::vector<PNode> open_hops;
  std::vector<std::vector<int>> drop;  // per top-level node: the slots it reads last (last_reads)
  std::vector<PNode>& current() { return open_hops.empty() ? nodes : open_hops.back().body; }

  int slot(const std::string& name) {
    auto it = slot_of.find(name);
    if (it != slot_of.end()) return it->second;
    slot_of[name] = nslots;
    return nslots++;
  }
  int existing(const std::string& name) {
    auto it = slot_of.find(name);
    if (it == slot_of.end()) fail("lowered program: use of undefined value " + name);
    return it->second;
  }
  static std::string after(const std::string& tok, const char* prefix) {
    size_t n = std::strlen(prefix);
    if (tok.compare(0, n, prefix) != 0) fail("lowered program: expected " + std::string(prefix) + "..., got " + tok);
    return tok.substr(n);
  }

  // One serialized value, as the schema argument `a` wants it.
  ArgPlan plan_arg(const std::string& tok, const c10::Argument& a) {
    ArgPlan p;
    c10::TypePtr ty = a.real_type();
    if (auto opt = ty->cast<c10::OptionalType>()) ty = opt->getElementType();
    auto colon = tok.find(':');
    std::string k = tok.substr(0, colon), v = colon == std::string::npos ? "" : tok.substr(colon + 1);
    bool wants_tensor = ty->kind() == c10::TypeKind::TensorType;
    if (k == "N") {
      p.value = IValue();
    } else if (k == "T") {
      p.kind = ArgPlan::Slot;
      p.slot = existing(v);
    } else if (k == "OT") {
      if (v == "_") {
        p.value = IValue();
      } else {
        p.kind = ArgPlan::Slot;
        p.slot = existing(v);
      }
    } else if ((k == "I" || k == "F" || k == "B") && wants_tensor) {
      // A Python number where the schema wants a Tensor (add_.Tensor(buf, 1)): a 0-dim "wrapped number"
      // tensor, as TorchScript and Python make, so type promotion ignores it.
      c10::Scalar s = k == "I" ? c10::Scalar(to_int(v)) : k == "F" ? c10::Scalar(to_float(v)) : c10::Scalar(v == "1");
      at::Tensor t = at::scalar_to_tensor(s);
      t.unsafeGetTensorImpl()->set_wrapped_number(true);
      p.value = t;
    } else if (k == "I") {
      int64_t i = to_int(v);
      if (ty->kind() == c10::TypeKind::FloatType)
        p.value = (double)i;
      else
        p.value = i;
    } else if (k == "F") {
      p.value = to_float(v);
    } else if (k == "B") {
      p.value = v == "1";
    } else if (k == "S") {
      p.kind = ArgPlan::Slot;
      p.slot = existing(v);
    } else if (k == "IL") {
      c10::List<int64_t> l;
      for (auto& e : split(v, ',')) l.push_back(to_int(e));
      p.value = l;
    } else if (k == "FL") {
      c10::List<double> l;
      for (auto& e : split(v, ',')) l.push_back(to_float(e));
      p.value = l;
    } else if (k == "BL") {
      c10::List<bool> l;
      for (auto& e : split(v, ',')) l.push_back(e == "1");
      p.value = l;
    } else if (k == "SL") {
      p.kind = ArgPlan::SymList;
      for (auto& e : split(v, ',')) {
        if (e.empty()) fail("lowered program: empty SymInt list item");
        p.items.push_back(e[0] == 'n' ? std::make_pair(existing(e.substr(1)), (int64_t)0)
                                      : std::make_pair(-1, to_int(e.substr(1))));
      }
    } else if (k == "TL" || k == "OTL") {
      p.kind = k == "TL" ? ArgPlan::TensorList : ArgPlan::OptTensorList;
      for (auto& e : split(v, ',')) p.items.push_back({e == "_" ? -1 : existing(e), 0});
    } else if (k == "ST" || k == "MF" || k == "LY") {
      p.value = to_int(v);  // c10's numbering (the Rust lowering translates)
    } else if (k == "DV") {
      p.value = c10::Device(v);
    } else if (k == "STR") {
      std::string out;
      for (size_t i = 0; i < v.size(); i++) {
        if (v[i] == '%' && i + 2 < v.size() && std::isxdigit((unsigned char)v[i + 1]) &&
            std::isxdigit((unsigned char)v[i + 2])) {
          out.push_back((char)std::stoi(v.substr(i + 1, 2), nullptr, 16));
          i += 2;
        } else {
          out.push_back(v[i]);
        }
      }
      p.value = out;
    } else {
      fail("lowered program: value kind " + k + " is not supported");
    }
    return p;
  }

  void load(const std::string& text) {
    std::istringstream lines(text);
    std::string line;
    auto count = [](std::istringstream& is) {
      std::string t;
      if (!(is >> t)) fail("lowered program: a record ends early");
      int64_t n = to_int(t);
      if (n < 0 || n > (1 << 24)) fail("lowered program: bad count " + t);
      return (int)n;
    };
    auto word = [](std::istringstream& is) {
      std::string t;
      if (!(is >> t)) fail("lowered program: a record ends early");
      return t;
    };
    while (std::getline(lines, line)) {
      std::istringstream is(line);
      std::string rec;
      if (!(is >> rec)) continue;
      if (rec == "input") {
        std::string kind = word(is), name = word(is);
        int s = slot(name);
        if (kind == "user") {
          user_in = s;
          user_dtype = (int)to_int(word(is));
          int nd = count(is);
          user_dims.resize(nd);
          for (auto& d : user_dims) d = word(is);
        } else if (kind == "weight") {
          int64_t idx = to_int(word(is));
          if (idx < 0) fail("lowered program: negative weight index");
          weight_inputs.push_back({s, (size_t)idx});
        } else {
          fail("lowered program: input kind " + kind);
        }
      } else if (rec == "range") {
        std::string sym = word(is);
        int64_t lo = to_int(word(is)), hi = to_int(word(is));
        ranges[sym] = {lo, hi};
      } else if (rec == "hop") {
        std::string kind = word(is);
        PNode h;
        if (kind == "set_grad") {
          h.qualname = "higher_order.wrap_with_set_grad_enabled";
          h.grad_enabled = to_int(word(is)) != 0;
        } else if (kind == "autocast") {
          h.qualname = "higher_order.wrap_with_autocast";
          h.autocast = true;
          h.autocast_dtype = (c10::ScalarType)to_int(word(is));
          h.autocast_enabled = to_int(word(is)) != 0;
          h.autocast_cache = to_int(word(is)) != 0;
        } else {
          fail("lowered program: hop " + kind + " is not supported");
        }
        h.hop = true;
        int nargs = count(is);
        for (int i = 0; i < nargs; i++) h.hop_outer_in.push_back(existing(after(word(is), "T:")));
        int nin = count(is);
        for (int i = 0; i < nin; i++) h.hop_inner_in.push_back(slot(after(word(is), "T:")));
        if (h.hop_inner_in.size() != h.hop_outer_in.size()) fail(h.qualname + ": subgraph arity differs");
        open_hops.push_back(std::move(h));
      } else if (rec == "cond") {
        PNode c;
        c.qualname = "higher_order.cond";
        c.cond = true;
        c.cond_pred = existing(after(word(is), "T:"));
        for (auto& e : split(after(word(is), "TL:"), ',')) c.hop_outer_in.push_back(existing(e));
        int nout = count(is);
        for (int i = 0; i < nout; i++) c.outs.push_back({OutPlan::One, {slot(after(word(is), "T:"))}});
        open_hops.push_back(std::move(c));
      } else if (rec == "branch") {
        if (open_hops.empty() || !open_hops.back().cond) fail("lowered program: branch outside cond");
        PNode b;
        int nin = count(is);
        for (int i = 0; i < nin; i++) b.hop_inner_in.push_back(slot(after(word(is), "T:")));
        if (b.hop_inner_in.size() != open_hops.back().hop_outer_in.size()) fail("higher_order.cond: branch arity differs");
        open_hops.push_back(std::move(b));
      } else if (rec == "endbranch") {
        if (open_hops.size() < 2) fail("lowered program: endbranch outside cond");
        PNode b = std::move(open_hops.back());
        open_hops.pop_back();
        int nsub = count(is);
        for (int i = 0; i < nsub; i++) b.hop_inner_out.push_back(existing(after(word(is), "T:")));
        if (!open_hops.back().cond || b.hop_inner_out.size() != open_hops.back().outs.size())
          fail("higher_order.cond: branch outputs differ");
        open_hops.back().branches.push_back(std::move(b));
      } else if (rec == "endcond") {
        if (open_hops.empty()) fail("lowered program: endcond without cond");
        PNode c = std::move(open_hops.back());
        open_hops.pop_back();
        if (!c.cond || c.branches.size() != 2) fail("higher_order.cond needs two branches");
        current().push_back(std::move(c));
      } else if (rec == "endhop") {
        if (open_hops.empty() || !open_hops.back().hop) fail("lowered program: endhop without hop");
        PNode h = std::move(open_hops.back());
        open_hops.pop_back();
        int nsub = count(is);
        for (int i = 0; i < nsub; i++) h.hop_inner_out.push_back(existing(after(word(is), "T:")));
        int nout = count(is);
        if (nout != nsub) fail(h.qualname + ": output count differs from the subgraph's");
        for (int i = 0; i < nout; i++) h.outs.push_back({OutPlan::One, {slot(after(word(is), "T:"))}});
        current().push_back(std::move(h));
      } else if (rec == "symop") {
        static const std::map<std::string, char> ops = {{"add", '+'}, {"sub", '-'}, {"mul", '*'},
                                                        {"floordiv", '/'}, {"mod", '%'}, {"neg", 'n'}};
        std::string name = word(is);
        auto op = ops.find(name);
        if (op == ops.end()) fail("_operator." + name + " is not supported");
        PNode n;
        n.qualname = "_operator." + name;
        n.symop = op->second;
        int nin = count(is);
        if (nin != (n.symop == 'n' ? 1 : 2)) fail(n.qualname + ": wrong operand count");
        for (int i = 0; i < nin; i++) {
          word(is);  // the operand's name
          std::string av = word(is);
          ArgPlan p;
          if (av.rfind("S:", 0) == 0) {
            p.kind = ArgPlan::Slot;
            p.slot = existing(av.substr(2));
          } else if (av.rfind("I:", 0) == 0) {
            p.value = to_int(av.substr(2));
          } else {
            fail(n.qualname + ": operand " + av + " is not an int");
          }
          n.args.push_back(p);
        }
        if (count(is) != 1) fail(n.qualname + ": expected one SymInt output");
        n.outs.push_back({OutPlan::One, {slot(after(word(is), "S:"))}});
        current().push_back(std::move(n));
      } else if (rec == "node") {
        std::string q = word(is), ov = word(is);
        int nin = count(is);
        std::map<std::string, std::string> named;
        for (int i = 0; i < nin; i++) {
          std::string an = word(is);
          named[an] = word(is);
        }
        PNode n;
        n.op = c10::Dispatcher::singleton().findSchemaOrThrow(q.c_str(), ov == "default" ? "" : ov.c_str());
        n.qualname = q;
        n.overload = ov;
        const auto& schema = n.op->schema();
        for (const auto& a : schema.arguments()) {
          auto it = named.find(a.name());
          if (it != named.end()) {
            n.args.push_back(plan_arg(it->second, a));
            named.erase(it);
          } else if (a.default_value()) {
            ArgPlan p;
            p.value = *a.default_value();
            n.args.push_back(p);
          } else {
            fail(q + "." + ov + ": missing argument " + a.name());
          }
        }
        if (!named.empty()) fail(q + "." + ov + ": unknown argument " + named.begin()->first);
        int nout = count(is);
        if ((size_t)nout != schema.returns().size()) fail(q + "." + ov + ": output count differs from the schema");
        for (int i = 0; i < nout; i++) {
          std::string o = word(is);
          OutPlan op;
          if (o == "N") {
            op.kind = OutPlan::Skip;
          } else if (o.rfind("T:", 0) == 0 || o.rfind("S:", 0) == 0) {
            op.kind = OutPlan::One;
            op.slots.push_back(slot(o.substr(2)));
          } else if (o.rfind("TL:", 0) == 0) {
            op.kind = OutPlan::ListSplit;
            for (auto& e : split(o.substr(3), ',')) op.slots.push_back(slot(e));
          } else {
            fail(q + "." + ov + ": output kind " + o + " is not supported");
          }
          n.outs.push_back(op);
        }
        current().push_back(std::move(n));
      } else if (rec == "output") {
        std::string kind = word(is), name = word(is);
        if (kind != "user") fail("lowered program: output kind " + kind);
        if (user_out >= 0) fail("lowered program: more than one user output");
        user_out = existing(name);
      } else {
        fail("lowered program: unknown record " + rec);
      }
    }
    if (!open_hops.empty()) fail("lowered program: unterminated subgraph");
    if (user_in < 0 || user_out < 0) fail("lowered program: no user input or output");
    drop = last_reads();
  }

  // Called after each top-level node with its index and its first output, when that is a tensor.
  typedef void (*Observer)(void* ctx, size_t node, at::Tensor* value);

  // Runs `list` in order. At the top level (`drop` given), each value is dropped from `env` after the
  // node that reads it last, as TorchScript frees it: an eval forward then holds only the live values.
  void run_nodes(std::vector<PNode>& list, std::vector<IValue>& env, Observer observe = nullptr,
                 void* ctx = nullptr, const std::vector<std::vector<int>>* drop = nullptr) {
    torch::jit::Stack stack;
    for (size_t index = 0; index < list.size(); index++) {
      run_one(list[index], env, stack);
      if (observe != nullptr) notify(list[index], index, env, observe, ctx);
      if (drop != nullptr)
        for (int slot : (*drop)[index]) env[slot] = IValue();
    }
  }

  void run_one(PNode& n, std::vector<IValue>& env, torch::jit::Stack& stack) {
    if (n.cond) {
      // the branch the predicate picks runs inline; autograd records its ops as in eager
      PNode& br = n.branches[env[n.cond_pred].toTensor().item<bool>() ? 0 : 1];
      for (size_t i = 0; i < n.hop_outer_in.size(); i++) env[br.hop_inner_in[i]] = env[n.hop_outer_in[i]];
      run_nodes(br.body, env);
      for (size_t i = 0; i < n.outs.size(); i++) env[n.outs[i].slots[0]] = env[br.hop_inner_out[i]];
      return;
    }
    if (n.hop) {
      for (size_t i = 0; i < n.hop_outer_in.size(); i++) env[n.hop_inner_in[i]] = env[n.hop_outer_in[i]];
      if (n.autocast) {
        // what torch.autocast's __enter__/__exit__ do, for CPU
        bool prev = at::autocast::is_autocast_enabled(at::kCPU);
        bool prev_cache = at::autocast::is_autocast_cache_enabled();
        auto prev_dtype = at::autocast::get_autocast_dtype(at::kCPU);
        at::autocast::set_autocast_enabled(at::kCPU, n.autocast_enabled);
        at::autocast::set_autocast_dtype(at::kCPU, n.autocast_dtype);
        at::autocast::increment_nesting();
        at::autocast::set_autocast_cache_enabled(n.autocast_cache);
        auto restore = [&] {
          if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
          at::autocast::set_autocast_enabled(at::kCPU, prev);
          at::autocast::set_autocast_dtype(at::kCPU, prev_dtype);
          at::autocast::set_autocast_cache_enabled(prev_cache);
        };
        try {
          run_nodes(n.body, env);
        } catch (...) {
          restore();
          throw;
        }
        restore();
      } else {
        at::AutoGradMode mode(n.grad_enabled);
        run_nodes(n.body, env);
      }
      for (size_t i = 0; i < n.outs.size(); i++) env[n.outs[i].slots[0]] = env[n.hop_inner_out[i]];
      return;
    }
    if (n.symop) {
      auto arg = [&](size_t i) {
        return n.args[i].kind == ArgPlan::Slot ? env[n.args[i].slot].toInt() : n.args[i].value.toInt();
      };
      int64_t a = arg(0), r = 0;
      if (n.symop == 'n') {
        r = -a;
      } else {
        int64_t b = arg(1);
        if ((n.symop == '/' || n.symop == '%') && b == 0) fail(n.qualname + ": division by zero");
        switch (n.symop) {
          case '+': r = a + b; break;
          case '-': r = a - b; break;
          case '*': r = a * b; break;
          case '/': r = a / b - ((a % b != 0) && ((a < 0) != (b < 0))); break;  // Python floor division
          case '%': r = ((a % b) + b) % b; break;
        }
      }
      env[n.outs[0].slots[0]] = r;
      return;
    }
    stack.clear();
    stack.reserve(n.args.size());
    for (auto& a : n.args) {
      switch (a.kind) {
        case ArgPlan::Const:
          stack.push_back(a.value);
          break;
        case ArgPlan::Slot:
          stack.push_back(env[a.slot]);
          break;
        case ArgPlan::SymList: {
          c10::List<int64_t> l;
          for (auto& [s, i] : a.items) l.push_back(s < 0 ? i : env[s].toInt());
          stack.push_back(l);
          break;
        }
        case ArgPlan::TensorList: {
          c10::List<at::Tensor> l;
          for (auto& it : a.items) {
            if (it.first < 0) fail(n.qualname + ": a None in a tensor list");
            l.push_back(env[it.first].toTensor());
          }
          stack.push_back(l);
          break;
        }
        case ArgPlan::OptTensorList: {
          c10::List<std::optional<at::Tensor>> l;
          for (auto& it : a.items)
            l.push_back(it.first < 0 ? std::optional<at::Tensor>() : env[it.first].toTensor());
          stack.push_back(l);
          break;
        }
      }
    }
    n.op->callBoxed(stack);
    if (stack.size() < n.outs.size()) fail(n.qualname + ": fewer outputs than the schema says");
    for (size_t i = 0; i < n.outs.size(); i++) {
      auto& o = n.outs[i];
      if (o.kind == OutPlan::One) {
        env[o.slots[0]] = stack[i].isSymInt() ? IValue(stack[i].toSymInt().expect_int()) : stack[i];
      } else if (o.kind == OutPlan::ListSplit) {
        auto l = stack[i].toTensorList();
        if (l.size() != o.slots.size()) fail(n.qualname + ": returned " + std::to_string(l.size()) + " tensors, the graph names " + std::to_string(o.slots.size()));
        for (size_t j = 0; j < o.slots.size(); j++) env[o.slots[j]] = l.get(j);
      }
    }
  }

  // The slots each top-level node reads last (never the user output), for run_nodes' `drop`.
  std::vector<std::vector<int>> last_reads() const {
    std::vector<int> last(nslots, -1);
    for (size_t i = 0; i < nodes.size(); i++) {
      const PNode& n = nodes[i];
      auto read = [&](int slot) {
        if (slot >= 0 && slot < nslots) last[slot] = (int)i;
      };
      for (const auto& a : n.args) {
        if (a.kind == ArgPlan::Slot) read(a.slot);
        for (const auto& it : a.items) read(it.first);
      }
      for (int s : n.hop_outer_in) read(s);
      read(n.cond_pred);
    }
    std::vector<std::vector<int>> drop(nodes.size());
    for (int slot = 0; slot < nslots; slot++)
      if (last[slot] >= 0 && slot != user_out) drop[last[slot]].push_back(slot);
    return drop;
  }

  static void notify(const PNode& n, size_t index, std::vector<IValue>& env, Observer observe, void* ctx) {
    if (n.outs.empty() || n.outs[0].slots.empty()) return;
    const IValue& v = env[n.outs[0].slots[0]];
    if (!v.isTensor()) return;
    observe(ctx, index, new at::Tensor(v.toTensor()));
  }

  // The guard the exported program does not run for itself: dtype, rank, static dims, symbol ranges.
  std::string check_input(const at::Tensor& x) const {
    if ((int)x.scalar_type() != user_dtype)
      return "the input is " + std::string(c10::toString(x.scalar_type())) + ", the exported program takes " +
             std::string(c10::toString((c10::ScalarType)user_dtype));
    if (x.dim() != (int64_t)user_dims.size())
      return "the input has " + std::to_string(x.dim()) + " dims, the exported program takes " +
             std::to_string(user_dims.size());
    std::map<std::string, int64_t> bound;
    for (size_t i = 0; i < user_dims.size(); i++) {
      const auto& d = user_dims[i];
      int64_t n = x.size(i);
      if (!d.empty() && (std::isdigit((unsigned char)d[0]) || d[0] == '-')) {
        if (n != to_int(d))
          return "input dim " + std::to_string(i) + " is " + std::to_string(n) + ", the program was exported for " + d;
        continue;
      }
      auto b = bound.find(d);
      if (b != bound.end() && b->second != n) return "input dims that the exported program ties differ";
      bound[d] = n;
      auto r = ranges.find(d);
      if (r != ranges.end() && (n < r->second.first || (r->second.second >= 0 && n > r->second.second)))
        return "input dim " + std::to_string(i) + " is " + std::to_string(n) + ", outside the exported range [" +
               std::to_string(r->second.first) + ", " + std::to_string(r->second.second) + "]";
    }
    return "";
  }

  at::Tensor run(const at::Tensor& x, const at::Tensor* const* weights, size_t nweights,
                 Observer observe = nullptr, void* ctx = nullptr) {
    std::string bad = check_input(x);
    if (!bad.empty()) fail(bad);
    std::vector<IValue> env(nslots);
    env[user_in] = x;
    for (auto& [s, idx] : weight_inputs) {
      if (idx >= nweights || weights[idx] == nullptr) fail("weight index out of range");
      env[s] = *weights[idx];  // the live tensor: BatchNorm's running stats update it in place
    }
    run_nodes(nodes, env, observe, ctx, &drop);
    if (!env[user_out].isTensor()) fail("the exported program's output is not a tensor");
    return env[user_out].toTensor();
  }
};

}  // namespace tl_pt2

// Every entry point's signature, generated by build.rs from the Rust declarations (src/model).
#include "trainlint_ffi.h"

struct tl_pt2_program {
  tl_pt2::Program program;
};

extern "C" {

char* tl_pt2_compile(const char* text, tl_pt2_program** out) {
  TL_PT2_GUARD({
    auto p = std::make_unique<tl_pt2_program>();
    p->program.load(text);
    *out = p.release();
  })
}

void tl_pt2_free(tl_pt2_program* p) { delete p; }

// The program's output on `input` with `weights` bound; grad != 0: autograd records (train-mode checks,
// backward), 0: under NoGradGuard. When `observe` is not null, it is called after top-level node i
// with (ctx, i, its first output) when that is a tensor (a new handle the callee owns and frees); it
// must not throw.
char* tl_pt2_run_observed(tl_pt2_program* p, const at::Tensor* input, const at::Tensor* const* weights,
                          size_t nweights, int grad, void* ctx, tl_observe_cb observe,
                          at::Tensor** out) {
  TL_PT2_GUARD({
    std::optional<at::NoGradGuard> ng;
    if (!grad) ng.emplace();
    *out = new at::Tensor(p->program.run(*input, weights, nweights, observe, ctx));
  })
}

}  // extern "C"
