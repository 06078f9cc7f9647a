//! The checks' unit tests link libtorch: give them an rpath so they run without LD_LIBRARY_PATH.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::path::PathBuf::from(&lib)
            .canonicalize()
            .unwrap_or(lib.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
