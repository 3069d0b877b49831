//! Loading a model: a GGUF file, or a Hugging Face directory with safetensors.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use sieve_backend::quant::{FileRegion, GgmlType};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::weights::{self, Dtype, HostWeight, TensorSource, Weights};

/// A loaded model: configuration, `f32` weights, tokenizer and chat template.
#[derive(Debug)]
pub struct Model {
    /// Where it came from.
    pub path: PathBuf,
    /// Shape of the network.
    pub config: ModelConfig,
    /// The weights.
    pub weights: Weights,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, if the model ships one.
    pub chat_template: Option<ChatTemplate>,
    /// The chat template's source text.
    pub chat_template_source: Option<String>,
    /// Tensor count and storage types, for `sieve inspect`.
    pub tensor_summary: Vec<(String, String, Vec<usize>)>,
}

impl Model {
    /// Loads a GGUF file or a directory with `config.json`, safetensors and `tokenizer.json`,
    /// weights as [`Dtype::default`] holds them.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Dtype::default())
    }

    /// [`Model::load`] with weights held as `dtype`.
    pub fn load_with(path: &Path, dtype: Dtype) -> Result<Self> {
        if path.is_dir() {
            load_hf_dir(path, dtype)
        } else if path.is_file() {
            load_gguf(path, dtype)
        } else {
            Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file or directory")))
        }
    }

    /// Moves the weights out (for a backend that takes ownership, so that they are not
    /// held twice), leaving empty weights behind.
    pub fn take_weights(&mut self) -> Weights {
        std::mem::take(&mut self.weights)
    }

    /// Renders `messages` with the chat template (or an error if the model has none).
    pub fn render_chat(&self, messages: &[crate::template::Message]) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, true),
            None => Err(Error::NoChatTemplate { path: self.path.clone() }),
        }
    }
}

/// Reads a GGUF model held in memory, as [`Model::load`] reads a file; messages name the
/// source `<memory>`. Malformed input of any kind is an error, never a panic (the `gguf`
/// fuzz target drives this).
pub fn load_gguf_bytes(bytes: &[u8]) -> Result<Model> {
    load_gguf_from(Cursor::new(bytes), bytes.len() as u64, Path::new("<memory>"), false, Dtype::default())
}

/// The packed format of a GGUF tensor type, when sieve keeps that type as blocks.
fn packed_type(t: GgmlDType) -> Option<GgmlType> {
    Some(match t {
        GgmlDType::F16 => GgmlType::F16,
        GgmlDType::BF16 => GgmlType::BF16,
        GgmlDType::Q4_0 => GgmlType::Q4_0,
        GgmlDType::Q4_1 => GgmlType::Q4_1,
        GgmlDType::Q5_0 => GgmlType::Q5_0,
        GgmlDType::Q5_1 => GgmlType::Q5_1,
        GgmlDType::Q8_0 => GgmlType::Q8_0,
        GgmlDType::Q4K => GgmlType::Q4K,
        GgmlDType::Q5K => GgmlType::Q5K,
        GgmlDType::Q6K => GgmlType::Q6K,
        _ => return None,
    })
}

struct GgufSource<R> {
    path: PathBuf,
    reader: R,
    content: Content,
    /// Whether `reader` reads the file at `path`.
    on_disk: bool,
}

impl<R: Read + Seek> TensorSource for GgufSource<R> {
    fn source_name(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&mut self, name: &str) -> Result<Option<HostWeight>> {
        // `gguf::check_header` has checked every tensor's shape, type and extent.
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let shape = info.shape.dims().to_vec();
        let gguf = |source| Error::gguf(&self.path, source);
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu).map_err(gguf)?;
        if let (Some(dtype), 2) = (packed_type(q.dtype()), shape.len()) {
            let bytes = q.data().map_err(gguf)?.into_owned();
            let mut w = HostWeight::packed(dtype, bytes, shape);
            if let Some(p) = w.packed.as_mut().filter(|_| self.on_disk) {
                let offset = self.content.tensor_data_offset + info.offset;
                p.file = Some(FileRegion { path: self.path.clone(), offset });
            }
            return Ok(Some(w));
        }
        let t = q.dequantize(&Device::Cpu).map_err(gguf)?;
        let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(gguf)?;
        Ok(Some(HostWeight::f32(data, shape)))
    }
}

fn load_gguf(path: &Path, dtype: Dtype) -> Result<Model> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = weights::file_len(path)?;
    load_gguf_from(BufReader::new(file), len, path, true, dtype)
}

/// Loads a GGUF model from `reader` (a file of `len` bytes), named `path` in messages;
/// `on_disk` when `reader` reads the file at `path` (its packed weights then say where in
/// it they lie).
fn load_gguf_from<R: Read + Seek>(mut reader: R, len: u64, path: &Path, on_disk: bool, dtype: Dtype) -> Result<Model> {
    crate::gguf::check_header(&mut reader, len, path)?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut reader).map_err(|source| Error::gguf(path, source))?;
    let source = path.display().to_string();
    // The architecture first: a model sieve cannot run is reported as such, whatever else it lacks.
    crate::config::gguf_architecture(&content.metadata, &source)?;
    let vocab = match content.tensor_infos.get(weights::GGUF_NAMES.embed) {
        Some(info) if info.shape.rank() == 2 => info.shape.dims()[0],
        Some(info) => {
            return Err(Error::config(&source, format!("token embedding has shape {:?}", info.shape.dims())));
        }
        None => {
            return Err(Error::MissingTensor { source_name: source, name: weights::GGUF_NAMES.embed.into() });
        }
    };
    let config = crate::config::from_gguf(&content.metadata, vocab, &source)?;
    let tokenizer = Tokenizer::from_gguf(&content.metadata)?;
    check_vocab(&tokenizer, &config, &source)?;
    let template_source = match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let mut tensor_summary: Vec<_> = content
        .tensor_infos
        .iter()
        .map(|(n, i)| (n.clone(), format!("{:?}", i.ggml_dtype), i.shape.dims().to_vec()))
        .collect();
    tensor_summary.sort();
    let mut src = GgufSource { path: path.to_path_buf(), reader, content, on_disk };
    let interleaved = weights::gguf_interleaved(config.arch);
    let weights = weights::read_weights(&mut src, &weights::GGUF_NAMES, &config, interleaved, dtype)?;
    let parts = Parts { config, weights, tokenizer, template_source, tensor_summary };
    parts.into_model(path)
}

/// The end-of-sequence (one id or a list) and beginning-of-sequence ids of a
/// `generation_config.json`, when there is one: they override the tokenizer's.
fn generation_config(path: &Path, tokenizer: &mut Tokenizer) -> Result<()> {
    let Some(json) = read_json(path)? else { return Ok(()) };
    let bad = |key: &str, v: &serde_json::Value| {
        Error::config(path.display().to_string(), format!("{key} = {v} is not a token id or a list of them"))
    };
    let id =
        |key: &str, v: &serde_json::Value| v.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| bad(key, v));
    match json.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(list)) => {
            tokenizer.eos = list.iter().map(|v| id("eos_token_id", v)).collect::<Result<_>>()?;
        }
        Some(v) => tokenizer.eos = vec![id("eos_token_id", v)?],
    }
    if let Some(v) = json.get("bos_token_id").filter(|v| !v.is_null()) {
        tokenizer.bos = Some(id("bos_token_id", v)?);
    }
    Ok(())
}

/// Every id the tokenizer's vocabulary can produce must index the embedding. Added tokens
/// past the vocabulary (transformers adds some when it converts a GGUF file) are accepted:
/// only a prompt that encodes to one is refused, by the session.
fn check_vocab(tokenizer: &Tokenizer, config: &ModelConfig, source: &str) -> Result<()> {
    if let Some(max) = tokenizer.max_base_id().filter(|&id| id as usize >= config.vocab) {
        return Err(Error::config(
            source,
            format!(
                "the tokenizer has {} tokens with ids up to {max}, but the model's vocabulary has only {} (vocab_size)",
                tokenizer.vocab_size(),
                config.vocab
            ),
        ));
    }
    for &id in tokenizer.eos.iter().chain(tokenizer.bos.iter()) {
        if id as usize >= config.vocab {
            return Err(Error::config(
                source,
                format!("special token id {id} is outside the vocabulary of {}", config.vocab),
            ));
        }
    }
    Ok(())
}

/// What a loader read, before the chat template is compiled.
struct Parts {
    config: ModelConfig,
    weights: Weights,
    tokenizer: Tokenizer,
    template_source: Option<String>,
    tensor_summary: Vec<(String, String, Vec<usize>)>,
}

impl Parts {
    fn into_model(self, path: &Path) -> Result<Model> {
        let chat_template = compile_template(self.template_source.as_deref(), &self.tokenizer)?;
        Ok(Model {
            path: path.to_path_buf(),
            config: self.config,
            weights: self.weights,
            tokenizer: self.tokenizer,
            chat_template,
            chat_template_source: self.template_source,
            tensor_summary: self.tensor_summary,
        })
    }
}

fn compile_template(source: Option<&str>, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let Some(src) = source else { return Ok(None) };
    let text = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
    Ok(Some(ChatTemplate::new(src, &text(tokenizer.bos), &text(tokenizer.eos.first().copied()))?))
}

struct SafetensorsSource {
    dir: PathBuf,
    /// tensor name -> shard file
    index: HashMap<String, PathBuf>,
    /// shard file -> its bytes (read once)
    shards: HashMap<PathBuf, Vec<u8>>,
}

impl SafetensorsSource {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut index = HashMap::new();
        let mut shards = HashMap::new();
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::config(index_path.display().to_string(), e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::config(index_path.display().to_string(), "no `weight_map`"))?;
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::config(index_path.display().to_string(), format!("`{name}` maps to a non-string"))
                })?;
                index.insert(name.clone(), dir.join(file));
            }
        } else if single.is_file() {
            let bytes = std::fs::read(&single).map_err(|e| Error::io(&single, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|source| Error::Safetensors { path: single.clone(), source })?;
            for name in st.names() {
                index.insert(name.to_string(), single.clone());
            }
            shards.insert(single, bytes);
        } else {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json",
                ),
            ));
        }
        Ok(Self { dir: dir.to_path_buf(), index, shards })
    }
}

impl TensorSource for SafetensorsSource {
    fn source_name(&self) -> String {
        self.dir.display().to_string()
    }

    fn read(&mut self, name: &str) -> Result<Option<HostWeight>> {
        let Some(file) = self.index.get(name).cloned() else {
            return Ok(None);
        };
        if !self.shards.contains_key(&file) {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            self.shards.insert(file.clone(), bytes);
        }
        let bytes = &self.shards[&file];
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|source| Error::Safetensors { path: file.clone(), source })?;
        let view = st.tensor(name).map_err(|source| Error::Safetensors { path: file.clone(), source })?;
        let raw = view.data();
        let shape = view.shape().to_vec();
        let half_type = match view.dtype() {
            safetensors::Dtype::F16 => Some(GgmlType::F16),
            safetensors::Dtype::BF16 => Some(GgmlType::BF16),
            _ => None,
        };
        if let (Some(dtype), 2) = (half_type, shape.len()) {
            return Ok(Some(HostWeight::packed(dtype, raw.to_vec(), shape)));
        }
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            safetensors::Dtype::F16 => {
                raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => {
                return Err(Error::TensorType {
                    source_name: file.display().to_string(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(Some(HostWeight::f32(data, shape)))
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::config(path.display().to_string(), e.to_string()))
}

fn load_hf_dir(dir: &Path, dtype: Dtype) -> Result<Model> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config = crate::config::from_hf_json(&text, &config_path.display().to_string())?;
    let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
    let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), tok_config.as_ref())?;
    generation_config(&dir.join("generation_config.json"), &mut tokenizer)?;
    check_vocab(&tokenizer, &config, &dir.display().to_string())?;
    // transformers 5 writes the template to its own file; older versions into
    // tokenizer_config.json.
    let jinja = dir.join("chat_template.jinja");
    let template_source = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
    } else {
        tok_config.as_ref().and_then(|c| c.get("chat_template")).and_then(|t| t.as_str()).map(String::from)
    };
    let mut src = SafetensorsSource::open(dir)?;
    let mut tensor_summary: Vec<_> =
        src.index.keys().map(|n| (n.clone(), "safetensors".to_string(), Vec::new())).collect();
    tensor_summary.sort();
    let names = match config.arch {
        crate::config::Architecture::Gemma3 => &weights::HF_GEMMA3_NAMES,
        _ => &weights::HF_NAMES,
    };
    let weights = weights::read_weights(&mut src, names, &config, false, dtype)?;
    let parts = Parts { config, weights, tokenizer, template_source, tensor_summary };
    parts.into_model(dir)
}
