//! The benchmarks find libtorch without LD_LIBRARY_PATH: an rpath to the libtorch the
//! build used (the xtask sets LIBTORCH).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
