// Probe for spikes/pt2/FINDINGS.md (issue 25): what callBoxed does with ops lacking autograd, out= variants,
// unknown ops, sym_size; lists the registered namespaces. Build: see ../build.sh (same flags), e.g.
//   g++ -O1 -std=c++17 -Wno-c++20-extensions dispatch_probe.cpp -o /tmp/dispatch_probe -I$LT/include \
//     -I$LT/include/torch/csrc/api/include -L$LT/lib -Wl,--as-needed -ltorch_cpu -lc10 -Wl,-rpath,$LT/lib
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>
#include <iostream>
int main() {
  auto& D = c10::Dispatcher::singleton();
  at::Tensor x = at::randn({5}).requires_grad_(true);
  auto call = [&](const char* n, const char* ov, torch::jit::Stack st) {
    try {
      auto op = D.findSchemaOrThrow(n, ov);
      std::cout << n << "." << ov << " schema: " << op.schema() << "\n  autograd kernel: " << op.hasKernelForDispatchKey(c10::DispatchKey::AutogradCPU)
                << " CompositeImplicit: " << op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd) << "\n";
      op.callBoxed(st);
      at::Tensor out = st[0].toTensor();
      std::cout << "  forward ok, requires_grad=" << out.requires_grad() << "\n";
      out.sum().backward();
      std::cout << "  backward ok\n";
    } catch (const c10::Error& e) {
      std::cout << "  error: " << e.what_without_backtrace() << "\n";
    }
  };
  call("aten::histc", "", {x, (int64_t)4, 0.0, 0.0});
  call("aten::relu", "", {x});
  call("aten::add_", "Tensor", {at::zeros({5}), x, 1});
  call("aten::mul", "out", {x, x, at::empty({5})});
  call("aten::nonexistent", "", {x});
  call("torchvision::roi_align", "", {x});
  call("aten::sym_size", "int", {x, (int64_t)0});
  try { D.findSchemaOrThrow("aten::print", ""); std::cout << "aten::print exists\n"; } catch (const c10::Error& e) { std::cout << "aten::print: " << std::string(e.what_without_backtrace()).substr(0, 80) << "\n"; }
  // namespaces registered in this libtorch
  std::set<std::string> ns;
  for (auto& n : D.getAllOpNames()) ns.insert(std::string(n.name).substr(0, std::string(n.name).find("::")));
  for (auto& n : ns) std::cout << n << " "; std::cout << "\n" << D.getAllOpNames().size() << " ops\n";
}
