//! `cargo xtask setup-cuda`: the CUDA 13.0 compiler from PyPI, for candle's `cuda` feature,
//! built without a GPU; `cargo xtask build-cuda`: that build and its tests.
//!
//! nvcc, its NVVM back end, the headers and the runtime come from five pinned NVIDIA wheels,
//! installed with one `pip install --target` into `<sieve cache>/cuda-13.0` (a second
//! install into the same folder would wipe the first). `nvidia/cu13` in it then serves as
//! `CUDA_HOME`. cudarc, under candle, links the driver, NVRTC, cuRAND, cuBLAS and cuBLASLt
//! libraries, which no wheel here carries and no machine without a GPU has: stub libraries
//! with every function cudarc declares (each returning an error), generated from cudarc's own
//! bindings, let the build link and make the binary fail cleanly at run time. They live in
//! `lib/stubs`, apart from the real libraries, and must never reach a machine with a GPU.
//! nvcc stays at 13.0: the GPU machine's driver cannot load newer code.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The pinned wheels, installed together.
const WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];
/// The cudarc release of `Cargo.lock`, whose bindings list the stubs' functions.
const CUDARC: &str = "cudarc-0.19.10";
/// Each library cudarc links: its module in cudarc and its name (soname) in CUDA 13.0.
const STUBS: [(&str, &str); 5] = [
    ("driver", "libcuda.so.1"),
    ("nvrtc", "libnvrtc.so.13"),
    ("curand", "libcurand.so.10"),
    ("cublas", "libcublas.so.13"),
    ("cublaslt", "libcublasLt.so.13"),
];
/// The GPU the kernels are compiled for (the lent machine's H200).
const COMPUTE_CAP: &str = "90";

/// The compute capability the kernels are built for: `$CUDA_COMPUTE_CAP` when set (another
/// GPU), else [`COMPUTE_CAP`].
fn compute_cap() -> String {
    std::env::var("CUDA_COMPUTE_CAP").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| COMPUTE_CAP.into())
}

/// `<sieve cache>/cuda-13.0`.
pub fn dir() -> PathBuf {
    sieve_fetch::cache_dir().join("cuda-13.0")
}

/// `CUDA_HOME`: the toolkit folder inside [`dir`].
pub fn home() -> PathBuf {
    dir().join("nvidia/cu13")
}

fn stamp() -> String {
    format!("{} {CUDARC}\n", WHEELS.join(" "))
}

/// Installs the toolkit and the stubs unless they are there; returns `CUDA_HOME`.
pub fn setup() -> Result<PathBuf> {
    let target = dir();
    let marker = target.join("versions");
    let complete = |root: &Path| {
        let home = root.join("nvidia/cu13");
        home.join("bin/nvcc").is_file() && STUBS.iter().all(|(_, so)| home.join("lib/stubs").join(so).is_file())
    };
    if fs::read_to_string(&marker).is_ok_and(|v| v == stamp()) && complete(&target) {
        eprintln!("CUDA 13.0 already there: {}", home().display());
        return Ok(home());
    }
    let staging = target.with_extension("partial");
    super::remove_if_there(&staging)?;
    eprintln!("CUDA 13.0: installing {} from PyPI with pip (about 105 MB)", WHEELS.join(", "));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target"])
        .arg(&staging)
        .args(WHEELS)
        .status()
        .with_context(|| format!("could not run `{python} -m pip`"))?;
    if !status.success() {
        bail!("pip install {} failed ({status})", WHEELS.join(" "));
    }
    let cu13 = staging.join("nvidia/cu13");
    if !cu13.join("bin/nvcc").is_file() {
        bail!("pip installed the wheels but {} is missing", cu13.join("bin/nvcc").display());
    }
    let lib = cu13.join("lib");
    symlink("libcudart.so.13", &lib.join("libcudart.so"))?;
    write_stubs(&lib.join("stubs"))?;
    fs::write(staging.join("versions"), stamp()).context("writing the version marker")?;
    super::remove_if_there(&target)?;
    fs::rename(&staging, &target).with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
    eprintln!("CUDA 13.0 installed: {}", home().display());
    Ok(home())
}

/// The machine's cores, for nvcc's parallel compiles.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The environment of a build with the `cuda` feature (and of running its binaries here,
/// where the stubs stand in for the driver): `CUDA_HOME`, `PATH`, `CUDA_COMPUTE_CAP`,
/// `LD_LIBRARY_PATH`, and `CUDAFORGE_THREADS`: candle's kernel build runs nvcc on half the
/// cores unless told otherwise, one of two here, while the rest of the build waits for it
/// (5.2 min for the kernels on both cores).
pub fn env(home: &Path) -> Vec<(String, String)> {
    let prepend = |var: &str, dirs: &[PathBuf]| {
        let mut parts: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        parts.extend(std::env::var(var).ok().filter(|v| !v.is_empty()));
        parts.join(":")
    };
    vec![
        ("CUDA_HOME".into(), home.display().to_string()),
        ("PATH".into(), prepend("PATH", &[home.join("bin")])),
        ("CUDA_COMPUTE_CAP".into(), compute_cap()),
        ("CUDAFORGE_THREADS".into(), cores().to_string()),
        ("LD_LIBRARY_PATH".into(), prepend("LD_LIBRARY_PATH", &[home.join("lib/stubs"), home.join("lib")])),
    ]
}

/// `cargo xtask setup-cuda`: [`setup`], then [`env`] as shell assignments that extend the
/// caller's own `PATH` and `LD_LIBRARY_PATH` (for `eval "$(cargo xtask setup-cuda)"`).
pub fn run() -> Result<()> {
    let home = setup()?;
    let (bin, lib) = (home.join("bin"), home.join("lib"));
    println!("export CUDA_HOME=\"{}\"", home.display());
    println!("export PATH=\"{}:$PATH\"", bin.display());
    println!("export CUDA_COMPUTE_CAP={}", compute_cap());
    println!("export CUDAFORGE_THREADS={}", cores());
    println!(
        "export LD_LIBRARY_PATH=\"{}:{}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\"",
        lib.join("stubs").display(),
        lib.display()
    );
    Ok(())
}

/// `cargo xtask build-cuda`: `sieve` and its CUDA tests (`crates/cli/tests/cuda.rs`) built
/// with the `cuda` feature and run (they skip, saying so, without a GPU); then the binary,
/// stripped and compressed, in `target/gpu-check/` for `scripts/gpu-check.sh` on a GPU
/// machine. One cargo invocation over the whole workspace, so that every crate CUDA does not
/// touch is the one the workspace's tests already built. Kernels left by [`test`]'s check
/// build, compiled without optimization, are compiled again first.
pub fn build() -> Result<()> {
    let marker = unoptimized_marker();
    if marker.is_file() {
        super::cargo(&["clean", "--release", "-p", "candle-kernels"])?;
        fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    }
    build_and_test(&[])?;
    bundle()
}

/// nvcc options of CI's check build: device code without optimization, in the front end
/// and in the assembler. That halves the kernels' compile (one of candle's quantized
/// product files: 34 s against 69 on this 2-core machine), the largest part of the `cuda`
/// build here. CI only compiles and links the kernels; nothing runs them without a GPU.
const CHECK_NVCC_FLAGS: &str = "-Xcicc -O0 -Xptxas -O0";

/// Written beside the build while its kernels may be [`test`]'s unoptimized ones.
/// candle's kernel build does not watch `NVCC_APPEND_FLAGS`, so [`build`] checks for it.
fn unoptimized_marker() -> PathBuf {
    super::target_dir().join("release").join(".cuda-kernels-unoptimized")
}

/// The `cuda` build of `sieve` and its CUDA tests, run, with the kernels compiled without
/// optimization ([`CHECK_NVCC_FLAGS`]): what CI does.
pub fn test() -> Result<()> {
    let marker = unoptimized_marker();
    if let Some(dir) = marker.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&marker, CHECK_NVCC_FLAGS).with_context(|| format!("writing {}", marker.display()))?;
    build_and_test(&[("NVCC_APPEND_FLAGS", CHECK_NVCC_FLAGS)])
}

fn build_and_test(extra: &[(&str, &str)]) -> Result<()> {
    let home = setup()?;
    let env = env(&home);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    super::cargo_with(
        &[
            "test",
            "--release",
            "--locked",
            "--workspace",
            "--features",
            "sieve-cli/cuda",
            "--test",
            "cuda",
            "--",
            "--nocapture",
        ],
        &env,
    )
}

/// `target/gpu-check/sieve.gz`: the `cuda` build of `sieve`, without debug information,
/// compressed to travel to a GPU machine (at most 64 MiB go with a call).
fn bundle() -> Result<()> {
    let release = super::target_dir().join("release");
    let out = super::target_dir().join("gpu-check");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let stripped = out.join("sieve");
    let status =
        Command::new("strip").arg("-o").arg(&stripped).arg(release.join("sieve")).status().context("running strip")?;
    if !status.success() {
        bail!("strip failed ({status})");
    }
    let _ = fs::remove_file(out.join("sieve.gz"));
    let status = Command::new("gzip").arg("-9").arg(&stripped).status().context("running gzip")?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    let size = fs::metadata(out.join("sieve.gz"))?.len();
    eprintln!("{}: {:.1} MiB", out.join("sieve.gz").display(), size as f64 / 1048576.0);
    Ok(())
}

/// One stub library per entry of [`STUBS`] in `dir`, with a `lib*.so` link for the linker.
fn write_stubs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = cudarc_source()?;
    for (module, soname) in STUBS {
        let bindings = source.join("src").join(module).join("sys/mod.rs");
        let text = fs::read_to_string(&bindings).with_context(|| format!("reading {}", bindings.display()))?;
        let c = dir.join(format!("{module}.c"));
        fs::write(&c, stub_source(&text)).with_context(|| format!("writing {}", c.display()))?;
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O0", "-o"])
            .arg(dir.join(soname))
            .arg(&c)
            .arg(format!("-Wl,-soname,{soname}"))
            .status()
            .context("could not run the C compiler `cc`")?;
        if !status.success() {
            bail!("compiling the {soname} stub failed ({status})");
        }
        fs::remove_file(&c).with_context(|| format!("removing {}", c.display()))?;
        let base = soname.split(".so").next().unwrap_or(soname);
        symlink(soname, &dir.join(format!("{base}.so")))?;
    }
    let _ = fs::remove_dir_all(source.parent().unwrap_or(&source));
    Ok(())
}

/// C source defining every function the bindings declare (`pub unsafe fn NAME(`), each
/// returning 999 (an error in every one of these libraries). The two that turn a driver
/// error into text give a message instead, so that the error reaches the user as words.
fn stub_source(bindings: &str) -> String {
    let mut names: Vec<&str> = bindings
        .lines()
        .filter_map(|l| l.strip_prefix("pub unsafe fn "))
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::from("/* Stubs written by `cargo xtask setup-cuda`: no GPU here. */\n");
    for name in names {
        if name == "cuGetErrorString" || name == "cuGetErrorName" {
            out.push_str(&format!(
                "int {name}(int error, const char **text) {{ (void)error; *text = \"no CUDA driver on this machine (a build stub)\"; return 0; }}\n"
            ));
        } else {
            out.push_str(&format!("int {name}(void) {{ return 999; }}\n"));
        }
    }
    out
}

/// cudarc's source, unpacked from Cargo's download cache (after `cargo fetch`) into a
/// temporary folder; returns its root.
fn cudarc_source() -> Result<PathBuf> {
    super::cargo(&["fetch", "--locked"])?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let cache = cargo_home.join("registry/cache");
    let name = format!("{CUDARC}.crate");
    let archive = fs::read_dir(&cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join(&name)))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not in {} after `cargo fetch`", cache.display()))?;
    let tmp = std::env::temp_dir().join(format!("sieve-cudarc-{}", std::process::id()));
    super::remove_if_there(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let status = Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&tmp).status().context("running tar")?;
    if !status.success() {
        bail!("unpacking {} failed ({status})", archive.display());
    }
    Ok(tmp.join(CUDARC))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).with_context(|| format!("linking {} to {target}", link.display()))
}
