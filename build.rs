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
    // One declaration of the FFI: the C header both shims include is generated from the Rust
    // declarations, so a definition in C++ that differs from what Rust calls fails to compile
    // ("conflicting declaration of C function") instead of being undefined behaviour at run time.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let header = ffi_header(&["src/model/mod.rs", "src/model/pt2_run.rs"]);
    std::fs::write(out_dir.join("trainlint_ffi.h"), &header).expect("the FFI header is written");
    // An edit to src/model/mod.rs reruns this script; the shims are compiled again only when what
    // they are compiled from changed (the header, their sources, the compiler's settings).
    let stamp = format!(
        "{header}\n{}\n{}\n{}\n{:?}{:?}{:?}",
        std::fs::read_to_string("src/model/shim.cpp").expect("shim.cpp"),
        std::fs::read_to_string("src/model/pt2_shim.cpp").expect("pt2_shim.cpp"),
        include.display(),
        std::env::var("OPT_LEVEL"),
        std::env::var("DEBUG"),
        std::env::var("TARGET"),
    ) + &["CXX", "CXXFLAGS", "CRATE_CC_NO_DEFAULTS"]
        .map(|v| {
            // cc reads these; a change must compile the shims again, skipped run or not.
            println!("cargo:rerun-if-env-changed={v}");
            format!("{v}={:?}\n", std::env::var(v))
        })
        .concat();
    let stamp_path = out_dir.join("trainlint_shim.stamp");
    let unchanged = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp)
        && out_dir.join("libtrainlint_shim.a").exists();
    if unchanged {
        // What cc prints after compiling, for the library it compiled before.
        println!("cargo:rustc-link-lib=static=trainlint_shim");
        println!("cargo:rustc-link-search=native={}", out_dir.display());
        println!("cargo:rustc-link-lib=stdc++");
    } else {
        compile_shims(&out_dir, &include);
        std::fs::write(&stamp_path, stamp).expect("the shim's stamp is written");
    }
    // The static shim needs these after it on the link line, or c10 symbols stay unresolved.
    println!("cargo:rustc-link-search=native={}", lib.display());
    for name in ["torch_cpu", "torch", "c10"] {
        println!("cargo:rustc-link-lib={name}");
    }
    // Applies to every binary, test, bench and example of this package.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rerun-if-changed=src/model/shim.cpp");
    println!("cargo:rerun-if-changed=src/model/mod.rs");
    println!("cargo:rerun-if-changed=src/model/pt2_run.rs");
    println!("cargo:rerun-if-changed=src/model/pt2_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}

/// Compiles shim.cpp and pt2_shim.cpp, with the generated header, into the static library
/// `trainlint_shim`.
fn compile_shims(out_dir: &std::path::Path, include: &std::path::Path) {
    cc::Build::new()
        .include(out_dir)
        .cpp(true)
        .std("c++17")
        .flag_if_supported("-Wno-c++20-extensions")
        .flag_if_supported("-Wno-unused-parameter")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .file("src/model/shim.cpp")
        .file("src/model/pt2_shim.cpp")
        .compile("trainlint_shim");
}

/// The C type of a Rust FFI type as the declarations in `src/model` write it.
fn c_type(rust: &str) -> String {
    let t = rust.trim();
    if let Some(inner) = t.strip_prefix("Option<").and_then(|r| r.strip_suffix('>')) {
        // A nullable function pointer, or the shim's owned string (`char*`, NULL when none).
        return if inner == "ShimString" {
            "char*".into()
        } else {
            c_type(inner)
        };
    }
    if let Some(inner) = t.strip_prefix("*mut ") {
        return format!("{}*", c_type(inner));
    }
    if let Some(inner) = t.strip_prefix("*const ") {
        let inner = c_type(inner);
        // `*const *const T` is `const T* const*`; `*const T` is `const T*`.
        return if inner.ends_with('*') {
            format!("{inner} const*")
        } else {
            format!("const {inner}*")
        };
    }
    match t {
        "c_char" => "char".into(),
        "c_int" => "int".into(),
        "c_void" | "std::ffi::c_void" => "void".into(),
        "f64" => "double".into(),
        "u64" => "uint64_t".into(),
        "usize" => "size_t".into(),
        "RawModule" => "tl_module".into(),
        "RawProgram" => "tl_pt2_program".into(),
        "torch_sys::C_tensor" => "at::Tensor".into(),
        cb if cb.ends_with("Cb") => callback_name(cb),
        other => panic!("build.rs: no C type for the FFI type `{other}`"),
    }
}

/// `TensorCb` -> `tl_tensor_cb`.
fn callback_name(rust: &str) -> String {
    let stem = rust.strip_suffix("Cb").unwrap_or(rust);
    let mut out = String::from("tl_");
    for (i, ch) in stem.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out + "_cb"
}

/// Splits a parameter list at its top-level commas.
fn split_params(list: &str) -> Vec<String> {
    let (mut out, mut depth, mut cur) = (Vec::new(), 0i32, String::new());
    for ch in list.chars() {
        match ch {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out.into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The C header of every `type XCb = extern "C" fn(…)` and every `fn tl_…` in the `extern "C"`
/// blocks of `files`.
fn ffi_header(files: &[&str]) -> String {
    let mut typedefs = Vec::new();
    let mut functions = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("the FFI declarations are readable");
        // Statements end at `;`: join each declaration onto one line.
        let flat: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default().trim())
            .collect::<Vec<_>>()
            .join(" ");
        for stmt in flat.split(';') {
            let stmt = stmt.trim();
            // What follows the last brace: the declaration itself, not the item it follows.
            let stmt = stmt.rsplit(['{', '}']).next().unwrap_or_default().trim();
            if let Some(rest) = stmt.strip_prefix("type ") {
                let Some((name, def)) = rest.split_once('=') else {
                    continue;
                };
                let name = name.trim();
                let def = def.trim().trim_start_matches("unsafe ").trim();
                let Some(args) = def
                    .strip_prefix("extern \"C\" fn(")
                    .and_then(|a| a.strip_suffix(')'))
                else {
                    continue;
                };
                let args: Vec<String> = split_params(args).iter().map(|a| c_type(a)).collect();
                typedefs.push(format!(
                    "typedef void (*{})({});",
                    callback_name(name),
                    args.join(", ")
                ));
            } else if let Some(at) = stmt.find("fn tl_") {
                let head = stmt[..at].trim();
                if !(head.is_empty() || head == "safe") {
                    continue;
                }
                let sig = &stmt[at + 3..];
                let (name, rest) = sig.split_once('(').expect("a parameter list");
                let (params, ret) = rest.rsplit_once(')').expect("a closed parameter list");
                let ret = ret
                    .trim()
                    .strip_prefix("->")
                    .map_or("void".to_string(), c_type);
                let params: Vec<String> = split_params(params)
                    .iter()
                    .map(|p| {
                        let (n, t) = p.split_once(':').expect("name: type");
                        format!("{} {}", c_type(t), n.trim())
                    })
                    .collect();
                let params = if params.is_empty() {
                    "void".to_string()
                } else {
                    params.join(", ")
                };
                functions.push(format!("{ret} {}({params});", name.trim()));
            }
        }
    }
    format!(
        "// Generated by build.rs from the Rust declarations in src/model: the one declaration of the\n\
         // FFI. Do not edit; shim.cpp and pt2_shim.cpp include it before defining the functions.\n\
         #pragma once\n#include <cstddef>\n#include <cstdint>\n\n\
         namespace at {{\nclass Tensor;\n}}\nstruct tl_module;\nstruct tl_pt2_program;\n\n{}\n\n\
         extern \"C\" {{\n{}\n}}\n",
        typedefs.join("\n"),
        functions.join("\n")
    )
}
