//! Compiles the c10d shim (`src/shim.cpp`) against the libtorch that `torch-sys` links,
//! when that libtorch ships c10d's Gloo headers and Gloo's own headers are installed
//! (Debian: `libgloo-dev`; `scripts/install-gloo.sh`). Otherwise the crate is built
//! without a backend (`cfg(perennial_gloo)` unset) and every entry point says so.
//!
//! Environment: `PERENNIAL_DIST=off` builds without a backend on purpose;
//! `GLOO_INCLUDE` names Gloo's include directory (default `/usr/include`).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(perennial_gloo)");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=PERENNIAL_DIST");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    if std::env::var("PERENNIAL_DIST").is_ok_and(|v| v == "off" || v == "0") {
        return;
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=perennial-dist: torch-sys did not say where libtorch is; built without a distributed backend");
        return;
    };
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    let c10d = include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    let gloo =
        PathBuf::from(std::env::var("GLOO_INCLUDE").unwrap_or_else(|_| "/usr/include".into()));
    let gloo_config = gloo.join("gloo/config.h");
    println!("cargo:rerun-if-changed={}", gloo_config.display());
    if !c10d.exists() {
        println!(
            "cargo:warning=perennial-dist: {} is missing (a libtorch without c10d); built without a distributed backend",
            c10d.display()
        );
        return;
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        // torch-sys then reads the C++ ABI from the Python install; we cannot know it
        // here, and a mismatch would not link.
        println!("cargo:warning=perennial-dist: LIBTORCH_USE_PYTORCH is set (ABI unknown here); built without a distributed backend");
        return;
    }
    if !gloo_config.exists() {
        println!(
            "cargo:warning=perennial-dist: Gloo's headers are missing ({}; run scripts/install-gloo.sh); built without a distributed backend",
            gloo_config.display()
        );
        return;
    }
    build(&lib, &include, &gloo);
}

fn build(lib: &Path, include: &Path, gloo: &Path) {
    // The C++ ABI torch-sys compiles with (its default: the new ABI, as libtorch 2.x).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .std("c++17")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(gloo)
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .file("src/shim.cpp")
        .compile("perennial_dist_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=perennial_gloo");
}
