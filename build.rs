//! Compiles the TorchScript introspection shim against the libtorch that torch-sys found, and sets an
//! rpath so `trainlint` and its tests run without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    // torch-sys declares `links = "tch"` and publishes its lib dir; only direct dependents see it.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch lib dir"),
    );
    let lib = lib.canonicalize().unwrap_or(lib);
    let include = lib.join("../include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .flag_if_supported("-Wno-c++20-extensions")
        .flag_if_supported("-Wno-unused-parameter")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .file("src/model/shim.cpp")
        .file("src/model/pt2_shim.cpp")
        .compile("trainlint_shim");
    // The static shim needs these after it on the link line, or c10 symbols stay unresolved.
    println!("cargo:rustc-link-search=native={}", lib.display());
    for name in ["torch_cpu", "torch", "c10"] {
        println!("cargo:rustc-link-lib={name}");
    }
    // Applies to every binary, test, bench and example of this package.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rerun-if-changed=src/model/shim.cpp");
    println!("cargo:rerun-if-changed=src/model/pt2_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
