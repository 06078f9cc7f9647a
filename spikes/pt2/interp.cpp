// Spike for issue 25: interpret a torch.export program (lowered by lower.py from the .pt2) node by node
// through c10::Dispatcher::findSchemaOrThrow(...).callBoxed(stack), with parameters as leaf tensors that
// require grad, and check forward, gradients, BatchNorm buffers, eval forward and an 8-step Adam curve
// against PyTorch's reference numbers (export_models.py). Also times forward+backward against TorchScript.
//
// Usage: interp MODELDIR [--bench] [--copy-back] [--untie]
//   MODELDIR = spikes/pt2/out/<model>, after export_models.py + lower.py (run.sh does all). INTERP_THREADS=n
//   sets the intra-op threads (default 1, as the references). --copy-back / --untie show two failure modes.
#include <ATen/ScalarOps.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <functional>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

using c10::IValue;

[[noreturn]] static void die(const std::string& m) {
  std::fprintf(stderr, "error: %s\n", m.c_str());
  std::exit(2);
}

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

static std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) die("cannot read " + p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Reference tensors from export_models.py: u32 ndim, i64 dims, f32 data.
static at::Tensor read_ref(const std::string& p) {
  std::string b = read_file(p);
  uint32_t nd;
  std::memcpy(&nd, b.data(), 4);
  std::vector<int64_t> dims(nd);
  std::memcpy(dims.data(), b.data() + 4, 8 * nd);
  size_t off = 4 + 8 * nd;
  at::Tensor t = at::empty(dims, at::kFloat);
  if (b.size() - off != (size_t)t.numel() * 4) die("bad ref " + p);
  std::memcpy(t.data_ptr(), b.data() + off, b.size() - off);
  return t;
}

// How one schema argument is produced at run time.
struct ArgPlan {
  enum Kind { Const, Slot, SymList, TensorList, OptTensorList } kind;
  IValue value;                                // Const
  int slot = -1;                               // Slot
  std::vector<std::pair<int, int64_t>> items;  // SymList (slot or -1, int), TensorList/OptTensorList (slot or -1)
};

struct OutPlan {
  enum Kind { Skip, One, ListSplit } kind;
  std::vector<int> slots;
};

struct PNode {
  std::string qualname, overload;
  std::optional<c10::OperatorHandle> op;  // empty for a symop
  char symop = 0;                         // '+', '-', '*', '/', '%', 'n' (neg): Python int ops on SymInts
  std::vector<ArgPlan> args;
  std::vector<OutPlan> outs;
  // higher_order.wrap_with_set_grad_enabled: outer slots -> subgraph input slots, body under the grad
  // mode, subgraph output slots -> `outs`.
  bool hop = false, grad_enabled = true;
  bool autocast = false, autocast_enabled = false, autocast_cache = true;  // wrap_with_autocast (CPU)
  c10::ScalarType autocast_dtype = c10::kBFloat16;
  std::vector<int> hop_outer_in, hop_inner_in, hop_inner_out;
  std::vector<PNode> body;
  // higher_order.cond: pred slot, operands in hop_outer_in, two branches (each a PNode holding
  // hop_inner_in / body / hop_inner_out)
  bool cond = false;
  int cond_pred = -1;
  std::vector<PNode> branches;
};

struct Program {
  std::unordered_map<std::string, int> slot_of;
  int nslots = 0;
  struct In {
    std::string kind, fqn;
    int slot;
  };
  std::vector<In> inputs;
  std::vector<PNode> nodes;
  std::vector<std::pair<int, std::string>> buffer_mutations;
  int user_out = -1, user_in = -1;
  std::map<std::string, at::Tensor> params, buffers, constants;  // by FQN
  std::vector<std::string> param_order;               // trainable, one FQN per leaf (tied: the first)
  std::map<std::string, at::Tensor> by_view;           // storage view -> leaf, for tied parameters
  int user_dtype = -1;
  std::vector<std::string> user_dims;                  // ints or symbol names
  std::map<std::string, std::pair<int64_t, int64_t>> ranges;
  std::vector<IValue> env;
  std::vector<PNode> open_hops;  // while parsing a hop's body
  std::vector<PNode>& current() { return open_hops.empty() ? nodes : open_hops.back().body; }
  bool copy_back_buffers = false;
  bool untie = false;  // true: a leaf per FQN even when two share a storage view (shows why we tie)  // true reproduces the in-place copy failure

  int slot(const std::string& name) {
    auto it = slot_of.find(name);
    if (it != slot_of.end()) return it->second;
    slot_of[name] = nslots;
    return nslots++;
  }
  int existing(const std::string& name) {
    auto it = slot_of.find(name);
    if (it == slot_of.end()) die("use of undefined value " + name);
    return it->second;
  }

  // Converts one serialized value to a plan for a schema argument of type `ty`.
  ArgPlan plan_arg(const std::string& tok, const c10::Argument& a) {
    ArgPlan p;
    p.kind = ArgPlan::Const;
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
      // A Python number passed where the schema wants a Tensor (e.g. add_.Tensor(buf, 1)): TorchScript
      // and Python wrap it as a 0-dim "wrapped number" tensor so type promotion ignores it.
      c10::Scalar s = k == "I" ? c10::Scalar((int64_t)std::stoll(v))
                      : k == "F" ? c10::Scalar(std::stod(v))
                                 : c10::Scalar(v == "1");
      at::Tensor t = at::scalar_to_tensor(s);
      t.unsafeGetTensorImpl()->set_wrapped_number(true);
      p.value = t;
    } else if (k == "I") {
      int64_t i = std::stoll(v);
      if (ty->kind() == c10::TypeKind::FloatType)
        p.value = (double)i;
      else
        p.value = i;
    } else if (k == "F") {
      p.value = std::stod(v);
    } else if (k == "B") {
      p.value = v == "1";
    } else if (k == "S") {
      p.kind = ArgPlan::Slot;
      p.slot = existing(v);
    } else if (k == "IL") {
      c10::List<int64_t> l;
      for (auto& e : split(v, ',')) l.push_back(std::stoll(e));
      p.value = l;
    } else if (k == "FL") {
      c10::List<double> l;
      for (auto& e : split(v, ',')) l.push_back(std::stod(e));
      p.value = l;
    } else if (k == "BL") {
      c10::List<bool> l;
      for (auto& e : split(v, ',')) l.push_back(e == "1");
      p.value = l;
    } else if (k == "SL") {
      p.kind = ArgPlan::SymList;
      for (auto& e : split(v, ','))
        p.items.push_back(e[0] == 'n' ? std::make_pair(existing(e.substr(1)), (int64_t)0)
                                      : std::make_pair(-1, (int64_t)std::stoll(e.substr(1))));
    } else if (k == "TL" || k == "OTL") {
      p.kind = k == "TL" ? ArgPlan::TensorList : ArgPlan::OptTensorList;
      for (auto& e : split(v, ',')) p.items.push_back({e == "_" ? -1 : existing(e), 0});
    } else if (k == "ST" || k == "MF" || k == "LY") {
      p.value = (int64_t)std::stoll(v);  // already in c10's numbering (lower.py translates)
    } else if (k == "DV") {
      p.value = c10::Device(v);
    } else if (k == "STR") {  // %XX-escaped by lower.py (e.g. gelu's approximate="tanh")
      std::string out;
      for (size_t i = 0; i < v.size(); i++) {
        if (v[i] == '%' && i + 2 < v.size()) {
          out.push_back((char)std::stoi(v.substr(i + 1, 2), nullptr, 16));
          i += 2;
        } else {
          out.push_back(v[i]);
        }
      }
      p.value = out;
    } else {
      die("value kind " + k + " not supported by the spike");
    }
    return p;
  }

  void load(const std::string& dir) {
    std::ifstream f(dir + "/prog.txt");
    if (!f) die("cannot read " + dir + "/prog.txt");
    std::string line;
    while (std::getline(f, line)) {
      std::istringstream is(line);
      std::string rec;
      is >> rec;
      if (rec == "schema" || rec == "storage") continue;
      if (rec == "input") {
        std::string kind, name;
        is >> kind >> name;
        In in{kind, "", slot(name)};
        if (kind == "user") {
          user_in = in.slot;
          int nd;
          is >> user_dtype >> nd;
          user_dims.resize(nd);
          for (auto& d : user_dims) is >> d;
        } else {
          std::string file;
          int dtype, nd;
          is >> in.fqn >> file >> dtype >> nd;
          std::vector<int64_t> sizes(nd), strides;
          for (auto& s : sizes) is >> s;
          is >> nd;
          strides.resize(nd);
          for (auto& s : strides) is >> s;
          int64_t offset;
          is >> offset;
          int rg = 0;
          if (kind == "param") is >> rg;
          // The real reader: raw bytes of the whole untyped storage, then as_strided(sizes, strides, offset),
          // after checking that the view stays inside the storage (as_strided does not check).
          std::string bytes = read_file(dir + "/" + file);
          auto st = (c10::ScalarType)dtype;
          int64_t esz = c10::elementSize(st);
          if (bytes.size() % esz) die("storage size not a multiple of the element size");
          int64_t numel = bytes.size() / esz, last = offset, any_empty = 0;
          if (offset < 0 || sizes.size() != strides.size()) die(in.fqn + ": bad tensor metadata");
          for (size_t i = 0; i < sizes.size(); i++) {
            if (sizes[i] < 0 || strides[i] < 0) die(in.fqn + ": negative size or stride");
            if (sizes[i] == 0) any_empty = 1;
            else last += (sizes[i] - 1) * strides[i];
          }
          if (!any_empty && last >= numel) die(in.fqn + ": the tensor reaches past its storage");
          // Tied parameters: two FQNs (two graph inputs) on the same storage view are one leaf.
          std::string view_key = file + "|" + std::to_string(dtype) + "|" + c10::str(sizes) + "|" + c10::str(strides) + "|" + std::to_string(offset);
          if (kind == "param" && by_view.count(view_key) && !untie) {
            params[in.fqn] = by_view[view_key];
            inputs.push_back(in);
            continue;
          }
          at::Tensor storage = at::empty({numel}, at::TensorOptions().dtype(st));
          std::memcpy(storage.data_ptr(), bytes.data(), bytes.size());
          at::Tensor t = storage.as_strided(sizes, strides, offset).clone();
          if (kind == "param") {
            t.requires_grad_(rg != 0);  // a leaf; frozen parameters keep requires_grad=False
            params[in.fqn] = t;
            by_view[view_key] = t;
            if (rg) param_order.push_back(in.fqn);  // what gets gradients and optimizer steps
          } else if (kind == "constant") {
            constants[in.fqn] = t;
          } else {
            buffers[in.fqn] = t;
          }
        }
        inputs.push_back(in);
      } else if (rec == "range") {
        std::string sym;
        int64_t lo, hi;
        is >> sym >> lo >> hi;
        ranges[sym] = {lo, hi};
      } else if (rec == "hop") {
        std::string kind;
        int en, nargs;
        PNode h;
        is >> kind;
        if (kind == "set_grad") {
          is >> en;
          h.qualname = "higher_order.wrap_with_set_grad_enabled";
          h.grad_enabled = en != 0;
        } else if (kind == "autocast") {
          int dt, cache;
          is >> dt >> en >> cache;
          h.qualname = "higher_order.wrap_with_autocast";
          h.autocast = true;
          h.autocast_dtype = (c10::ScalarType)dt;
          h.autocast_enabled = en != 0;
          h.autocast_cache = cache != 0;
        } else {
          die("hop " + kind + " not supported");
        }
        is >> nargs;
        h.hop = true;
        for (int i = 0; i < nargs; i++) {
          std::string a;
          is >> a;
          if (a.rfind("T:", 0) != 0) die("hop argument " + a + " is not a tensor");
          h.hop_outer_in.push_back(existing(a.substr(2)));
        }
        int nin;
        is >> nin;
        for (int i = 0; i < nin; i++) {
          std::string a;
          is >> a;
          h.hop_inner_in.push_back(slot(a.substr(2)));
        }
        if (h.hop_inner_in.size() != h.hop_outer_in.size()) die("hop arity mismatch");
        open_hops.push_back(std::move(h));
      } else if (rec == "cond") {
        std::string pred, ops;
        int nout;
        is >> pred >> ops >> nout;
        PNode c;
        c.qualname = "higher_order.cond";
        c.cond = true;
        c.cond_pred = existing(pred.substr(2));
        for (auto& e : split(ops.substr(3), ',')) c.hop_outer_in.push_back(existing(e));
        for (int i = 0; i < nout; i++) {
          std::string o;
          is >> o;
          c.outs.push_back({OutPlan::One, {slot(o.substr(2))}});
        }
        open_hops.push_back(std::move(c));
      } else if (rec == "branch") {
        if (open_hops.empty() || !open_hops.back().cond) die("branch outside cond");
        PNode b;
        int nin;
        is >> nin;
        for (int i = 0; i < nin; i++) {
          std::string a;
          is >> a;
          b.hop_inner_in.push_back(slot(a.substr(2)));
        }
        if (b.hop_inner_in.size() != open_hops.back().hop_outer_in.size()) die("cond arity mismatch");
        open_hops.push_back(std::move(b));
      } else if (rec == "endbranch") {
        PNode b = std::move(open_hops.back());
        open_hops.pop_back();
        int nsub;
        is >> nsub;
        for (int i = 0; i < nsub; i++) {
          std::string a;
          is >> a;
          b.hop_inner_out.push_back(existing(a.substr(2)));
        }
        if (open_hops.empty() || !open_hops.back().cond || b.hop_inner_out.size() != open_hops.back().outs.size())
          die("cond branch outputs mismatch");
        open_hops.back().branches.push_back(std::move(b));
      } else if (rec == "endcond") {
        PNode c = std::move(open_hops.back());
        open_hops.pop_back();
        if (!c.cond || c.branches.size() != 2) die("cond needs two branches");
        current().push_back(std::move(c));
      } else if (rec == "endhop") {
        if (open_hops.empty()) die("endhop without hop");
        PNode h = std::move(open_hops.back());
        open_hops.pop_back();
        int nsub, nout;
        is >> nsub;
        for (int i = 0; i < nsub; i++) {
          std::string a;
          is >> a;
          h.hop_inner_out.push_back(existing(a.substr(2)));
        }
        is >> nout;
        if (nout != nsub) die("hop output count mismatch");
        for (int i = 0; i < nout; i++) {
          std::string o;
          is >> o;
          h.outs.push_back({OutPlan::One, {slot(o.substr(2))}});
        }
        current().push_back(std::move(h));
      } else if (rec == "symop") {
        std::string name;
        int nin;
        is >> name >> nin;
        static const std::map<std::string, char> ops = {{"add", '+'}, {"sub", '-'}, {"mul", '*'},
                                                        {"floordiv", '/'}, {"mod", '%'}, {"neg", 'n'}};
        PNode n;
        n.qualname = "_operator." + name;
        n.symop = ops.at(name);
        for (int i = 0; i < nin; i++) {
          std::string an, av;
          is >> an >> av;
          ArgPlan p;
          p.kind = ArgPlan::Const;
          if (av.rfind("S:", 0) == 0) {
            p.kind = ArgPlan::Slot;
            p.slot = existing(av.substr(2));
          } else if (av.rfind("I:", 0) == 0) {
            p.value = (int64_t)std::stoll(av.substr(2));
          } else {
            die(n.qualname + ": operand " + av + " is not an int");
          }
          n.args.push_back(p);
        }
        int nout;
        std::string o;
        is >> nout >> o;
        if (nout != 1 || o.rfind("S:", 0) != 0) die(n.qualname + ": expected one SymInt output");
        n.outs.push_back({OutPlan::One, {slot(o.substr(2))}});
        current().push_back(std::move(n));
      } else if (rec == "node") {
        std::string q, ov;
        int nin;
        is >> q >> ov >> nin;
        std::map<std::string, std::string> named;
        for (int i = 0; i < nin; i++) {
          std::string an, av;
          is >> an >> av;
          named[an] = av;
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
            p.kind = ArgPlan::Const;
            p.value = *a.default_value();
            n.args.push_back(p);
          } else {
            die(q + "." + ov + ": missing argument " + a.name());
          }
        }
        if (!named.empty()) die(q + "." + ov + ": unknown argument " + named.begin()->first);
        int nout;
        is >> nout;
        if ((size_t)nout != schema.returns().size()) die(q + ": output count differs from the schema");
        for (int i = 0; i < nout; i++) {
          std::string o;
          is >> o;
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
            die("output kind " + o + " not supported");
          }
          n.outs.push_back(op);
        }
        current().push_back(std::move(n));
      } else if (rec == "output") {
        std::string kind, name;
        is >> kind >> name;
        if (kind == "user") {
          user_out = existing(name);
        } else {
          std::string fqn;
          is >> fqn;
          buffer_mutations.push_back({existing(name), fqn});
        }
      }
    }
    env.resize(nslots);
  }

  std::vector<at::Tensor> param_list() {
    std::vector<at::Tensor> v;
    for (auto& n : param_order) v.push_back(params[n]);
    return v;
  }

  void run_nodes(std::vector<PNode>& list) {
    torch::jit::Stack stack;
    for (auto& n : list) {
      if (n.cond) {
        // the branch the predicate picks runs inline; autograd records its ops as in eager
        PNode& br = n.branches[env[n.cond_pred].toTensor().item<bool>() ? 0 : 1];
        for (size_t i = 0; i < n.hop_outer_in.size(); i++) env[br.hop_inner_in[i]] = env[n.hop_outer_in[i]];
        run_nodes(br.body);
        for (size_t i = 0; i < n.outs.size(); i++) env[n.outs[i].slots[0]] = env[br.hop_inner_out[i]];
        continue;
      }
      if (n.hop) {
        for (size_t i = 0; i < n.hop_outer_in.size(); i++) env[n.hop_inner_in[i]] = env[n.hop_outer_in[i]];
        if (n.autocast) {
          // what torch.autocast's __enter__/__exit__ do, for CPU
          bool prev = at::autocast::is_autocast_enabled(at::kCPU), prev_cache = at::autocast::is_autocast_cache_enabled();
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
            run_nodes(n.body);
          } catch (...) {
            restore();
            throw;
          }
          restore();
        } else {
          at::AutoGradMode mode(n.grad_enabled);
          run_nodes(n.body);
        }
        for (size_t i = 0; i < n.outs.size(); i++) env[n.outs[i].slots[0]] = env[n.hop_inner_out[i]];
        continue;
      }
      if (n.symop) {
        auto arg = [&](size_t i) { return n.args[i].kind == ArgPlan::Slot ? env[n.args[i].slot].toInt() : n.args[i].value.toInt(); };
        int64_t a = arg(0), r = 0;
        if (n.symop == 'n') {
          r = -a;
        } else {
          int64_t b = arg(1);
          switch (n.symop) {
            case '+': r = a + b; break;
            case '-': r = a - b; break;
            case '*': r = a * b; break;
            case '/': r = a / b - ((a % b != 0) && ((a < 0) != (b < 0))); break;  // Python floor division
            case '%': r = ((a % b) + b) % b; break;
          }
        }
        env[n.outs[0].slots[0]] = r;
        continue;
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
            for (auto& it : a.items) l.push_back(env[it.first].toTensor());
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
      for (size_t i = 0; i < n.outs.size(); i++) {
        auto& o = n.outs[i];
        if (o.kind == OutPlan::One) {
          // SymInt returns come back as SymInt IValues; keep plain ints in the env.
          env[o.slots[0]] = stack[i].isSymInt() ? IValue(stack[i].toSymInt().expect_int()) : stack[i];
        } else if (o.kind == OutPlan::ListSplit) {
          auto l = stack[i].toTensorList();
          for (size_t j = 0; j < o.slots.size(); j++) env[o.slots[j]] = l.get(j);
        }
      }
    }
  }

  // The guard the exported program does not run for us: dtype, rank, static dims, symbol ranges.
  std::string check_input(const at::Tensor& x) {
    if ((int)x.scalar_type() != user_dtype)
      return "input dtype " + std::string(c10::toString(x.scalar_type())) + " differs from the program's";
    if (x.dim() != (int64_t)user_dims.size())
      return "input has " + std::to_string(x.dim()) + " dims, the program takes " + std::to_string(user_dims.size());
    std::map<std::string, int64_t> bound;
    for (size_t i = 0; i < user_dims.size(); i++) {
      const auto& d = user_dims[i];
      int64_t n = x.size(i);
      if (std::isdigit((unsigned char)d[0])) {
        if (n != std::stoll(d))
          return "input dim " + std::to_string(i) + " is " + std::to_string(n) + ", the program was exported for " + d;
        continue;
      }
      if (bound.count(d) && bound[d] != n) return "input dims that must be equal differ";
      bound[d] = n;
      auto r = ranges.find(d);
      if (r != ranges.end() && (n < r->second.first || (r->second.second >= 0 && n > r->second.second)))
        return "input dim " + std::to_string(i) + " is " + std::to_string(n) + ", outside the exported range [" +
               std::to_string(r->second.first) + ", " + std::to_string(r->second.second) + "]";
    }
    return "";
  }

  at::Tensor run(const at::Tensor& x) {
    std::string bad = check_input(x);
    if (!bad.empty()) die(bad);
    for (auto& in : inputs) {
      if (in.kind == "user")
        env[in.slot] = x;
      else if (in.kind == "param")
        env[in.slot] = params[in.fqn];
      else if (in.kind == "constant")
        env[in.slot] = constants[in.fqn];
      else
        env[in.slot] = buffers[in.fqn];
    }
    run_nodes(nodes);
    // Functional IR (run_decompositions): buffer mutations are graph outputs; rebind the buffer to the new
    // value. Copying in place (buffers[fqn].copy_(new)) bumps the version of a tensor that
    // _native_batch_norm_legit_functional saved for backward, and backward then fails (see FINDINGS.md).
    // Training IR (torch.export.export): batch_norm / add_ mutate the buffers in place; this list is empty.
    for (auto& [s, fqn] : buffer_mutations) {
      if (copy_back_buffers) {
        at::NoGradGuard ng;
        buffers[fqn].copy_(env[s].toTensor().detach());
      } else {
        buffers[fqn] = env[s].toTensor().detach();
      }
    }
    at::Tensor out = env[user_out].toTensor();
    for (auto& e : env) e = IValue();  // drop intermediates (the autograd graph keeps what it needs)
    return out;
  }
};

struct Err {
  double abs, rel, scale;
};
static Err err(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor d = (a.detach().to(at::kFloat) - b.to(at::kFloat)).abs();
  double m = d.max().item<double>();
  double s = b.to(at::kFloat).abs().max().item<double>();
  return {m, s > 0 ? m / s : m, s};
}

static double worst = 0;
static void report(const std::string& what, Err e) {
  std::printf("  %-40s max_abs %.3e  max_rel %.3e  (ref max %.3e)\n", what.c_str(), e.abs, e.rel, e.scale);
  // A reference that is itself rounding noise (e.g. the grad of a conv bias followed by BatchNorm, exactly 0
  // in real arithmetic) has no meaningful relative error.
  if (e.scale > 1e-6) worst = std::max(worst, e.rel);
}

static int real_main(int argc, char** argv);
int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    return real_main(argc, argv);
  } catch (const c10::Error& e) {
    die(e.what_without_backtrace());
  }
}

static int real_main(int argc, char** argv) {
  if (argc < 2) die("usage: interp MODELDIR [--bench]");
  std::string d = argv[1];
  bool bench = false, copy_back = false, untie = false;
  for (int i = 2; i < argc; i++) {
    bench |= std::string(argv[i]) == "--bench";
    copy_back |= std::string(argv[i]) == "--copy-back";  // in-place buffer copy-back: shows why we rebind
    untie |= std::string(argv[i]) == "--untie";          // a leaf per FQN: shows why tied weights are one
  }
  at::set_num_threads(std::getenv("INTERP_THREADS") ? std::atoi(std::getenv("INTERP_THREADS")) : 1);
  at::Tensor x = read_ref(d + "/x.bin");
  at::Tensor y = read_ref(d + "/y.bin").to(at::kLong);
  std::ifstream rf(d + "/ref.json");
  std::string refjson((std::istreambuf_iterator<char>(rf)), std::istreambuf_iterator<char>());
  // The tiny bit of ref.json we need: the Adam curve (8 floats after "adam_curve": [).
  std::vector<double> ref_curve;
  {
    auto p = refjson.find("\"adam_curve\"");
    p = refjson.find('[', p);
    auto q = refjson.find(']', p);
    for (auto& e : split(refjson.substr(p + 1, q - p - 1), ',')) ref_curve.push_back(std::stod(e));
  }

  for (std::string ir : {"train", "train_core"}) {
    std::printf("[%s] %s IR\n", d.c_str(), ir.c_str());
    Program prog;
    prog.untie = untie;  // before load: it decides how parameters are bound
    prog.load(d + "/low_" + ir);
    prog.copy_back_buffers = copy_back;
    std::printf("  %zu nodes, %zu params, %zu buffers, %zu buffer-mutation outputs\n", prog.nodes.size(),
                prog.params.size(), prog.buffers.size(), prog.buffer_mutations.size());
    at::manual_seed(123);  // same seed as export_models.py before the forward (dropout's RNG)
    at::Tensor out = prog.run(x);
    report("forward (train mode) vs PyTorch", err(out, read_ref(d + "/ref_out_train.bin")));
    at::Tensor loss = at::cross_entropy_loss(out, y);
    std::printf("  loss %.7f (grad_fn %s)\n", loss.item<double>(), loss.grad_fn() ? loss.grad_fn()->name().c_str() : "none");
    auto plist = prog.param_list();
    auto grads = torch::autograd::grad({loss}, plist, {}, std::nullopt, false, /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); i++) {
      // no gradient (a parameter used only under no_grad): PyTorch's reference wrote zeros
      bool none = !grads[i].defined();
      report("grad " + prog.param_order[i] + (none ? " (none)" : ""),
             err(none ? at::zeros_like(plist[i]) : grads[i], read_ref(d + "/ref_grad." + prog.param_order[i] + ".bin")));
    }
    for (auto& [fqn, b] : prog.buffers)
      report("buffer after 1 fwd " + fqn, err(b, read_ref(d + "/ref_buf_after." + fqn + ".bin")));

    // dynamic batch: another batch size through the same program
    at::Tensor x7 = at::randn([&] { auto s = x.sizes().vec(); s[0] = 7; return s; }());
    at::Tensor o7 = prog.run(x7);
    std::printf("  batch 7 -> output %s\n", c10::str(o7.sizes()).c_str());

    // 8 Adam steps, lr 1e-2, from the stored weights (reloaded: fresh params and BN buffers), twice: with
    // libtorch's torch::optim::Adam, and with torch.optim.Adam's own update (single-tensor path), which
    // differs in rounding: exp_avg.lerp_(g, 1 - b1) where libtorch does exp_avg.mul_(b1).add_(g, 1 - b1).
    for (int variant = 0; variant < 2; variant++) {
      Program p2;
      p2.untie = untie;
      p2.load(d + "/low_" + ir);
      auto ps = p2.param_list();
      torch::optim::Adam opt(ps, torch::optim::AdamOptions(1e-2));
      std::vector<at::Tensor> m1, m2;
      for (auto& p : ps) {
        m1.push_back(at::zeros_like(p));
        m2.push_back(at::zeros_like(p));
      }
      std::vector<double> curve;
      at::manual_seed(123);
      for (int step = 1; step <= 8; step++) {
        at::Tensor l = at::cross_entropy_loss(p2.run(x), y);
        curve.push_back(l.item<double>());
        if (variant == 0) {
          opt.zero_grad();
          l.backward();
          opt.step();
          continue;
        }
        auto gs = torch::autograd::grad({l}, ps, {}, std::nullopt, false, true);
        at::NoGradGuard ng;
        const double b1 = 0.9, b2 = 0.999, lr = 1e-2, eps = 1e-8;  // Python floats are doubles
        double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
        for (size_t i = 0; i < ps.size(); i++) {
          if (!ps[i].requires_grad() || !gs[i].defined()) continue;  // torch.optim skips grad None
          m1[i].lerp_(gs[i], 1 - b1);
          m2[i].mul_(b2).addcmul_(gs[i], gs[i], 1 - b2);
          at::Tensor denom = (m2[i].sqrt() / std::pow(bc2, 0.5)).add_(eps);
          ps[i].addcdiv_(m1[i], denom, -(lr / bc1));
        }
      }
      double cm = 0;
      std::printf("  adam curve (%s):", variant == 0 ? "torch::optim::Adam" : "torch.optim.Adam's update");
      for (size_t i = 0; i < 8; i++) {
        std::printf(" %.6f", curve[i]);
        cm = std::max(cm, std::abs(curve[i] - ref_curve[i]));
      }
      std::printf("\n");
      if (variant == 0) {
        // libtorch's Adam rounds differently from torch.optim.Adam: reported, not counted in `worst`
        std::printf("  %-40s max_abs %.3e  max_rel %.3e\n", "adam 8 steps (libtorch Adam) vs PyTorch", cm, cm / ref_curve[0]);
      } else {
        report("adam 8 steps (PyTorch's update) vs PyTorch", {cm, cm / ref_curve[0], ref_curve[0]});
      }
    }
  }

  {
    std::printf("[%s] eval IR\n", d.c_str());
    Program ev;
    ev.load(d + "/low_eval");
    at::NoGradGuard ng;
    report("forward (eval mode) vs PyTorch", err(ev.run(x), read_ref(d + "/ref_out_eval.bin")));
  }
  {
    // The input checks the exported program needs (PyTorch's module() runs them in Python).
    Program g;
    g.load(d + "/low_train");
    auto s = x.sizes().vec();
    std::vector<std::pair<std::string, at::Tensor>> cases;
    if (s.size() >= 2) {
      auto w = s;
      w[1] += 1;
      cases.push_back({"wider dim 1", at::randn(w)});
    }
    auto b1 = s;
    b1[0] = 1;
    cases.push_back({"batch 1", at::randn(b1)});
    cases.push_back({"float64", x.to(at::kDouble)});
    for (auto& [what, t] : cases) std::printf("  guard, %s: %s\n", what.c_str(), g.check_input(t).c_str());
  }
  std::printf("[%s] worst relative error: %.3e\n", d.c_str(), worst);

  if (bench) {
    // Interleaved rounds (the machine is shared): each round times every variant for `iters` iterations;
    // we report the median and the minimum over rounds of the per-iteration mean.
    const int rounds = 7, iters = 30;
    for (int64_t b : {(int64_t)0, (int64_t)32}) {
      at::Tensor xb = x;
      if (b) {
        auto s = x.sizes().vec();
        s[0] = b;
        xb = at::randn(s);
      }
      at::Tensor yb = at::randint(0, y.max().item<int64_t>() + 1, {xb.size(0)}, at::kLong);
      torch::jit::Module ts = torch::jit::load(d + "/model_ts.pt");
      ts.train();
      std::vector<at::Tensor> tsp;
      for (const auto& p : ts.parameters()) tsp.push_back(p);
      Program pt, pc;
      pt.load(d + "/low_train");
      pc.load(d + "/low_train_core");
      auto ptp = pt.param_list(), pcp = pc.param_list();
      std::vector<std::pair<std::string, std::function<void()>>> variants = {
          {"fwd+bwd torchscript", [&] { auto g = torch::autograd::grad({at::cross_entropy_loss(ts.forward({xb}).toTensor(), yb)}, tsp); }},
          {"fwd+bwd interp train IR", [&] { auto g = torch::autograd::grad({at::cross_entropy_loss(pt.run(xb), yb)}, ptp); }},
          {"fwd+bwd interp core IR", [&] { auto g = torch::autograd::grad({at::cross_entropy_loss(pc.run(xb), yb)}, pcp); }},
          {"fwd no_grad torchscript", [&] { at::NoGradGuard ng; ts.forward({xb}); }},
          {"fwd no_grad interp train IR", [&] { at::NoGradGuard ng; pt.run(xb); }},
      };
      std::vector<std::vector<double>> ms(variants.size());
      for (auto& v : variants)
        for (int i = 0; i < 10; i++) v.second();  // warm-up (TorchScript's profiling executor optimizes here)
      for (int r = 0; r < rounds; r++)
        for (size_t k = 0; k < variants.size(); k++) {
          auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < iters; i++) variants[k].second();
          auto t1 = std::chrono::steady_clock::now();
          ms[k].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / iters);
        }
      std::printf("[bench %s] input %s, 1 thread, %d rounds x %d iters, ms/iter median (min)\n", d.c_str(),
                  c10::str(xb.sizes()).c_str(), rounds, iters);
      std::vector<double> med(variants.size());
      for (size_t k = 0; k < variants.size(); k++) {
        auto v = ms[k];
        std::sort(v.begin(), v.end());
        med[k] = v[v.size() / 2];
        double base = k < 3 ? med[0] : med[3];
        std::printf("  %-30s %8.3f (%8.3f)  %.2fx of torchscript\n", variants[k].first.c_str(), med[k], v[0], med[k] / base);
      }
    }
  }
  return 0;
}
