//! With the `tch` feature, the `sieve` binary finds libtorch without LD_LIBRARY_PATH: an
//! rpath to the libtorch the build used (`cargo xtask build-tch` sets LIBTORCH).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some()
        && let Some(dir) = std::env::var_os("LIBTORCH")
    {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
}
